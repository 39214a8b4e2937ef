#!/usr/bin/env python3
"""Microwave a baked file: replay its stages on a fresh image, optionally mixed with a prompt.

Example: python microwave.py "a green apple" baked/a_red_apple.pt --out apple.png
"""

import common


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("inputs", nargs="+", metavar="[PROMPT] BAKED.pt",
                   help="a baked file, optionally preceded by a prompt to mix in")
    common.add_common_args(p, size=64, steps=25, cutn=8)
    p.add_argument("--mix", type=common.unit_float, default=0.5,
                   help="weight of the prompt in each stage's target (with a prompt)")
    args = p.parse_args(argv)
    if len(args.inputs) > 2:
        p.error("give a baked file, or a prompt and a baked file (quote a prompt with spaces)")
    args.prompt = args.inputs[0] if len(args.inputs) == 2 else None
    args.baked = args.inputs[-1]
    return args


@common.cli
def main(argv=None):
    args = parse_args(argv)
    baked = common.load_baked(args.baked)  # a bad file fails before CLIP loads
    model, seed = common.start(args)
    common.check_stage_width(baked, model.dim)
    if baked["clip_model"] is not None and not model.made(baked):
        other = "other weights of the same name" if baked["clip_model"] == model.name else baked["clip_model"]
        common.log(f"note: {args.baked} was baked with {other}; its stages may mean little to {model.name}")
    if not baked["complete"]:
        common.log(f"note: {args.baked} is an interrupted bake; its stages may be unfinished")
    stages = baked["stages"].to(model.device)  # [S, D]
    info = {"baked_file": args.baked, "baked_prompt": baked["prompt"]}
    if args.prompt is not None:
        prompt = common.load_prompt(model, args.prompt)
        stages = common.lerp_unit(stages, prompt.embed, args.mix)
        info["prompt"] = prompt.text
    shift = common.style_shift(model, args.style, args.style_text, args.negative_text)
    z = common.render(model, common.shape_targets(stages, shift), args, desc="microwave")
    common.save_image(args.out, z, args.save_size, common.run_info("microwave.py", args, seed, **info))
    print(f"microwaved {baked['prompt']!r} ({len(stages)} stages); saved {args.out}")


if __name__ == "__main__":
    main()
