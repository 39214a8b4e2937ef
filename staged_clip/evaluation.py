"""Measuring the method: each prompt baked by each estimator, then every method's image made from
held-out starts, the same for every method, and scored by the guide and the held-out judges."""

import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import (baked, baking, batch, cutouts, knobs, losses, models, output, palettes, prompts, readout, render, report,
               scoring, stats, tuning)
from .methods import STRUCTURE, TUNED, Case, Method, baselines_of, methods_of, recipe


@dataclass(frozen=True)
class Plan:
    """What an evaluation compares: its prompts (and the file they came from); the estimators whose
    bakes it replays, and whose bakes auto-microwaving composes (k nearest, the prompt at weight
    mix); the parametrizations; starts per prompt; where bakes go; the guide's model name and
    the held-out judges'; the cutouts every method renders with (None: the bakes'); the
    learning-rate sweep's prompts (None: the evaluated ones, from other starts), starts and rates;
    a shared bake (its path) to replay as a method of its own and to start every bake from; and
    the steps a stage every replay runs (None: the bakes' own), each plain baseline as many in all,
    or several such (budgets), each evaluated in turn on the same prompts and starts."""

    prompts: list
    estimators: list
    auto_from: str
    params: list
    seeds: int
    k: int
    mix: float
    baked_dir: str
    guide_model: str
    score_models: tuple
    replay_cutn: int = None
    tune_prompts: list = None
    tune_starts: int = 2
    tune_lrs: tuple = tuning.LRS
    source: str = None
    shared: str = None
    palettes: list = None  # palette variants (palettes.variant) evaluated in turn instead of the parametrizations
    methods: list = None  # the methods' names to run (None: all)
    replay_steps: int = None
    budgets: tuple = None  # several replay steps a stage, evaluated in turn (the step-budget curve)

    def variants(self):
        """{name: the settings it changes} of what the evaluation runs in turn: each palette variant,
        or each parametrization."""
        if self.palettes:
            return {name: palettes.variant(name) for name in self.palettes}
        return {param: {"param": param} for param in self.params}


def bake_all(baker, settings, plan, out, folder):
    """{(i, estimator): bake dict} for every prompt and estimator, baking what is missing.

    Prompt i is baked with seed settings.seed + i, into folder/<estimator>/ (started from the
    shared bake baker.init where there is one: folder/<estimator>+<its name>/); a bake there is
    reused when made with the same settings and seed. out: the previews' output.Output.
    """
    bakes = {}
    for estimator in plan.estimators:
        under = estimator if baker.init is None else f"{estimator}+{Path(baker.init['path']).stem}"
        jobs = [(i, text, baked.baked_path(Path(folder) / under, text)) for i, text in enumerate(plan.prompts)]
        own = settings.replace(meta_grad=estimator)
        if baker.init is not None:
            own = baking.starting_from(own, baker.init)
        try:
            _, skipped, _ = batch.bake_list(baker, own, jobs, out, same_seed=True, isolate=False)
        except baking.BakeInterrupted as stop:
            stop.rest = "; run again to go on"
            raise
        for i, text, path in jobs:
            if text in skipped:
                print(f"reusing {path}")
            bakes[i, estimator] = baked.load_baked(path)
    return bakes


def cases_of(model, judges, plan, bakes, shared=None):
    """Each prompt's Case: its embeddings, its bakes, the k nearest bakes of the other prompts by
    plan.auto_from (leave one out), its parts, the shared bake (a dict or None) and its rivals."""
    cases = []
    stages = len(bakes[0, plan.estimators[0]]["stages"])
    for i, text in enumerate(plan.prompts):
        prompt = prompts.load_prompt(model, text)
        others = [bakes[j, plan.auto_from] for j in range(len(plan.prompts)) if j != i]
        near = baked.nearest_bakes(model, prompt.embed, others, plan.k, "the other prompts' bakes")
        print(f"{text!r}: auto-microwaves from {[b['prompt'] for _, b in near]}")
        embeds = {name: prompts.load_prompt(judge, text).embed for name, judge in judges.items()}
        parts = knobs.part_embeds(model, prompt, stages) if prompt.kind == "text" else None
        cases.append(Case(i, prompt, embeds, {e: bakes[i, e] for e in plan.estimators}, near, parts, shared,
                          rivals_of(text, {stats.GUIDE: model, **judges})))
    return cases


def rivals_of(text, judges):
    """A prompt's rival captions embedded by each judge ({name: model}): {name: (embeddings [R, D],
    the prompt's index, each caption's kind)}, or None for a prompt outside the drawn world
    (readout.rivals)."""
    found = readout.rivals(text)
    if found is None:
        return None
    captions, index, kinds = found
    return {name: (prompts.embed_texts(judge, list(captions)), index, kinds) for name, judge in judges.items()}


def renderer_of(settings, config, plan):
    """The renderer's settings for an evaluation's images: the bakes' size, and their cutouts and
    steps a stage unless plan.replay_cutn and plan.replay_steps say otherwise."""
    return settings.replace(size=config["size"], height=config.get("height"), cutn=plan.replay_cutn or config["cutn"],
                            steps=plan.replay_steps or config["steps"])


def run_methods(model, judges, shift, cases, settings, plan, methods):
    """Every method (methods.Method) from every start: (scores, one image per prompt and method for
    the grid). A score holds the image's distance under the guide and under each judge.

    A prompt's starts are rendered as one batch by each method, every method beginning from the
    same images and the same random cutouts (each start's from its own generator, seeded with
    the start's seed: the run that start alone would make); size is the bakes', cutouts
    plan.replay_cutn or the bakes'. judges: {name: held-out model}. A progress bar only on a
    terminal.
    """
    from tqdm import tqdm
    scores, grid_images = [], []
    bar = tqdm(total=len(cases) * len(methods), desc="evaluate", dynamic_ncols=True, disable=not sys.stderr.isatty())
    for case in cases:
        own = renderer_of(settings, next(iter(case.bakes.values()))["config"], plan)
        seeds = [scoring.start_seed(case.index, j) for j in range(plan.seeds)]
        starts = scoring.start_images(seeds, own.shape, model.device)  # [seeds, 3, H, W]
        finals = {}
        for method in methods:
            targets, renderer, scale = batch_recipe(method, case, shift, own, plan.mix, seeds)
            draw = cutouts.draws_from([torch.Generator(model.device).manual_seed(seed) for seed in seeds])
            finals[method.name] = render.rollout(model, starts, targets, renderer, lr_scale=scale, draw=draw)
            images = scoring.shown(finals[method.name], own.palette)  # [seeds, 3, H, W]: each image, every judge
            scores += scored(case, method.name, images, {stats.GUIDE: model, **judges})
            bar.update(1)
        grid_images.append({m.name: output.to_pixels(finals[m.name][:1], palette=own.palette) for m in methods})
    bar.close()
    return scores, grid_images


def batch_recipe(method, case, shift, settings, mix, seeds):
    """What a method renders for a case from a batch of starts (their seeds): (targets [S, n, D],
    the renderer's settings, learning-rate multipliers [S] or [S, n] or None). Each start's recipe
    is drawn after seeding with its seed (auto's splice follows the start)."""
    made = []
    for seed in seeds:
        torch.manual_seed(seed)
        made.append(recipe(method, case, shift, settings, mix))
    targets = torch.stack([m[0] for m in made], dim=1)  # [S, n, D]
    scales = [m[2] for m in made]
    if scales[0] is None or all(torch.equal(s, scales[0]) for s in scales):
        return targets, made[0][1], scales[0]  # one multiplier a stage: the fast path's AdamW
    return targets, made[0][1], torch.stack(scales, dim=1)  # [S, n]


def scored(case, method, images, judges):
    """The scores of a case's images [seeds, 3, H, W] by one method, a start each: under every judge
    ({name: model}, the guide as "guide"), the distance to the prompt and the readout (for a prompt of
    the drawn world, also by its pixels: readout.pixel_reads, as stats.PIXELS); and each image's
    share of fine detail (scoring.high_frequency)."""
    found, read, kinds = {}, {}, {}
    for name, model in judges.items():
        embed = case.prompt.embed if name == stats.GUIDE else case.judge_embeds[name]
        distances, read[name], kinds[name] = scoring.judge(model, images, embed, case.rivals and case.rivals[name])
        found[name] = distances.tolist()
    fine = scoring.high_frequency(images).tolist()
    if case.rivals is not None:  # and by its pixels: each named colour on its named side
        read[stats.PIXELS] = readout.pixel_reads(images, case.prompt.text)
    scores = [{"prompt": case.prompt.text, "start": j, "method": method, **{name: found[name][j] for name in found},
               "readout": None if case.rivals is None else {name: bool(read[name][j]) for name in read},
               "high_frequency": fine[j]} for j in range(len(images))]
    if case.rivals is not None and readout.OBJECT not in next(iter(case.rivals.values()))[2]:  # a scene
        for j, score in enumerate(scores):
            score["readout_by_kind"] = {name: {kind: bool(right[j]) for kind, right in kinds[name].items()}
                                        for name in kinds}
    return scores


def stage_distances(bakes, cases):
    """Mean spherical distance of each estimator's stages to their prompt (guide model)."""
    found = {}
    for (i, estimator), bake in bakes.items():
        p = cases[i].prompt.embed
        found.setdefault(estimator, []).append(losses.spherical_distance(bake["stages"].to(p.device), p).mean().item())
    return {estimator: statistics.fmean(values) for estimator, values in found.items()}


def summary_of(scores, methods, judges, bakes, shared=None):
    """stats.summarize's summary of methods against the baselines among them, under each judge, with
    each replayed estimator's mean bake seconds (and the shared bake's, once for every prompt)."""
    seconds = {"shared": shared.get("seconds")} if shared is not None else {}
    for method in methods:
        if method.kind == "microwave":
            found = [b.get("seconds") for (_, e), b in bakes.items() if e == method.estimator]
            seconds[method.name] = None if None in found else statistics.fmean(found)
    names = [b.name for b in baselines_of(methods)]
    return stats.summarize(scores, [m.name for m in methods], names, judges, seconds)


def tune(baker, settings, plan, bakes):
    """Each tuned baseline's sweep (tuning.sweep: normal_tuned always, the others where evaluated)
    at the evaluation's renderer, on plan.tune_prompts (or the evaluated prompts, from the sweep's
    own starts), guided and judged by the guide alone: {name: the sweep's record}. The structure
    schedules (methods.STRUCTURE) run at restart_tuned's rate: it is swept for them too."""
    first = bakes[0, plan.estimators[0]]
    own = renderer_of(settings, first["config"], plan)
    shape = (len(first["stages"]), own.steps)
    return {name: tuning.sweep(baker.model, baker.shift, plan.tune_prompts or plan.prompts, own, shape,
                               plan.tune_starts, plan.tune_lrs, name)
            for name in TUNED
            if name == "normal_tuned" or plan.methods is None or name in plan.methods
            or (name == "restart_tuned" and set(plan.methods) & set(STRUCTURE))}


def evaluate_one(baker, judges, settings, plan, out, under=None):
    """The evaluation at one parametrization (settings.param) or palette: (the JSON's result, the
    table, and per prompt, the first start's image by each method). Bakes go to
    plan.baked_dir/<under>/ where given, else, for a parametrization other than rgb, to
    plan.baked_dir/<param>/. judges: {name: held-out model}."""
    folder = Path(plan.baked_dir) if settings.param == "rgb" else Path(plan.baked_dir) / settings.param
    folder = folder if under is None else Path(plan.baked_dir) / under
    began = time.perf_counter()
    bakes = bake_all(baker, settings, plan, out, folder)
    cases = cases_of(baker.model, judges, plan, bakes, baker.init)
    sweep_began = time.perf_counter()
    tuned = tune(baker, settings, plan, bakes)
    counts = [int(name.split("_")[1]) for name in plan.methods or () if name.startswith("stages_")]
    methods = methods_of(plan.estimators, plan.auto_from, settings.param, {k: v["lr"] for k, v in tuned.items()},
                         baker.init is not None, counts)
    methods = [m for m in methods if plan.methods is None or m.name in plan.methods]
    methods_began = time.perf_counter()
    scores, images = run_methods(baker.model, judges, baker.shift, cases, settings, plan, methods)
    seconds = {"bakes": sweep_began - began, "sweep": methods_began - sweep_began,
               "methods": time.perf_counter() - methods_began}
    print(f"timing: bakes {seconds['bakes']:.0f} s, the learning-rate sweep {seconds['sweep']:.0f} s, "
          f"{len(scores)} images by every method {seconds['methods']:.0f} s")
    names, judge_names = [m.name for m in methods], [stats.GUIDE, *judges]
    config = bakes[0, plan.estimators[0]]["config"]
    result = {"prompts": plan.prompts, "prompts_file": plan.source, "param": settings.param,
              "pyramid_levels": settings.pyramid_levels, "palette": settings.palette,
              "palette_weight": settings.palette_weight, "palette_hard": settings.palette_hard,
              "clip_model": plan.guide_model,
              "score_models": list(plan.score_models), "judges": judge_names, "seeds": plan.seeds,
              "seed": settings.seed, "methods": names, "baselines": [b.name for b in baselines_of(methods)],
              "auto_from": plan.auto_from, "bake_cutn": config["cutn"],
              "size": renderer_of(settings, config, plan).size_text,
              "replay_cutn": renderer_of(settings, config, plan).cutn, "bake_steps": config["steps"],
              "replay_steps": renderer_of(settings, config, plan).steps, "stages": len(bakes[0, plan.estimators[0]]["stages"]),
              "normal_tuned": tuned["normal_tuned"], "tuned": tuned,
              "seconds": seconds, "threads": settings.threads,  # the rounding, and so (the renderer being chaotic) the scores, follow it
              "bake_config": {e: {k: v for k, v in bakes[0, e]["config"].items() if k != "seed"}
                              for e in plan.estimators},
              "bakes": {c.prompt.text: {e: str(b["path"]) for e, b in c.bakes.items()} for c in cases},
              "leave_one_out": {c.prompt.text: [str(b["path"]) for _, b in c.near] for c in cases},
              "stage_distance": stage_distances(bakes, cases), "scores": scores,
              "shared": plan.shared, "summary": summary_of(scores, methods, judge_names, bakes, baker.init),
              "agreement": stats.agreement(scores, judge_names)}
    return result, report.markdown_table(result, methods, plan), images


def load_judges(plan, device, precision):
    """{name: the held-out model} for each of plan.score_models, at the guide's precision."""
    judges = {}
    for name in plan.score_models:
        judges[name] = models.load_clip(name, device)
        judges[name].set_precision(precision)
    return judges


def evaluate(baker, settings, plan, out):
    """The evaluation of every parametrization of the plan in turn, on the same prompts and starts:
    (the JSON's result, the table, {path: grid image}). out: the grid's output.Output (its path:
    the first parametrization's grid), also the template of the bakes' previews."""
    judges = load_judges(plan, baker.model.device, settings.precision)
    if plan.shared is not None:
        baker = dataclasses.replace(baker, init=baked.load_baked(plan.shared, baker.model.dim))  # evaluate.py checked its kind
    if plan.budgets:
        runs = {steps: evaluate_one(baker, judges, settings, dataclasses.replace(plan, replay_steps=steps), out)
                for steps in plan.budgets}
        return budgets_answer(runs, plan, out.path)
    runs, variants = {}, plan.variants()
    for name, changes in variants.items():
        under = name.replace(":", "_") if plan.palettes and changes["palette"] is not None else None
        runs[name] = evaluate_one(baker, judges, settings.replace(**changes), plan, out, under)
        if len(variants) > 1:
            print(f"evaluated {name}")
    if len(variants) == 1:
        result, table, images = next(iter(runs.values()))
        return result, table, {out.path: report.make_grid(plan.prompts, images, result["methods"],
                                                          report.captions(result))}
    return params_answer(runs, plan, out.path)


def params_answer(runs, plan, path):
    """evaluate's answer for several parametrizations (or palettes): one table comparing each with rgb
    (or the first) method by method, a grid each, and a grid of normal and the auto_from bake's
    replay (or the first two methods) in each side by side (OUT_params.png)."""
    base = "rgb" if "rgb" in runs else next(iter(runs))
    found = {param: result for param, (result, _, _) in runs.items()}
    names = found[base]["methods"]
    stats.compare_params(found, names, found[base]["judges"], base)
    table = report.params_table(found, names, plan, base)
    if len(found) > 2:
        table += "\n" + report.pairs_table(found, names, base)
    table += "".join(f"\n## {param}\n\n{own}" for param, (_, own, _) in runs.items())
    grids = {report.grid_path(path, param, base): report.make_grid(plan.prompts, images, found[param]["methods"],
                                                                   report.captions(found[param]))
             for param, (_, _, images) in runs.items()}
    shown_methods = [m for m in (Method("normal").name, Method("microwave", plan.auto_from).name) if m in names]
    shown_methods = shown_methods or names[:2]
    columns = [f"{param}: {method}" for method in shown_methods for param in runs]
    side = [{f"{param}: {method}": runs[param][2][r][method] for method in shown_methods for param in runs}
            for r in range(len(plan.prompts))]
    grids[report.grid_path(path, "params", base)] = report.make_grid(plan.prompts, side, columns)
    return {"params": found, "base": base}, table, grids


def budgets_answer(runs, plan, path):
    """evaluate's answer for several step budgets: ({"budgets": {steps a stage: result}}, a table of
    readout and distance by total steps, {path: the curve (report.budget_curve), and OUT_<N>steps.png:
    each budget's grid})."""
    found = {steps: result for steps, (result, _, _) in runs.items()}
    first = next(iter(found.values()))
    table = report.budget_table(found, first["methods"], first["baselines"], first["judges"])
    table += "".join(f"\n## {r['stages'] * steps} steps in all ({r['stages']} x {steps})\n\n{own}"
                     for steps, (r, own, _) in runs.items())
    grids = {path: report.budget_curve(found, first["methods"], first["judges"])}
    for steps, (result, _, images) in runs.items():
        grids[report.grid_path(path, f"{result['stages'] * steps}steps", None)] = report.make_grid(
            plan.prompts, images, result["methods"], report.captions(result))
    return {"budgets": {str(steps): result for steps, result in found.items()}}, table, grids
