"""The evaluation's statistics: paired wins, their Wilson intervals, and each method's summary.

A score is a dict: the prompt, the start, the method's name, and the distance of the image to
its prompt under each judge ("guide", "scorer"); lower is better.
"""

import math
import statistics

JUDGES = ["guide", "scorer"]


def wins(scores, method, against, judge):
    """Paired starts on which method's image is nearer the prompt than against's: (wins, pairs), ties half."""
    pairs = {}
    for s in scores:
        if s["method"] in (method, against):
            pairs.setdefault((s["prompt"], s["start"]), {})[s["method"]] = s[judge]
    won = [1.0 if p[method] < p[against] else 0.5 if p[method] == p[against] else 0.0
           for p in pairs.values() if method in p and against in p]
    return sum(won), len(won)


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


def summarize(scores, methods, baselines, bake_seconds=None):
    """Per method (by name) and judge: the mean and spread of its distances, and its win rate
    (with a 95% interval) against each baseline among the methods; per method that replays
    bakes, their mean seconds (bake_seconds: {method: seconds or None})."""
    summary = {}
    for method in methods:
        summary[method] = {}
        for judge in JUDGES:
            values = [s[judge] for s in scores if s["method"] == method]
            entry = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
            for against in baselines:  # against itself: one half, all ties
                won, n = wins(scores, method, against, judge)
                entry[f"win_rate_vs_{against}"] = won / n
                entry[f"interval_vs_{against}"] = interval(won, n)
            summary[method][judge] = entry
        if bake_seconds is not None and method in bake_seconds:
            summary[method]["bake_seconds"] = bake_seconds[method]
    return summary


def versus(scores, other, method, judge):
    """How often a method's image under one parametrization (scores) beats the same method's under
    another (other) from the same start: (wins, pairs), ties half."""
    theirs = {(s["prompt"], s["start"]): s[judge] for s in other if s["method"] == method}
    mine = [(s[judge], theirs[s["prompt"], s["start"]]) for s in scores
            if s["method"] == method and (s["prompt"], s["start"]) in theirs]
    return sum(1.0 if a < b else 0.5 if a == b else 0.0 for a, b in mine), len(mine)


def compare_params(runs, methods, base="rgb"):
    """Add to each parametrization's summary its win rate (and interval) against base's, method by
    method, on paired starts. runs: {param: {"scores", "summary"}}, base among them."""
    for param, found in runs.items():
        for method in methods:
            for judge in JUDGES:
                won, n = versus(found["scores"], runs[base]["scores"], method, judge)
                entry = found["summary"][method][judge]
                entry[f"win_rate_vs_{base}"] = won / n if n else None
                entry[f"interval_vs_{base}"] = interval(won, n)
