"""The evaluation's statistics: paired wins, their Wilson intervals, paired differences with their
standard errors, how often two judges agree, and each method's summary.

A score is a dict: the prompt, the start, the method's name, the distance of the image to its
prompt under each judge ("guide", and each held-out score model by name; lower is better) and
"readout": whether each judge reads the image as its prompt ({judge: bool}; None for a prompt
outside the drawn world, see readout.py).
"""

import itertools
import math
import statistics

GUIDE = "guide"  # the judge that is the guiding model itself
PIXELS = "pixels"  # the readout by pixels alone (readout.pixel_reads), beside each judge's


def paired(scores, method, against, judge):
    """[(method's distance, against's distance)] on the starts (prompt, start) both have."""
    pairs = {}
    for s in scores:
        if s["method"] in (method, against):
            pairs.setdefault((s["prompt"], s["start"]), {})[s["method"]] = s[judge]
    return [(p[method], p[against]) for p in pairs.values() if method in p and against in p]


def won(pairs):
    """How many of the pairs (mine, theirs) mine wins (nearer the prompt), ties counting half."""
    return sum(1.0 if a < b else 0.5 if a == b else 0.0 for a, b in pairs)


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


def difference(pairs):
    """The paired difference (first minus second; negative: the first is nearer): (mean, its
    standard error, median). One pair has no spread: its standard error is 0."""
    diffs = [a - b for a, b in pairs]
    if not diffs:
        return None, None, None
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    return statistics.fmean(diffs), se, statistics.median(diffs)


def versus_entry(scores, method, against, judge):
    """The JSON's comparison of method with one baseline under one judge, on paired starts."""
    pairs = paired(scores, method, against, judge)
    wins = won(pairs)
    mean, se, median = difference(pairs)
    return {f"win_rate_vs_{against}": wins / len(pairs) if pairs else None,
            f"interval_vs_{against}": interval(wins, len(pairs)),
            f"mean_diff_vs_{against}": mean, f"se_vs_{against}": se, f"median_diff_vs_{against}": median}


def seen(scores, method, against, judge):
    """What a held-out judge sees of the guide's gain: of the paired starts where the guide finds
    method's image nearer its prompt than against's, the share where judge does too (ties half):
    (share or None, those starts). Near 1: the judge sees what the guide gains; at or below 1/2:
    the method fits the guide's own patterns."""
    guide, theirs = paired(scores, method, against, GUIDE), paired(scores, method, against, judge)
    gained = [mine for (a, b), mine in zip(guide, theirs) if a < b]
    return (won(gained) / len(gained) if gained else None), len(gained)


def fine_detail(scores, method):
    """A method's images' mean share of fine detail (scoring.high_frequency), or None where unscored."""
    values = [s["high_frequency"] for s in scores if s["method"] == method and s.get("high_frequency") is not None]
    return statistics.fmean(values) if values else None


def summarize(scores, methods, baselines, judges, bake_seconds=None):
    """Per method (by name) and judge: the mean and spread of its distances, and against each
    baseline among the methods its win rate (with a 95% interval) and the paired difference
    (mean, standard error, median), and under a held-out judge what it sees of the guide's gain
    (seen: [share, starts]); its readout (readout_entry); per method, its images' share of fine
    detail (high_frequency), its readout by pixels (PIXELS, where its prompts are the drawn
    world's) and, for one that replays bakes, their mean seconds (bake_seconds: {method: seconds
    or None})."""
    summary = {}
    for method in methods:
        summary[method] = {}
        for judge in judges:
            values = [s[judge] for s in scores if s["method"] == method]
            entry = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
            for against in baselines:  # against itself: one half, all ties, no difference
                entry.update(versus_entry(scores, method, against, judge))
                if judge != GUIDE:
                    entry[f"seen_vs_{against}"] = list(seen(scores, method, against, judge))
            summary[method][judge] = {**entry, **readout_entry(scores, method, baselines, judge)}
        if fine_detail(scores, method) is not None:
            summary[method]["high_frequency"] = fine_detail(scores, method)
        if any(PIXELS in (s.get("readout") or {}) for s in scores if s["method"] == method):
            summary[method][PIXELS] = readout_entry(scores, method, baselines, PIXELS)
        if bake_seconds is not None and method in bake_seconds:
            summary[method]["bake_seconds"] = bake_seconds[method]
    return summary


def agreement(scores, judges):
    """How often two judges agree on which of two images of the same prompt and start is nearer it:
    {"A / B": share} for each pair of judges, over every pair of methods on every start (pairs that
    either judge ties are left out)."""
    starts = {}
    for s in scores:
        starts.setdefault((s["prompt"], s["start"]), []).append(s)
    found = {}
    for a, b in itertools.combinations(judges, 2):
        same = [(x[a] < y[a]) == (x[b] < y[b]) for group in starts.values()
                for x, y in itertools.combinations(group, 2) if x[a] != y[a] and x[b] != y[b]]
        found[f"{a} / {b}"] = statistics.fmean(same) if same else None
    return found


def versus(scores, other, method, judge):
    """How often a method's image under one parametrization (scores) beats the same method's under
    another (other) from the same start: (wins, pairs), ties half."""
    theirs = {(s["prompt"], s["start"]): s[judge] for s in other if s["method"] == method}
    mine = [(s[judge], theirs[s["prompt"], s["start"]]) for s in scores
            if s["method"] == method and (s["prompt"], s["start"]) in theirs]
    return won(mine), len(mine)


def compare_params(runs, methods, judges, base="rgb"):
    """Add to each parametrization's summary its win rate (and interval) against base's, method by
    method, on paired starts. runs: {param: {"scores", "summary"}}, base among them."""
    for param, found in runs.items():
        for method in methods:
            for judge in judges:
                won, n = versus(found["scores"], runs[base]["scores"], method, judge)
                entry = found["summary"][method][judge]
                entry[f"win_rate_vs_{base}"] = won / n if n else None
                entry[f"interval_vs_{base}"] = interval(won, n)


def mcnemar(b, c):
    """The exact two-sided McNemar p of paired right/wrong readouts: b pairs where the first reads
    right and the second wrong, c the reverse. Where the two do not differ, each of those b + c
    pairs falls either way with chance 1/2: a binomial test.

    E.g. b = 8, c = 1: p = 2 * (C(9, 0) + C(9, 1)) / 2**9 = 2 * 10 / 512 = 0.039.
    """
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)


def readout_entry(scores, method, baselines, judge):
    """A method's readout under one judge: the share of its images the judge reads as their prompt
    (with a 95% Wilson interval), for scene prompts the share by kind of rival, and, against each
    baseline on paired starts, [b, c, p]: the starts where this reads right and that wrong, the
    reverse, and McNemar's exact p. Scores without a readout (a prompt outside the drawn world)
    are left out; none left: rate None."""
    mine = {(s["prompt"], s["start"]): s["readout"][judge] for s in scores
            if s["method"] == method and s.get("readout") is not None}
    if not mine:
        return {"readout": None, "readout_interval": None}
    right = sum(mine.values())
    entry = {"readout": right / len(mine), "readout_interval": interval(right, len(mine))}
    kinds = [s["readout_by_kind"][judge] for s in scores
             if s["method"] == method and judge in (s.get("readout_by_kind") or {})]
    if kinds:  # scenes: against each kind of rival apart (binding: colour, shape, place; recall: drop)
        entry["readout_by_kind"] = {kind: statistics.fmean(k[kind] for k in kinds if kind in k)
                                    for kind in dict.fromkeys(kind for k in kinds for kind in k)}
    for against in baselines:
        theirs = {(s["prompt"], s["start"]): s["readout"][judge] for s in scores
                  if s["method"] == against and s.get("readout") is not None}
        both = [(mine[k], theirs[k]) for k in mine if k in theirs]
        b = sum(1 for x, y in both if x and not y)
        c = sum(1 for x, y in both if y and not x)
        entry[f"readout_vs_{against}"] = [b, c, mcnemar(b, c)]
    return entry
