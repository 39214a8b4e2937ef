#!/usr/bin/env python3
"""Measure the method: bake each prompt two ways, then compare five ways of making its image.

For every prompt of a list, bake it with the real meta-gradient (--meta-grad unrolled)
and the reference's way (none), or reuse matching bakes from --baked-dir. Then, from N
random starts that no bake saw, the same start for every method, make an image by:
  normal               plain optimization, the same total steps, size and cutouts;
  microwave_unrolled   replaying the unrolled bake;
  microwave_none       replaying the reference-style bake;
  auto_mean            auto-microwaving from the other prompts' bakes (this prompt's
  auto_splice          own left out), per-stage mean or a random splice.
Each final image (as saved: quantized) is scored by its spherical distance to the prompt
under the guiding model and under a held-out scorer model (lower is better). Writes a
markdown table, a JSON file with every score, and a grid of images (prompts x methods).

Example: python evaluate.py prompts_toy.txt --clip-model toy --score-model toy-scorer \\
    --seeds 5 --size 64 --stages 5 --steps 10 --meta-steps 12
"""

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import auto_microwave
import batch_bake
import common

METHODS = ["normal", "microwave_unrolled", "microwave_none", "auto_mean", "auto_splice"]
SCORERS = ["guide", "scorer"]
START_SEED = 2**62  # the evaluation's starts come from seeds no bake uses (bakes: --seed + i, below 2**62)
MAX_STARTS = 2**20  # starts per prompt: start (i, j) has seed START_SEED + i * MAX_STARTS + j
CELL, GAP = 128, 4  # side of one image in the grid, and the white space after it


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompts_file", nargs="?", default="prompts.txt", help="file of prompts, one a line")
    common.add_common_args(p, size=128, steps=30, cutn=1, out="evaluation.png", progress=False)
    common.add_bake_args(p, meta_grad=False)
    p.set_defaults(baked_dir="baked/evaluate", wandb="disabled", seed=0)  # an evaluation repeats by default
    g = p.add_argument_group("evaluation options")
    g.add_argument("--score-model", default=None,
                   help="the held-out scorer: another CLIP (default: toy-scorer when guiding with toy; "
                        "otherwise required, e.g. ViT-B/16)")
    g.add_argument("--seeds", type=common._number(int, lambda v: 1 <= v <= MAX_STARTS, f"must be from 1 to {MAX_STARTS}"),
                   default=5, help="random starts per prompt")
    g.add_argument("--first", type=common.positive_int, default=None, metavar="N",
                   help="evaluate only the first N prompts of the file")
    g.add_argument("--k", type=common.positive_int, default=2, help="nearest bakes auto-microwave uses")
    g.add_argument("--mix", type=common.unit_float, default=0.7, help="auto-microwave's prompt weight")
    g.add_argument("--json", default="evaluation.json", metavar="PATH", help="every score, and the summary")
    g.add_argument("--table", default="evaluation.md", metavar="PATH", help="the markdown table")
    args = p.parse_args(argv)
    if args.score_model is None:
        if args.clip_model != "toy":
            p.error("--score-model is needed: a second CLIP model to judge the images (e.g. ViT-B/16)")
        args.score_model = "toy-scorer"
    if args.seed >= 2**62 - 2**20:
        p.error("--seed must be below 2**62 - 2**20 (seeds above are the evaluation's starts)")
    return args


# --- bakes

def bake_both(model, shift, prompts, args, seed):
    """{(i, mode): bake dict} for every prompt and both meta-gradients, baking what is missing."""
    bakes = {}
    for mode in ("unrolled", "none"):
        folder = Path(args.baked_dir) / mode
        mode_args = argparse.Namespace(**{**vars(args), "meta_grad": mode, "baked_dir": str(folder)})
        for i, text in enumerate(prompts):
            path = common.baked_path(folder, text)
            config = common.bake_config(mode_args, seed + i)
            if (batch_bake.already_baked(path, text, config, model)
                    and common.load_baked(path)["config"].get("seed") == seed + i):  # both bakes from one seed
                print(f"reusing {path}")
            else:
                common.seed_everything(seed + i, announce=False)
                began = time.time()
                prompt = common.load_prompt(model, text)
                try:
                    history = common.bake_prompt(model, prompt, shift, mode_args, seed + i, path,
                                                 path.with_suffix(".png"))
                except common.BakeInterrupted as stop:
                    raise SystemExit(stop.message("; run again to go on")) from None
                print(f"baked {text!r} ({mode}) in {time.time() - began:.0f} s, "
                      f"final meta loss {history[-1]:.4f} -> {path}")
            bakes[i, mode] = common.load_baked(path)
    return bakes


def leave_one_out(model, prompts, bakes, embeds, k):
    """For each prompt, the k nearest unrolled bakes of the other prompts: {i: [(dist, bake)]}."""
    chosen = {}
    for i in range(len(prompts)):
        others = [bakes[j, "unrolled"] for j in range(len(prompts)) if j != i]
        chosen[i] = auto_microwave.nearest_bakes(model, embeds[i], others, k, "the other prompts' bakes")
    return chosen


# --- images and scores

def start_seed(i, j):
    return START_SEED + i * MAX_STARTS + j


def start_image(i, j, size, device):
    """Start j of prompt i: the same for every method, drawn from a seed no bake uses."""
    generator = torch.Generator().manual_seed(start_seed(i, j))
    return torch.randn(1, 3, size, size, generator=generator).to(device)


def method_targets(method, i, prompt, bakes, chosen, shift, mix):
    """(targets [S, D], steps per stage) of one method for prompt i."""
    config = bakes[i, "unrolled"]["config"]
    steps, stages = config["steps"], len(bakes[i, "unrolled"]["stages"])
    device = prompt.embed.device
    if method == "normal":
        return (prompt.embed + shift)[None], steps * stages
    if method.startswith("microwave_"):
        bake = bakes[i, method.split("_", 1)[1]]
        return common.shape_targets(bake["stages"].to(device), shift), bake["config"]["steps"]
    paths = torch.stack([b["stages"] for _, b in chosen[i]]).to(device)
    path = auto_microwave.compose_path(paths, method.split("_", 1)[1])
    return common.shape_targets(common.lerp_unit(path, prompt.embed, mix), shift), steps


def shown(z):
    """The images as saved (quantized), at their own size: [n, 3, H, W]."""
    return common.quantize(common.to_image(z.detach().float()))


def score(model, images, prompt_embed):
    """Spherical distance of each image [n, 3, H, W] (resized to the model's side) to a prompt: [n]."""
    resized = F.interpolate(images, size=(model.size, model.size), mode="bilinear", antialias=True,
                            align_corners=False)
    with torch.no_grad():
        return common.spherical_distance(common.embed_images(model, resized), prompt_embed)


# --- summary, table and grid

def win_rate(scores, method, against, scorer):
    """How often method's image is nearer the prompt than against's, on paired starts (ties: half)."""
    pairs = {}
    for s in scores:
        if s["method"] in (method, against):
            pairs.setdefault((s["prompt"], s["start"]), {})[s["method"]] = s[scorer]
    wins = [1.0 if p[method] < p[against] else 0.5 if p[method] == p[against] else 0.0
            for p in pairs.values() if method in p and against in p]
    return sum(wins) / len(wins)


def summarize(scores):
    summary = {}
    for method in METHODS:
        summary[method] = {}
        for scorer in SCORERS:
            values = [s[scorer] for s in scores if s["method"] == method]
            summary[method][scorer] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "win_rate_vs_normal": win_rate(scores, method, "normal", scorer)}
    for scorer in SCORERS:
        summary["microwave_unrolled"][scorer]["win_rate_vs_microwave_none"] = win_rate(
            scores, "microwave_unrolled", "microwave_none", scorer)
    return summary


def stage_distances(bakes, guide_prompts):
    """Mean spherical distance of each kind of bake's stages to its prompt (guide model)."""
    result = {}
    for mode in ("unrolled", "none"):
        values = [common.spherical_distance(bakes[i, mode]["stages"].to(p.embed.device), p.embed).mean().item()
                  for i, p in enumerate(guide_prompts)]
        result[mode] = statistics.fmean(values)
    return result


def markdown_table(summary, distances, n_prompts, n_starts, guide_name, scorer_name):
    lines = [f"Spherical distance of the final image to its prompt (lower is better), {n_prompts} prompts "
             f"x {n_starts} starts; mean ± standard deviation, and how often a method beats normal "
             f"optimization on the same start. Guide: {guide_name}; scorer: {scorer_name}.", "",
             "| method | guide: distance | guide: wins vs normal | scorer: distance | scorer: wins vs normal |",
             "|---|---|---|---|---|"]
    for method in METHODS:
        g, s = summary[method]["guide"], summary[method]["scorer"]
        g_win, s_win = (("—", "—") if method == "normal" else
                        (f"{g['win_rate_vs_normal']:.0%}", f"{s['win_rate_vs_normal']:.0%}"))
        lines.append(f"| {method} | {g['mean']:.4f} ± {g['std']:.4f} | {g_win} "
                     f"| {s['mean']:.4f} ± {s['std']:.4f} | {s_win} |")
    u = summary["microwave_unrolled"]
    lines += ["", f"microwave_unrolled beats microwave_none on {u['guide']['win_rate_vs_microwave_none']:.0%} "
                  f"of paired starts under the guide and {u['scorer']['win_rate_vs_microwave_none']:.0%} "
                  f"under the scorer."]
    d = distances
    lines += ["", f"Mean distance of the baked stages to their prompt: unrolled {d['unrolled']:.4f}, "
                  f"none {d['none']:.4f}."]
    return "\n".join(lines) + "\n"


def make_grid(prompts, images):
    """A PIL image: one row per prompt, one column per method (images[i][method]: [H, W, 3] uint8)."""
    from PIL import Image, ImageDraw
    label_w, head_h = 200, 24
    step = CELL + GAP
    grid = Image.new("RGB", (label_w + step * len(METHODS), head_h + step * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    for c, method in enumerate(METHODS):
        draw.text((label_w + c * step + 4, 6), method, fill="black")
    for r, text in enumerate(prompts):
        words, line, lines = text.split(), "", []
        for word in words:  # wrap the prompt into the label column
            if line and draw.textlength(f"{line} {word}") > label_w - 8:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        for n, part in enumerate(lines[:8]):
            draw.text((4, head_h + r * step + 4 + 14 * n), part, fill="black")
        for c, method in enumerate(METHODS):
            cell = Image.fromarray(images[r][method]).resize((CELL, CELL), Image.NEAREST)
            grid.paste(cell, (label_w + c * step, head_h + r * step))
    return grid


@common.cli
def main(argv=None):
    from tqdm import tqdm
    args = parse_args(argv)
    args.wandb = common.wandb_mode(args.wandb)
    prompts = batch_bake.read_prompts(args.prompts_file)[:args.first]
    if len(prompts) < 2:
        raise common.UserError(f"{args.prompts_file} holds one prompt: leave-one-out needs at least two")
    for path, flag in [(args.json, "--json"), (args.table, "--table")]:
        common.check_file(path, flag)
    model, seed = common.start(args, writes_baked=True)
    scorer = common.load_clip(args.score_model, model.device)
    scorer.set_precision(args.precision)
    shift = common.style_shift(model, args.style, args.style_text, args.negative_text)
    bakes = bake_both(model, shift, prompts, args, seed)
    guide_prompts = [common.load_prompt(model, text) for text in prompts]
    scorer_embeds = [common.load_prompt(scorer, text).embed for text in prompts]
    chosen = leave_one_out(model, prompts, bakes, [p.embed for p in guide_prompts], args.k)
    for i, text in enumerate(prompts):
        print(f"{text!r}: auto-microwaves from {[b['prompt'] for _, b in chosen[i]]}")
    scores, grid_images = [], []
    bar = tqdm(total=len(prompts) * args.seeds * len(METHODS), desc="evaluate", dynamic_ncols=True)
    for i, prompt in enumerate(guide_prompts):
        config = bakes[i, "unrolled"]["config"]
        size, cutn = config["size"], config["cutn"]
        finals = {}
        for j in range(args.seeds):
            start = start_image(i, j, size, model.device)
            for method in METHODS:
                torch.manual_seed(start_seed(i, j))  # the splice follows the start
                targets, steps = method_targets(method, i, prompt, bakes, chosen, shift, args.mix)
                torch.manual_seed(start_seed(i, j))  # the same random cutouts for every method
                z = common.rollout(model, start, targets, steps, args.lr, cutn)
                finals.setdefault(method, []).append(z)
                bar.update(1)
        for method in METHODS:
            images = shown(torch.cat(finals[method]))  # [seeds, 3, H, W]: each image, both scorers
            guide_scores = score(model, images, prompt.embed).tolist()
            scorer_scores = score(scorer, images, scorer_embeds[i]).tolist()
            for j in range(args.seeds):
                scores.append({"prompt": prompt.text, "start": j, "method": method,
                               "guide": guide_scores[j], "scorer": scorer_scores[j]})
        grid_images.append({m: common.to_pixels(finals[m][0]) for m in METHODS})
    bar.close()
    summary = summarize(scores)
    distances = stage_distances(bakes, guide_prompts)
    table = markdown_table(summary, distances, len(prompts), args.seeds, args.clip_model, args.score_model)
    result = {"prompts": prompts, "clip_model": args.clip_model, "score_model": args.score_model,
              "seeds": args.seeds, "seed": seed,
              "bake_config": {k: v for k, v in bakes[0, "unrolled"]["config"].items() if k != "seed"},
              "bakes": {text: {mode: str(bakes[i, mode]["path"]) for mode in ("unrolled", "none")}
                        for i, text in enumerate(prompts)},
              "leave_one_out": {text: [str(b["path"]) for _, b in chosen[i]] for i, text in enumerate(prompts)},
              "stage_distance": distances, "scores": scores, "summary": summary}
    if any(not math.isfinite(s[k]) for s in scores for k in SCORERS):
        common.log("note: some scores are not finite")
    common.write_text(args.json, json.dumps(result, indent=2) + "\n")
    common.write_text(args.table, table)
    grid = make_grid(prompts, grid_images)
    common.atomic_write(args.out, lambda tmp: grid.save(tmp, format="PNG"))
    print(table)
    print(f"wrote {args.table}, {args.json} and {args.out}")


if __name__ == "__main__":
    main()
