#!/usr/bin/env python3
"""Plain CLIP-guided optimization of an RGB tensor toward a prompt (the control).

Example: python normal.py "a red apple" --out apple.png
"""

import common


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompt", help="text (weighted parts: 'a | b:0.5 | c:-1') or an image file")
    common.add_common_args(p, "normal.py")
    return p.parse_args(argv)


@common.cli
def main(argv=None):
    args = parse_args(argv)
    model, settings = common.start(args)
    prompt = common.load_prompt(model, args.prompt)
    shift = common.style_shift(model, settings.style, settings.style_text, settings.negative_text)
    targets = (prompt.embed + shift)[None]  # [1, D]: one stage
    z = common.render(model, targets, settings, common.Output.from_args(args), desc="normal")
    common.save_image(args.out, z, args.save_size,
                      common.run_info("normal.py", args, settings, model.device, prompt=prompt.text))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
