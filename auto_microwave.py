#!/usr/bin/env python3
"""Auto-microwave an unseen prompt: compose stages from the nearest baked prompts.

Example: python auto_microwave.py "a yellow pear" --baked-dir baked --out pear.png
"""

import torch

import common


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompt", help="text (weighted parts: 'a | b:0.5 | c:-1') or an image file")
    common.add_common_args(p, size=128, steps=25, cutn=8)
    p.add_argument("--baked-dir", default="baked", help="folder of baked files to draw from")
    p.add_argument("--k", type=common.positive_int, default=2, help="how many nearest baked prompts to use")
    p.add_argument("--mix", type=common.unit_float, default=0.7,
                   help="weight of the prompt in each stage's target (the path gets 1 - mix)")
    p.add_argument("--mode", choices=["mean", "splice"], default="mean",
                   help="mean: per-stage mean of the chosen paths; splice: each stage from one of them")
    return p.parse_args(argv)


def baked_prompt_embed(model, bake):
    """A bake's prompt embedding under this model, or None (saying why) where there is none."""
    try:
        common.check_stage_width(bake, model.dim)
        if model.made(bake) and bake.get("prompt_embed") is not None:
            return bake["prompt_embed"].to(model.device)
        return common.load_prompt(model, bake["prompt"]).embed  # weighted parts and images too
    except common.UserError as e:
        common.log(f"skipping {bake['path']}: {e}")
        return None


def compose_path(paths, mode):
    """One path of stages from k paths [k, S, D]: per-stage mean, or a random splice."""
    paths = torch.nn.functional.normalize(paths, dim=-1)
    if mode == "mean":
        return paths.mean(0)  # [S, D]: each stage averaged over the paths, not over everything
    pick = torch.randint(len(paths), (paths.shape[1],))  # [S]: which path gives each stage
    return paths[pick, torch.arange(paths.shape[1])]


def nearest_bakes(model, prompt_embed, bakes, k, where="the baked folder"):
    """The k bakes whose prompts lie nearest to prompt_embed: [(distance, bake)].

    All of one stage count (that of the nearest), so their paths can be composed.
    """
    candidates = []
    for bake in bakes:
        embed = baked_prompt_embed(model, bake)
        if embed is not None:
            candidates.append((common.spherical_distance(prompt_embed, embed).item(), bake))
    if not candidates:
        raise common.UserError(f"no usable baked files in {where}: bake some with bake.py")
    candidates.sort(key=lambda c: c[0])
    n_stages = len(candidates[0][1]["stages"])
    return [c for c in candidates if len(c[1]["stages"]) == n_stages][:k]


@common.cli
def main(argv=None):
    args = parse_args(argv)
    bakes = common.load_baked_dir(args.baked_dir)  # a missing folder fails before CLIP loads
    model, seed = common.start(args)
    prompt = common.load_prompt(model, args.prompt)
    chosen = nearest_bakes(model, prompt.embed, bakes, args.k, args.baked_dir)
    n_stages = len(chosen[0][1]["stages"])
    print(f"nearest baked prompts ({args.mode}):")
    for dist, bake in chosen:
        print(f"  {dist:.4f}  {bake['prompt']!r}  ({bake['path']})")
    if len(chosen) < args.k:
        common.log(f"note: only {len(chosen)} baked file(s) with {n_stages} stages; using those")
    path = compose_path(torch.stack([b["stages"] for _, b in chosen]).to(model.device), args.mode)  # [S, D]
    stages = common.lerp_unit(path, prompt.embed, args.mix)
    shift = common.style_shift(model, args.style, args.style_text, args.negative_text)
    z = common.render(model, common.shape_targets(stages, shift), args, desc="auto-microwave")
    info = {"prompt": prompt.text, "baked_prompts": [b["prompt"] for _, b in chosen]}
    common.save_image(args.out, z, args.save_size, common.run_info("auto_microwave.py", args, seed, **info))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
