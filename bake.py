#!/usr/bin/env python3
"""Bake a prompt: meta-optimize the stage embeddings of a staged CLIP-guided run.

Example: python bake.py "a red apple" --clip-model ViT-B/32 --out apple.png
"""

import common


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompt", help="text (weighted parts: 'a | b:0.5 | c:-1') or an image file")
    common.add_common_args(p, "bake.py")
    common.add_bake_args(p)
    p.add_argument("--name", default=None, help="baked file name (default: a slug of the prompt)")
    return p.parse_args(argv)


@common.cli
def main(argv=None):
    args = parse_args(argv)
    wandb = common.WandbLog.from_args(args)
    path = common.baked_path(args.baked_dir, args.prompt, args.name)
    model, settings = common.start(args, writes_baked=True)
    prompt = common.load_prompt(model, args.prompt)
    shift = common.style_shift(model, settings.style, settings.style_text, settings.negative_text)
    info = common.run_info("bake.py", args, settings, model.device, prompt=prompt.text)
    try:
        history = common.bake_prompt(model, prompt, shift, settings, path, common.Output.from_args(args), wandb, info)
    except common.BakeInterrupted as stop:
        raise SystemExit(stop.message()) from None
    print(f"baked {prompt.text!r}: final meta loss {history[-1]:.4f}; stages in {path}, image in {args.out}")


if __name__ == "__main__":
    main()
