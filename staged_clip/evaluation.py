"""Measuring the method: bakes replayed, auto-microwaved and plain optimization, scored on held-out starts."""

import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import baked, baking, losses, output, prompts, render
from .randomness import seed_everything
from .settings import META_GRADS

SCORERS = ["guide", "scorer"]
START_SEED = 2**62  # the evaluation's starts come from seeds no bake uses (bakes: --seed + i, below 2**62)
MAX_STARTS = 2**20  # starts per prompt: start (i, j) has seed START_SEED + i * MAX_STARTS + j
CELL, GAP = 128, 4  # side of one image in the grid, and the white space after it


def methods_of(estimators):
    """The methods an evaluation compares: plain optimization, each estimator's bake replayed, and
    auto-microwaving (mean and splice) from the first estimator's bakes."""
    return ["normal", *[f"microwave_{e}" for e in estimators], "auto_mean", "auto_splice"]


METHODS = methods_of(META_GRADS)


# --- bakes

def bake_all(model, shift, texts, settings, estimators, baked_dir, wandb, save_size, info):
    """{(i, estimator): bake dict} for every prompt and estimator, baking what is missing.

    Prompt i is baked with seed settings.seed + i, into baked_dir/<estimator>/; a bake
    there is reused when made with the same settings and seed. save_size and
    info(settings, text): the preview PNG's side and text chunks.
    """
    bakes = {}
    for mode in estimators:
        folder = Path(baked_dir) / mode
        for i, text in enumerate(texts):
            path = baked.baked_path(folder, text)
            own = settings.replace(meta_grad=mode, seed=settings.seed + i)
            if (baked.already_baked(path, text, own, model)
                    and baked.load_baked(path)["config"].get("seed") == own.seed):  # every bake from one seed
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


def leave_one_out(model, texts, bakes, embeds, k, estimator):
    """For each prompt, the k nearest bakes of the other prompts by one estimator: {i: [(dist, bake)]}."""
    chosen = {}
    for i in range(len(texts)):
        others = [bakes[j, estimator] for j in range(len(texts)) if j != i]
        chosen[i] = baked.nearest_bakes(model, embeds[i], others, k, "the other prompts' bakes")
    return chosen


# --- images and scores

def start_seed(i, j):
    return START_SEED + i * MAX_STARTS + j


def start_image(i, j, size, device):
    """Start j of prompt i: the same for every method, drawn from a seed no bake uses."""
    generator = torch.Generator().manual_seed(start_seed(i, j))
    return torch.randn(1, 3, size, size, generator=generator).to(device)


def method_plan(method, i, prompt, bakes, chosen, shift, settings, mix):
    """(targets [S, D], the renderer's settings, learning-rate multipliers [S] or None) of one method
    for prompt i. Replays take their steps, Adam's eps and moments and multipliers from their
    bakes; normal optimizes toward the prompt for as many steps in all, with the evaluation's
    renderer."""
    device = prompt.embed.device
    if method == "normal":
        first = next(b for (j, _), b in bakes.items() if j == i)
        total = first["config"]["steps"] * len(first["stages"])
        return (prompt.embed + shift)[None], settings.replace(steps=total), None
    if method.startswith("microwave_"):
        bake = bakes[i, method.split("_", 1)[1]]
        return (prompts.shape_targets(bake["stages"].to(device), shift),
                settings.replace(steps=bake["config"]["steps"]).replaying(bake["config"]),
                baked.scales_of([bake], device)[0])
    near = [b for _, b in chosen[i]]
    path, scale = baked.compose_path(torch.stack([b["stages"] for b in near]).to(device), method.split("_", 1)[1],
                                     baked.scales_of(near, device))
    return (prompts.shape_targets(prompts.lerp_unit(path, prompt.embed, mix), shift),
            settings.replace(steps=near[0]["config"]["steps"]).replaying(near[0]["config"]), scale)


def shown(z):
    """The images as saved (quantized), at their own size: [n, 3, H, W]."""
    return output.quantize(losses.to_image(z.detach().float()))


def score(model, images, prompt_embed):
    """Spherical distance of each image [n, 3, H, W] (resized to the model's side) to a prompt: [n]."""
    resized = F.interpolate(images, size=(model.size, model.size), mode="bilinear", antialias=True,
                            align_corners=False)
    with torch.no_grad():
        return losses.spherical_distance(prompts.embed_images(model, resized), prompt_embed)


def run_methods(model, scorer, guide_prompts, scorer_embeds, bakes, chosen, shift, settings, seeds, mix, methods):
    """Every method from every start: (scores, one image per prompt and method for the grid).

    Each (prompt, start) begins every method from the same image and random state; size
    and cutouts are the bakes'.
    """
    from tqdm import tqdm
    scores, grid_images = [], []
    bar = tqdm(total=len(guide_prompts) * seeds * len(methods), desc="evaluate", dynamic_ncols=True)
    for i, prompt in enumerate(guide_prompts):
        config = next(b for (j, _), b in bakes.items() if j == i)["config"]
        size, cutn = config["size"], config["cutn"]
        finals = {}
        for j in range(seeds):
            start = start_image(i, j, size, model.device)
            for method in methods:
                torch.manual_seed(start_seed(i, j))  # the splice follows the start
                targets, own, scale = method_plan(method, i, prompt, bakes, chosen, shift,
                                                  settings.replace(size=size, cutn=cutn), mix)
                torch.manual_seed(start_seed(i, j))  # the same random cutouts for every method
                z = render.rollout(model, start, targets, own, lr_scale=scale)
                finals.setdefault(method, []).append(z)
                bar.update(1)
        for method in methods:
            images = shown(torch.cat(finals[method]))  # [seeds, 3, H, W]: each image, both scorers
            guide_scores = score(model, images, prompt.embed).tolist()
            scorer_scores = score(scorer, images, scorer_embeds[i]).tolist()
            for j in range(seeds):
                scores.append({"prompt": prompt.text, "start": j, "method": method,
                               "guide": guide_scores[j], "scorer": scorer_scores[j]})
        grid_images.append({m: output.to_pixels(finals[m][0]) for m in methods})
    bar.close()
    return scores, grid_images


# --- summary, table and grid

def wins(scores, method, against, scorer):
    """Paired starts on which method's image is nearer the prompt than against's: (wins, pairs), ties half."""
    pairs = {}
    for s in scores:
        if s["method"] in (method, against):
            pairs.setdefault((s["prompt"], s["start"]), {})[s["method"]] = s[scorer]
    won = [1.0 if p[method] < p[against] else 0.5 if p[method] == p[against] else 0.0
           for p in pairs.values() if method in p and against in p]
    return sum(won), len(won)


def win_rate(scores, method, against, scorer):
    """How often method's image is nearer the prompt than against's, on paired starts (ties: half)."""
    won, n = wins(scores, method, against, scorer)
    return won / n


def interval(won, n, z=1.96):
    """The Wilson score interval (95%) of a share won / n: (low, high).

    E.g. 27 of 36 gives about (0.59, 0.86): the share is likely above half.
    """
    if n == 0:
        return 0.0, 1.0
    p = won / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))  # (rounding at 0 and 1)


def summarize(scores, methods, bakes=None):
    """Per method and scorer: mean and spread of the distances, and win rates (with 95% intervals)
    against normal and against the reference-style bake's replay; per bake method, bake seconds."""
    summary = {}
    for method in methods:
        summary[method] = {}
        for scorer in SCORERS:
            values = [s[scorer] for s in scores if s["method"] == method]
            entry = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
            for against in ("normal", "microwave_none"):  # against itself: one half, all ties
                if against in methods:
                    won, n = wins(scores, method, against, scorer)
                    entry[f"win_rate_vs_{against}"] = won / n
                    entry[f"interval_vs_{against}"] = interval(won, n)
            summary[method][scorer] = entry
        estimator = method.split("_", 1)[1] if method.startswith("microwave_") else None
        if bakes is not None and estimator is not None:
            seconds = [b.get("seconds") for (_, e), b in bakes.items() if e == estimator]
            summary[method]["bake_seconds"] = None if None in seconds else statistics.fmean(seconds)
    return summary


def stage_distances(bakes, guide_prompts):
    """Mean spherical distance of each estimator's stages to their prompt (guide model)."""
    result = {}
    for (i, mode), bake in bakes.items():
        p = guide_prompts[i].embed
        result.setdefault(mode, []).append(losses.spherical_distance(bake["stages"].to(p.device), p).mean().item())
    return {mode: statistics.fmean(values) for mode, values in result.items()}


def markdown_table(summary, distances, methods, n_prompts, n_starts, guide_name, scorer_name):
    lines = [f"Spherical distance of the final image to its prompt (lower is better), {n_prompts} prompts "
             f"x {n_starts} starts; mean ± standard deviation, and how often a method beats normal optimization "
             f"and the reference-style bake's replay on the same start, with its 95% interval. "
             f"Guide: {guide_name}; scorer: {scorer_name}.", "",
             "| method | guide: distance | guide: vs normal | guide: vs none | scorer: distance | scorer: vs normal "
             "| scorer: vs none | bake, s |",
             "|---|---|---|---|---|---|---|---|"]

    def rate(entry, against):
        if f"win_rate_vs_{against}" not in entry or method == against:
            return "—"
        low, high = entry[f"interval_vs_{against}"]
        return f"{entry[f'win_rate_vs_{against}']:.0%} ({low:.0%}-{high:.0%})"

    for method in methods:
        g, s = summary[method]["guide"], summary[method]["scorer"]
        seconds = summary[method].get("bake_seconds")
        lines.append(f"| {method} | {g['mean']:.4f} ± {g['std']:.4f} | {rate(g, 'normal')} | "
                     f"{rate(g, 'microwave_none')} | {s['mean']:.4f} ± {s['std']:.4f} | {rate(s, 'normal')} | "
                     f"{rate(s, 'microwave_none')} | {'' if seconds is None else f'{seconds:.0f}'} |")
    lines += ["", "Mean distance of the baked stages to their prompt: "
              + ", ".join(f"{mode} {d:.4f}" for mode, d in distances.items()) + "."]
    return "\n".join(lines) + "\n"


def make_grid(texts, images, methods=METHODS):
    """A PIL image: one row per prompt, one column per method (images[i][method]: [H, W, 3] uint8)."""
    from PIL import Image, ImageDraw
    label_w, head_h = 200, 24
    step = CELL + GAP
    grid = Image.new("RGB", (label_w + step * len(methods), head_h + step * len(texts)), "white")
    draw = ImageDraw.Draw(grid)
    for c, method in enumerate(methods):
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
        for c, method in enumerate(methods):
            cell = Image.fromarray(images[r][method]).resize((CELL, CELL), Image.NEAREST)
            grid.paste(cell, (label_w + c * step, head_h + r * step))
    return grid


# --- parametrizations compared

def versus(scores, other, method, scorer):
    """How often a method's image under one parametrization (scores) beats the same method's under
    another (other) from the same start: (wins, pairs), ties half."""
    theirs = {(s["prompt"], s["start"]): s[scorer] for s in other if s["method"] == method}
    mine = [(s[scorer], theirs[s["prompt"], s["start"]]) for s in scores
            if s["method"] == method and (s["prompt"], s["start"]) in theirs]
    return sum(1.0 if a < b else 0.5 if a == b else 0.0 for a, b in mine), len(mine)


def compare_params(runs, methods, base="rgb"):
    """Add to each parametrization's summary its win rate (and interval) against base's, method by
    method, on paired starts. runs: {param: {"scores", "summary"}}, base among them."""
    for param, found in runs.items():
        for method in methods:
            for scorer in SCORERS:
                won, n = versus(found["scores"], runs[base]["scores"], method, scorer)
                entry = found["summary"][method][scorer]
                entry[f"win_rate_vs_{base}"] = won / n if n else None
                entry[f"interval_vs_{base}"] = interval(won, n)


def params_table(runs, methods, n_prompts, n_starts, base="rgb"):
    """A markdown table: a row per method, a column per parametrization (mean distances, guide / scorer,
    and the win rate against base's same method on paired starts)."""
    names = list(runs)
    lines = [f"Each parametrization against {base}, method by method, on the same {n_prompts} prompts x "
             f"{n_starts} starts: mean distance to the prompt under the guide / the scorer (lower is better), "
             f"and how often its image beats {base}'s from the same start (guide / scorer).", "",
             "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for method in methods:
        cells = []
        for param in names:
            g, s = runs[param]["summary"][method]["guide"], runs[param]["summary"][method]["scorer"]
            cell = f"{g['mean']:.4f} / {s['mean']:.4f}"
            if param != base:
                cell += f"; {g[f'win_rate_vs_{base}']:.0%} / {s[f'win_rate_vs_{base}']:.0%}"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
