#!/usr/bin/env python3
"""Plain CLIP-guided optimization of an RGB tensor toward a prompt (the control).

Examples:
  python normal.py "a red apple" --out apple.png
  python normal.py "a red apple" --palette pico8 --size 48 32 --variations 4 --out apple.png
"""

import common


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompt", help="text (weighted parts: 'a | b:0.5 | c:-1') or an image file")
    common.add_common_args(p, "normal.py")
    common.add_start_args(p)
    return p.parse_args(argv)


@common.cli
def main(argv=None):
    args = parse_args(argv)
    run = common.start(args, "normal.py")
    settings, model = common.settings_of(args, run), run.model
    prompt = common.load_prompt(model, args.prompt)
    targets = (prompt.embed + common.style_shift(model, settings))[None]  # [1, D]: one stage
    z, loss, stop = common.render(model, targets, settings, run.output, desc="normal", start=run.start)
    paths = run.save(z, settings, stop, loss=loss, prompt=prompt.text)
    print(f"saved {', '.join(paths)}")


if __name__ == "__main__":
    main()
