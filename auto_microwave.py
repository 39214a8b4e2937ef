#!/usr/bin/env python3
"""Auto-microwave an unseen prompt: compose stages from the nearest baked prompts, or where they
are all far from it, replay a shared bake for it.

Example: python auto_microwave.py "a yellow pear" --baked-dir baked --out pear.png
"""

import common


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompt", help="text (weighted parts: 'a | b:0.5 | c:-1') or an image file")
    common.add_common_args(p, "auto_microwave.py")
    common.add_start_args(p)
    p.add_argument("--baked-dir", default="baked", help="folder of baked files to draw from")
    p.add_argument("--k", type=common.positive_int, default=2, help="how many nearest baked prompts to use")
    p.add_argument("--mix", type=common.unit_float, default=0.7,
                   help="weight of the prompt in each stage's target (the path gets 1 - mix)")
    p.add_argument("--mode", choices=["mean", "splice"], default="mean",
                   help="mean: per-stage mean of the chosen paths; splice: each stage from one of them")
    common.add_far_arg(p)
    return p.parse_args(argv)


def shared_base(model, bakes):
    """The folder's shared bake for this model (the first by name), or None."""
    return next((b for b in bakes if common.is_shared(b) and b["stages"].shape[1] == model.dim and model.made(b)),
                None)


@common.cli
def main(argv=None):
    args = parse_args(argv)
    bakes = common.load_baked_dir(args.baked_dir)  # a missing folder fails before CLIP loads
    run = common.start(args, "auto_microwave.py")
    model = run.model
    prompt = common.load_prompt(model, args.prompt)
    base = shared_base(model, bakes)
    own = [b for b in common.of_model(bakes, model) if not common.is_shared(b)]
    chosen = common.nearest_bakes(model, prompt.embed, own, args.k, args.baked_dir) if own or base is None else []
    if base is not None and (not chosen or chosen[0][0] > args.far):
        far = f"the nearest baked prompt lies {chosen[0][0]:.4f} away (over --far {args.far})" if chosen else \
            "no prompt's bake here"
        print(f"{far}: replaying the shared bake {base['path']} for the prompt")
        settings = common.settings_of(args, run, base["config"], base["path"])
        targets, scale = common.replay_bake(model, base, common.style_shift(model, settings), prompt)
        used = {"baked_file": base["path"]}
    else:
        targets, scale, settings = compose(args, run, prompt, chosen)
        used = {"baked_prompts": [b["prompt"] for _, b in chosen]}
    z, loss, stop = common.render(model, targets, settings, run.output, desc="auto-microwave", lr_scale=scale,
                                  start=run.start)
    paths = run.save(z, settings, stop, loss=loss, prompt=prompt.text, **used)
    print(f"saved {', '.join(paths)}")


def compose(args, run, prompt, chosen):
    """The nearest bakes' paths composed and turned towards the prompt: (targets, lr_scale, settings)."""
    model = run.model
    n_stages = len(chosen[0][1]["stages"])
    print(f"nearest baked prompts ({args.mode}), by spherical distance to the prompt (lower is nearer):")
    for dist, bake in chosen:
        print(f"  {dist:.4f}  {bake['prompt']!r}  ({bake['path']})")
    if len(chosen) < args.k:
        common.log(f"note: only {len(chosen)} baked file(s) with {n_stages} stages; using those")
    near = [b for _, b in chosen]
    settings = common.settings_of(args, run, near[0]["config"], near[0]["path"])  # the renderer as the nearest's
    parts = common.part_embeds(model, prompt, n_stages) if prompt.kind == "text" else None
    targets, scale = common.compose_replay(near, prompt, common.style_shift(model, settings), args.mode, args.mix,
                                           parts)
    return targets, scale, settings


if __name__ == "__main__":
    main()
