"""The evaluation's report: markdown tables, grids of images (prompts x methods), and writing them."""

import json
import math
from pathlib import Path

from .errors import log
from .methods import SAID
from .output import atomic_write, write_text
from .stats import GUIDE, PIXELS, interval, versus

CELL, GAP = 128, 4  # side of one image in the grid, and the white space after it
LABEL_W, HEAD_H = 200, 24  # the grid's column of prompts, and its row of method names
LINE_H = 12  # a line of notes under an image


def versus_cell(entry, base):
    """One comparison: win rate (95% interval); paired mean difference ± its standard error, median."""
    low, high = entry[f"interval_vs_{base}"]
    return (f"{entry[f'win_rate_vs_{base}']:.0%} ({low:.0%}-{high:.0%}); {entry[f'mean_diff_vs_{base}']:+.3f} "
            f"± {entry[f'se_vs_{base}']:.3f}, {entry[f'median_diff_vs_{base}']:+.3f}")


def readout_cell(entry, base):
    """One comparison of readouts: this right and that wrong, the reverse, and McNemar's exact p."""
    b, c, p = entry[f"readout_vs_{base}"]
    return f"{b} / {c}, p {p:.2g}"


def readout_rate(entry):
    """A readout rate with its 95% interval, or a dash where the prompts have none."""
    if entry.get("readout") is None:
        return "—"
    low, high = entry["readout_interval"]
    return f"{entry['readout']:.0%} ({low:.0%}-{high:.0%})"


def caption(result, plan):
    """What the evaluation's tables measured, in words: prompts, starts, cutouts, judges, the sweep."""
    tuned = result["normal_tuned"]
    scored = set(tuned["prompts"]) & set(result["prompts"])
    swept = ("the evaluated prompts, from starts no method here starts from" if plan.tune_prompts is None else
             f"{len(tuned['prompts'])} prompts, {len(scored)} of them scored here" if scored else
             f"{len(tuned['prompts'])} other prompts, none of them scored here")
    source = f" of {plan.source}" if plan.source else ""
    return (f"{len(plan.prompts)} prompts{source} x {plan.seeds} starts ({len(plan.prompts) * plan.seeds} paired "
            f"starts per comparison); every image made at {result['size']}, cutn {result['replay_cutn']}, "
            f"{result['stages']} stages x {result['replay_steps']} steps ({result['stages'] * result['replay_steps']} "
            f"in all; the bakes were learned at cutn {result['bake_cutn']}, {result['bake_steps']} steps a stage). "
            f"Readout: how often the judge's best of the drawn world's captions is the prompt (95% Wilson "
            f"interval), and against each baseline the starts where this reads right and that wrong / the reverse, "
            f"with McNemar's exact p. Spherical distance of the saved image to its prompt, lower is better: "
            f"mean ± standard deviation; against each baseline, how often a method's image is nearer on the same "
            f"start (95% Wilson interval), and the paired difference (mean ± standard error, median; negative: "
            f"nearer). Guide: {plan.guide_model}; held-out judges: {', '.join(plan.score_models)}. normal_tuned's "
            f"learning rate, {tuned['lr']}, was chosen from {', '.join(map(str, tuned['lrs']))} by the guide alone on "
            f"{swept} ({tuned['starts']} starts each)" + "".join(
                f"; {name}'s, {other['lr']}, the same way" for name, other in result.get("tuned", {}).items()
                if name != "normal_tuned") + ".")


def markdown_table(result, methods, plan):
    """The evaluation's tables: one per judge (the guide, then each held-out one), a row per method (a
    methods.Method): its mean distance, and its comparison with each baseline; then how often the
    judges agree. result: evaluate_one's JSON result; plan: the evaluation.Plan."""
    summary, baselines = result["summary"], result["baselines"]
    said = "; ".join(f"`{name}`: {SAID[name]}" for name in baselines if name in SAID)
    lines = [caption(result, plan), "", f"Baselines: {said}.", ""]
    for judge in result["judges"]:
        title = "the guide" if judge == GUIDE else f"held-out judge {judge}"
        read = any(summary[m.name][judge].get("readout") is not None for m in methods)
        lines += [f"Under {title}:", "", "| method | " + ("readout | " if read else "") + "distance | "
                  + " | ".join(f"vs {b}" for b in baselines) + " | bake, s |",
                  "|---" * (len(baselines) + 3 + read) + "|"]
        for method in methods:
            entry = summary[method.name][judge]
            cells = [*([readout_rate(entry)] if read else []), f"{entry['mean']:.4f} ± {entry['std']:.4f}",
                     *("—" if method.name == b else versus_cell(entry, b)
                       + (f"; read {readout_cell(entry, b)}" if read else "") for b in baselines)]
            seconds = summary[method.name].get("bake_seconds")
            lines.append(f"| {method.name} | " + " | ".join(cells) + f" | {'' if seconds is None else f'{seconds:.0f}'} |")
        lines += ["", *kinds_table(summary, methods, judge)]
    lines += seen_table(result, methods) + pixels_table(result, methods)
    agree = [f"{pair} {share:.0%}" for pair, share in result["agreement"].items() if share is not None]
    lines += ["The judges agree on which of two images of a start is nearer its prompt: " + ", ".join(agree) + ".",
              "", "Mean distance of the baked stages to their prompt: "
              + ", ".join(f"{mode} {d:.4f}" for mode, d in result["stage_distance"].items()) + "."]
    return "\n".join(lines) + "\n"


def seen_table(result, methods):
    """Lines of a table of what the held-out judges see of the guide's gain against each baseline
    (stats.seen), and each method's share of fine detail (scoring.high_frequency)."""
    summary, baselines = result["summary"], result["baselines"]
    judges = [j for j in result["judges"] if j != GUIDE]
    if not judges or not baselines:
        return []
    lines = [f"What the held-out judges ({' / '.join(judges)}) see of the guide's gain: of the starts where the "
             f"guide finds a method's image nearer than the baseline's (how many), the share where each judge does "
             f"too (at or below 50%: the method fits the guide's own patterns); and the images' share of fine "
             f"detail (variance above half the highest frequency; pixel noise about 75%):", "",
             "| method | fine detail | " + " | ".join(f"vs {b}" for b in baselines) + " |",
             "|---|---|" + "---|" * len(baselines)]
    for method in methods:
        cells = []
        for base in baselines:
            found = [summary[method.name][j].get(f"seen_vs_{base}") for j in judges]
            cells.append("—" if method.name == base or None in found else
                         f"({found[0][1]}) " + " / ".join("—" if s is None else f"{s:.0%}" for s, _ in found))
        fine = summary[method.name].get("high_frequency")
        lines.append(f"| {method.name} | {'—' if fine is None else f'{fine:.1%}'} | " + " | ".join(cells) + " |")
    return lines + [""]


def pixels_table(result, methods):
    """Lines of a table of the readout by pixels (stats.PIXELS): how often each method's images show
    every named colour on its named side, and against each baseline the paired counts with
    McNemar's p; none where no prompt is the drawn world's."""
    summary, baselines = result["summary"], result["baselines"]
    if not any(PIXELS in summary[m.name] for m in methods):
        return []
    lines = ["By pixels alone, no CLIP: how often every named colour is present on its named side (at least 1% of "
             "the image in it there, twice as much as on the opposite side), and against each baseline the starts "
             "where this reads right and that wrong / the reverse, with McNemar's exact p:", "",
             "| method | by pixels | " + " | ".join(f"vs {b}" for b in baselines) + " |",
             "|---|---|" + "---|" * len(baselines)]
    for method in methods:
        entry = summary[method.name].get(PIXELS, {})
        cells = ["—" if method.name == b or f"readout_vs_{b}" not in entry else readout_cell(entry, b)
                 for b in baselines]
        lines.append(f"| {method.name} | {readout_rate(entry)} | " + " | ".join(cells) + " |")
    return lines + [""]


def kinds_table(summary, methods, judge):
    """Lines of a table of the scene prompts' readout by kind of rival under one judge (binding:
    colour, shape and place swaps; recall: an object dropped), or none where no prompt is a scene."""
    kinds = list(dict.fromkeys(kind for m in methods for kind in summary[m.name][judge].get("readout_by_kind", {})))
    if not kinds:
        return []
    lines = ["The scene prompts read against each kind of rival (the prompt beats every rival of that kind; "
             "`drop`: a caption missing one object):", "", "| method | " + " | ".join(kinds) + " |",
             "|---|" + "---|" * len(kinds)]
    for method in methods:
        by = summary[method.name][judge].get("readout_by_kind", {})
        lines.append(f"| {method.name} | " + " | ".join(f"{by[k]:.0%}" if k in by else "—" for k in kinds) + " |")
    return lines + [""]


def params_table(runs, methods, plan, base="rgb"):
    """A markdown table: a row per method, a column per parametrization (mean distances under each judge,
    guide first, and the win rate against base's same method on paired starts)."""
    names, judges = list(runs), runs[base]["judges"]
    lines = [f"Each parametrization (or palette) against {base}, method by method, on the same {len(plan.prompts)} prompts x "
             f"{plan.seeds} starts: mean distance to the prompt under {' / '.join(judges)} (lower is better), "
             f"and how often its image beats {base}'s from the same start (the same judges in turn, 95% Wilson "
             f"intervals).", "",
             "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for method in methods:
        cells = []
        for param in names:
            entries = [runs[param]["summary"][method][judge] for judge in judges]
            cell = " / ".join(f"{e['mean']:.4f}" for e in entries)
            if param != base:
                cell += "; " + " / ".join(f"{e[f'win_rate_vs_{base}']:.0%} ({e[f'interval_vs_{base}'][0]:.0%}-"
                                          f"{e[f'interval_vs_{base}'][1]:.0%})" for e in entries)
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pairs_table(runs, methods, base):
    """A markdown table of the variants other than base against each other, method by method, on the
    same starts: how often the first's image beats the second's, under each judge (95% intervals)."""
    names, judges = [n for n in runs if n != base], runs[base]["judges"]
    lines = ["Each other pair, on the same starts: how often the first's image beats the second's under "
             + " / ".join(judges) + ".", "", "| pair | method | " + " | ".join(judges) + " |",
             "|---|---|" + "---|" * len(judges)]
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            for method in methods:
                cells = []
                for judge in judges:
                    wins, n = versus(runs[first]["scores"], runs[second]["scores"], method, judge)
                    low, high = interval(wins, n)
                    cells.append(f"{wins / n:.0%} ({low:.0%}-{high:.0%})" if n else "-")
                lines.append(f"| {first} vs {second} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def captions(result):
    """Per prompt, per method: each judge's distance of its first start's image and whether it reads
    the image as the prompt ("read") or not ("miss"), a line each; and the readout by pixels."""
    found = [{} for _ in result["prompts"]]
    row = {text: r for r, text in enumerate(result["prompts"])}
    for s in result["scores"]:
        if s["start"] == 0:
            read = s.get("readout") or {}
            said = [f"{judge} {s[judge]:.3f}" + ("" if judge not in read else " read" if read[judge] else " miss")
                    for judge in result["judges"]]
            pixels = [f"pixels {'read' if read[PIXELS] else 'miss'}"] if PIXELS in read else []
            found[row[s["prompt"]]][s["method"]] = said + pixels
    return found


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


def make_grid(texts, images, columns, notes=None):
    """A PIL image: one row per prompt, one column per name of columns (images[i][name]: [H, W, 3] uint8),
    and under each image its notes (notes[i][name]: lines of text, such as each judge's distance)."""
    from PIL import Image, ImageDraw
    below = LINE_H * max((len(lines) for row in notes or [] for lines in row.values()), default=0)
    step, down = CELL + GAP, CELL + GAP + below
    grid = Image.new("RGB", (LABEL_W + step * len(columns), HEAD_H + down * len(texts)), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(columns):
        draw.text((LABEL_W + c * step + 4, 6), name, fill="black")
    for r, text in enumerate(texts):
        for n, part in enumerate(wrap(draw, text, LABEL_W - 8)[:8]):
            draw.text((4, HEAD_H + r * down + 4 + 14 * n), part, fill="black")
        for c, name in enumerate(columns):
            cell = Image.fromarray(images[r][name]).resize((CELL, CELL), Image.NEAREST)
            grid.paste(cell, (LABEL_W + c * step, HEAD_H + r * down))
            for n, line in enumerate((notes or [{}] * len(texts))[r].get(name, [])):
                draw.text((LABEL_W + c * step + 2, HEAD_H + r * down + CELL + 1 + LINE_H * n), line, fill="black")
    return grid


def grid_path(out, name, base):
    """Where a grid goes: OUT for the base parametrization's, OUT_<name>.png for the others (every
    one where base is None)."""
    stem = f"{Path(out).stem}_{name.replace(':', '_')}"
    return out if name == base else str(Path(out).with_name(stem + Path(out).suffix))


def budget_table(runs, methods, baselines, judges):
    """Markdown tables of an evaluation at several step budgets (runs: {steps a stage: result}): per
    judge, each method's readout (95% interval) and mean distance by total steps; then each
    method against each baseline: the readout's paired counts (this right and that wrong / the
    reverse) with McNemar's p, and the share of starts on which its image is nearer."""
    totals = {steps: result["stages"] * steps for steps, result in runs.items()}
    first = next(iter(runs.values()))
    lines = [f"The step-budget curve: {len(first['prompts'])} prompts x {first['seeds']} starts, {first['size']}, "
             f"cutn {first['replay_cutn']}, {first['stages']} stages of each number of steps (the plain "
             "baselines as many steps in all, each tuned baseline's rate swept by the guide at each budget). Readout "
             "(95% interval) and mean distance to the prompt (lower is better).", ""]
    head = "| method | " + " | ".join(f"{t} steps" for t in totals.values()) + " |"
    rule = "|---|" + "---|" * len(totals)
    for judge in judges:
        lines += [f"Under {'the guide' if judge == GUIDE else judge}:", "", head, rule]
        for method in methods:
            cells = [f"{readout_rate(r['summary'][method][judge])}; {r['summary'][method][judge]['mean']:.4f}"
                     for r in runs.values()]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if all(PIXELS in r["summary"][m] for r in runs.values() for m in methods):
        lines += ["By pixels alone (each named colour on its named side):", "", head, rule]
        lines += [f"| {m} | " + " | ".join(readout_rate(r["summary"][m][PIXELS]) for r in runs.values()) + " |"
                  for m in methods] + [""]
    lines += ["Paired, on the same starts: the readout's counts (this right and that wrong / the reverse) with "
              "McNemar's exact p, and how often this image is nearer its prompt, under " + " / ".join(judges)
              + ".", "", "| method | vs | " + " | ".join(f"{t} steps" for t in totals.values()) + " |",
              "|---|---|" + "---|" * len(totals)]
    for method in methods:
        for base in (b for b in baselines if b != method):
            cells = [" / ".join(f"{readout_cell(e, base) if e.get('readout') is not None else '—'}, "
                                f"{e[f'win_rate_vs_{base}']:.0%}" for e in (r["summary"][method][j] for j in judges))
                     for r in runs.values()]
            lines.append(f"| {method} | {base} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def budget_curve(runs, methods, judges):
    """The step-budget curve as a PIL image: per judge, each method's readout (with its 95% interval)
    and mean distance (with 1.96 standard errors) against the total steps (runs: {steps a stage: result})."""
    from .plot import Panel, chart
    totals = [r["stages"] * steps for steps, r in runs.items()]
    panels = []
    for judge in judges:
        read = {m: [(e.get("readout"), *(e.get("readout_interval") or (None, None)))
                    for e in (r["summary"][m][judge] for r in runs.values())] for m in methods}
        panels.append(Panel(f"{judge}: readout (share read as the prompt)", (0.0, 1.0), read, "{:.0%}"))
    for judge in judges:
        spread = {m: [] for m in methods}
        for r in runs.values():
            n = r["seeds"] * len(r["prompts"])
            for m in methods:
                e = r["summary"][m][judge]
                half = 1.96 * e["std"] / math.sqrt(n)
                spread[m].append((e["mean"], e["mean"] - half, e["mean"] + half))
        values = [v for points in spread.values() for p in points for v in p[1:]]
        panels.append(Panel(f"{judge}: distance to the prompt (lower: nearer)", (min(values), max(values)), spread,
                            "{:.3f}"))
    return chart(panels, totals, len(judges), "total steps")


def write(json_path, table_path, result, table, grids):
    """Write the JSON, the table and the grids ({path: PIL image}), and print the table."""
    runs = result.get("params", result.get("budgets", {"": result})).values()
    if any(not math.isfinite(s[k]) for run in runs for s in run.get("scores", []) for k in run["judges"]):
        log("note: some scores are not finite")
    write_text(json_path, json.dumps(result, indent=2, default=str) + "\n")
    write_text(table_path, table)
    for path, grid in grids.items():
        atomic_write(path, lambda tmp, grid=grid: grid.save(tmp, format="PNG"))
    print(table)
    written = [table_path, json_path, *grids]
    print(f"wrote {', '.join(written[:-1])} and {written[-1]}")
