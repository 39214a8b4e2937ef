"""The evaluation's report: markdown tables, grids of images (prompts x methods), and writing them."""

import json
import math
from pathlib import Path

from .errors import log
from .output import atomic_write, write_text
from .stats import JUDGES

CELL, GAP = 128, 4  # side of one image in the grid, and the white space after it
LABEL_W, HEAD_H = 200, 24  # the grid's column of prompts, and its row of method names


def markdown_table(summary, distances, methods, baselines, plan):
    """The evaluation's table: a row per method (a methods.Method); under the guide and the judge,
    its mean distance and its win rate against each of baselines (Methods among them).

    distances: each estimator's mean stage distance to its prompt; plan: the evaluation.Plan.
    """
    prefix = "win_rate_vs_"
    columns = [f"{judge}: {c}" for judge in JUDGES
               for c in ["distance", *(f"vs {b.estimator or b.kind}" for b in baselines)]]
    lines = [f"Spherical distance of the final image to its prompt (lower is better), {len(plan.prompts)} prompts "
             f"x {plan.seeds} starts; mean ± standard deviation, and how often a method beats "
             f"{' and '.join(b.name for b in baselines)} on the same start, with its 95% interval. "
             f"Guide: {plan.guide_model}; scorer: {plan.score_model}.", "",
             "| method | " + " | ".join(columns) + " | bake, s |", "|---" * (len(columns) + 2) + "|"]
    for method in methods:
        cells = []
        for judge in JUDGES:
            entry = summary[method.name][judge]
            cells.append(f"{entry['mean']:.4f} ± {entry['std']:.4f}")
            for base in baselines:
                low, high = entry[f"interval_vs_{base.name}"]
                cells.append("—" if method.name == base.name else
                             f"{entry[prefix + base.name]:.0%} ({low:.0%}-{high:.0%})")
        seconds = summary[method.name].get("bake_seconds")
        lines.append(f"| {method.name} | " + " | ".join(cells) + f" | {'' if seconds is None else f'{seconds:.0f}'} |")
    lines += ["", "Mean distance of the baked stages to their prompt: "
              + ", ".join(f"{mode} {d:.4f}" for mode, d in distances.items()) + "."]
    return "\n".join(lines) + "\n"


def params_table(runs, methods, plan, base="rgb"):
    """A markdown table: a row per method, a column per parametrization (mean distances, guide / scorer,
    and the win rate against base's same method on paired starts)."""
    names = list(runs)
    lines = [f"Each parametrization against {base}, method by method, on the same {len(plan.prompts)} prompts x "
             f"{plan.seeds} starts: mean distance to the prompt under the guide / the scorer (lower is better), "
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


def wrap(draw, text, width):
    """text's words in lines no wider than width (as draw measures them)."""
    line, lines = "", []
    for word in text.split():
        if line and draw.textlength(f"{line} {word}") > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


def make_grid(texts, images, columns):
    """A PIL image: one row per prompt, one column per name of columns (images[i][name]: [H, W, 3] uint8)."""
    from PIL import Image, ImageDraw
    step = CELL + GAP
    grid = Image.new("RGB", (LABEL_W + step * len(columns), HEAD_H + step * len(texts)), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(columns):
        draw.text((LABEL_W + c * step + 4, 6), name, fill="black")
    for r, text in enumerate(texts):
        for n, part in enumerate(wrap(draw, text, LABEL_W - 8)[:8]):
            draw.text((4, HEAD_H + r * step + 4 + 14 * n), part, fill="black")
        for c, name in enumerate(columns):
            cell = Image.fromarray(images[r][name]).resize((CELL, CELL), Image.NEAREST)
            grid.paste(cell, (LABEL_W + c * step, HEAD_H + r * step))
    return grid


def grid_path(out, name, base):
    """Where a grid goes: OUT for the base parametrization's, OUT_<name>.png for the others."""
    return out if name == base else str(Path(out).with_name(f"{Path(out).stem}_{name}{Path(out).suffix}"))


def write(json_path, table_path, result, table, grids):
    """Write the JSON, the table and the grids ({path: PIL image}), and print the table."""
    scores = [s for run in result.get("params", {"": result}).values() for s in run.get("scores", [])]
    if any(not math.isfinite(s[k]) for s in scores for k in JUDGES):
        log("note: some scores are not finite")
    write_text(json_path, json.dumps(result, indent=2, default=str) + "\n")
    write_text(table_path, table)
    for path, grid in grids.items():
        atomic_write(path, lambda tmp, grid=grid: grid.save(tmp, format="PNG"))
    print(table)
    written = [table_path, json_path, *grids]
    print(f"wrote {', '.join(written[:-1])} and {written[-1]}")
