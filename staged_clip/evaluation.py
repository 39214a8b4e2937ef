"""Measuring the method: bakes replayed, auto-microwaved and plain optimization, scored on held-out starts."""

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import baked, baking, losses, output, prompts, render
from .randomness import seed_everything

METHODS = ["normal", "microwave_unrolled", "microwave_none", "auto_mean", "auto_splice"]
SCORERS = ["guide", "scorer"]
START_SEED = 2**62  # the evaluation's starts come from seeds no bake uses (bakes: --seed + i, below 2**62)
MAX_STARTS = 2**20  # starts per prompt: start (i, j) has seed START_SEED + i * MAX_STARTS + j
CELL, GAP = 128, 4  # side of one image in the grid, and the white space after it


# --- bakes

def bake_both(model, shift, texts, settings, baked_dir, wandb, save_size, info):
    """{(i, mode): bake dict} for every prompt and both meta-gradients, baking what is missing.

    Prompt i is baked with seed settings.seed + i, into baked_dir/<mode>/; a bake there
    is reused when made with the same settings and seed. save_size and info(settings,
    text): the preview PNG's side and text chunks.
    """
    bakes = {}
    for mode in ("unrolled", "none"):
        folder = Path(baked_dir) / mode
        for i, text in enumerate(texts):
            path = baked.baked_path(folder, text)
            own = settings.replace(meta_grad=mode, seed=settings.seed + i)
            if (baked.already_baked(path, text, own, model)
                    and baked.load_baked(path)["config"].get("seed") == own.seed):  # both bakes from one seed
                print(f"reusing {path}")
            else:
                seed_everything(own.seed, announce=False)
                began = time.time()
                prompt = prompts.load_prompt(model, text)
                try:
                    preview = output.Output(str(path.with_suffix(".png")), save_size)
                    history = baking.bake_prompt(model, prompt, shift, own, path, preview, wandb, info(own, text))
                except baking.BakeInterrupted as stop:
                    stop.rest = "; run again to go on"
                    raise
                print(f"baked {text!r} ({mode}) in {time.time() - began:.0f} s, "
                      f"final meta loss {history[-1]:.4f} -> {path}")
            bakes[i, mode] = baked.load_baked(path)
    return bakes


def leave_one_out(model, texts, bakes, embeds, k):
    """For each prompt, the k nearest unrolled bakes of the other prompts: {i: [(dist, bake)]}."""
    chosen = {}
    for i in range(len(texts)):
        others = [bakes[j, "unrolled"] for j in range(len(texts)) if j != i]
        chosen[i] = baked.nearest_bakes(model, embeds[i], others, k, "the other prompts' bakes")
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
        return prompts.shape_targets(bake["stages"].to(device), shift), bake["config"]["steps"]
    paths = torch.stack([b["stages"] for _, b in chosen[i]]).to(device)
    path = baked.compose_path(paths, method.split("_", 1)[1])
    return prompts.shape_targets(prompts.lerp_unit(path, prompt.embed, mix), shift), steps


def shown(z):
    """The images as saved (quantized), at their own size: [n, 3, H, W]."""
    return output.quantize(losses.to_image(z.detach().float()))


def score(model, images, prompt_embed):
    """Spherical distance of each image [n, 3, H, W] (resized to the model's side) to a prompt: [n]."""
    resized = F.interpolate(images, size=(model.size, model.size), mode="bilinear", antialias=True,
                            align_corners=False)
    with torch.no_grad():
        return losses.spherical_distance(prompts.embed_images(model, resized), prompt_embed)


def run_methods(model, scorer, guide_prompts, scorer_embeds, bakes, chosen, shift, settings, seeds, mix):
    """Every method from every start: (scores, one image per prompt and method for the grid).

    Each (prompt, start) begins every method from the same image and random state.
    """
    from tqdm import tqdm
    scores, grid_images = [], []
    bar = tqdm(total=len(guide_prompts) * seeds * len(METHODS), desc="evaluate", dynamic_ncols=True)
    for i, prompt in enumerate(guide_prompts):
        config = bakes[i, "unrolled"]["config"]
        size, cutn = config["size"], config["cutn"]
        finals = {}
        for j in range(seeds):
            start = start_image(i, j, size, model.device)
            for method in METHODS:
                torch.manual_seed(start_seed(i, j))  # the splice follows the start
                targets, steps = method_targets(method, i, prompt, bakes, chosen, shift, mix)
                torch.manual_seed(start_seed(i, j))  # the same random cutouts for every method
                z = render.rollout(model, start, targets, settings.replace(steps=steps, cutn=cutn))
                finals.setdefault(method, []).append(z)
                bar.update(1)
        for method in METHODS:
            images = shown(torch.cat(finals[method]))  # [seeds, 3, H, W]: each image, both scorers
            guide_scores = score(model, images, prompt.embed).tolist()
            scorer_scores = score(scorer, images, scorer_embeds[i]).tolist()
            for j in range(seeds):
                scores.append({"prompt": prompt.text, "start": j, "method": method,
                               "guide": guide_scores[j], "scorer": scorer_scores[j]})
        grid_images.append({m: output.to_pixels(finals[m][0]) for m in METHODS})
    bar.close()
    return scores, grid_images


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
        values = [losses.spherical_distance(bakes[i, mode]["stages"].to(p.embed.device), p.embed).mean().item()
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


def make_grid(texts, images):
    """A PIL image: one row per prompt, one column per method (images[i][method]: [H, W, 3] uint8)."""
    from PIL import Image, ImageDraw
    label_w, head_h = 200, 24
    step = CELL + GAP
    grid = Image.new("RGB", (label_w + step * len(METHODS), head_h + step * len(texts)), "white")
    draw = ImageDraw.Draw(grid)
    for c, method in enumerate(METHODS):
        draw.text((label_w + c * step + 4, 6), method, fill="black")
    for r, text in enumerate(texts):
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
