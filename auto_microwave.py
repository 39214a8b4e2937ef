#!/usr/bin/env python3
"""Auto-microwave an unseen prompt: compose stages from the nearest baked prompts.

Example: python auto_microwave.py "a yellow pear" --baked-dir baked --out pear.png
"""

import common


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompt", help="text (weighted parts: 'a | b:0.5 | c:-1') or an image file")
    common.add_common_args(p, "auto_microwave.py")
    p.add_argument("--baked-dir", default="baked", help="folder of baked files to draw from")
    p.add_argument("--k", type=common.positive_int, default=2, help="how many nearest baked prompts to use")
    p.add_argument("--mix", type=common.unit_float, default=0.7,
                   help="weight of the prompt in each stage's target (the path gets 1 - mix)")
    p.add_argument("--mode", choices=["mean", "splice"], default="mean",
                   help="mean: per-stage mean of the chosen paths; splice: each stage from one of them")
    return p.parse_args(argv)


@common.cli
def main(argv=None):
    args = parse_args(argv)
    bakes = common.load_baked_dir(args.baked_dir)  # a missing folder fails before CLIP loads
    run = common.start(args, "auto_microwave.py")
    model = run.model
    prompt = common.load_prompt(model, args.prompt)
    chosen = common.nearest_bakes(model, prompt.embed, bakes, args.k, args.baked_dir)
    n_stages = len(chosen[0][1]["stages"])
    print(f"nearest baked prompts ({args.mode}), by spherical distance to the prompt (lower is nearer):")
    for dist, bake in chosen:
        print(f"  {dist:.4f}  {bake['prompt']!r}  ({bake['path']})")
    if len(chosen) < args.k:
        common.log(f"note: only {len(chosen)} baked file(s) with {n_stages} stages; using those")
    near = [b for _, b in chosen]
    path, scale = common.compose_bakes(near, args.mode, model.device)  # [S, D], [S]
    # the renderer as the nearest bake's
    settings = common.settings_of(args, run, near[0]["config"], near[0]["path"])
    stages = common.lerp_unit(path, prompt.embed, args.mix)
    targets = common.shape_targets(stages, common.style_shift(model, settings))
    z, loss = common.render(model, targets, settings, run.output, desc="auto-microwave", lr_scale=scale)
    run.output.save(z, settings, model.device, loss=loss, prompt=prompt.text,
                    baked_prompts=[b["prompt"] for _, b in chosen])
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
