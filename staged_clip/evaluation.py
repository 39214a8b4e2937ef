"""Measuring the method: each prompt baked by each estimator, then every method's image made from
held-out starts, the same for every method, and scored by the guide and a held-out judge."""

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import baked, baking, batch, losses, models, output, prompts, render, report, stats
from .methods import BASELINES, Case, Method, methods_of, recipe

START_SEED = 2**62  # the evaluation's starts come from seeds no bake uses (bakes: --seed + i, below 2**62)
MAX_STARTS = 2**20  # starts per prompt: start (i, j) has seed START_SEED + i * MAX_STARTS + j


@dataclass(frozen=True)
class Plan:
    """What an evaluation compares: its prompts; the estimators whose bakes it replays, and whose
    bakes auto-microwaving composes (k nearest, the prompt at weight mix); the parametrizations;
    starts per prompt; where bakes go; the guide's and the judge's model names."""

    prompts: list
    estimators: list
    auto_from: str
    params: list
    seeds: int
    k: int
    mix: float
    baked_dir: str
    guide_model: str
    score_model: str


def bake_all(baker, settings, plan, out, folder):
    """{(i, estimator): bake dict} for every prompt and estimator, baking what is missing.

    Prompt i is baked with seed settings.seed + i, into folder/<estimator>/; a bake there is
    reused when made with the same settings and seed. out: the previews' output.Output.
    """
    bakes = {}
    for estimator in plan.estimators:
        jobs = [(i, text, baked.baked_path(Path(folder) / estimator, text)) for i, text in enumerate(plan.prompts)]
        own = settings.replace(meta_grad=estimator)
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


def cases_of(model, scorer, plan, bakes):
    """Each prompt's Case: its embeddings, its bakes, and the k nearest bakes of the other prompts
    by plan.auto_from (leave one out)."""
    cases = []
    for i, text in enumerate(plan.prompts):
        prompt = prompts.load_prompt(model, text)
        others = [bakes[j, plan.auto_from] for j in range(len(plan.prompts)) if j != i]
        near = baked.nearest_bakes(model, prompt.embed, others, plan.k, "the other prompts' bakes")
        print(f"{text!r}: auto-microwaves from {[b['prompt'] for _, b in near]}")
        cases.append(Case(i, prompt, prompts.load_prompt(scorer, text).embed,
                          {e: bakes[i, e] for e in plan.estimators}, near))
    return cases


def start_seed(i, j):
    return START_SEED + i * MAX_STARTS + j


def start_image(i, j, size, device):
    """Start j of prompt i: the same for every method, drawn from a seed no bake uses."""
    generator = torch.Generator().manual_seed(start_seed(i, j))
    return torch.randn(1, 3, size, size, generator=generator).to(device)


def shown(z):
    """The images as saved (quantized), at their own size: [n, 3, H, W]."""
    return output.quantize(losses.to_image(z.detach().float()))


def score(model, images, prompt_embed):
    """Spherical distance of each image [n, 3, H, W] (resized to the model's side) to a prompt: [n]."""
    resized = F.interpolate(images, size=(model.size, model.size), mode="bilinear", antialias=True,
                            align_corners=False)
    with torch.no_grad():
        return losses.spherical_distance(prompts.embed_images(model, resized), prompt_embed)


def run_methods(model, scorer, shift, cases, settings, plan, methods):
    """Every method (methods.Method) from every start: (scores, one image per prompt and method for
    the grid).

    Each (prompt, start) begins every method from the same image and random state; size
    and cutouts are the bakes'. A progress bar only on a terminal.
    """
    from tqdm import tqdm
    scores, grid_images = [], []
    bar = tqdm(total=len(cases) * plan.seeds * len(methods), desc="evaluate", dynamic_ncols=True,
               disable=not sys.stderr.isatty())
    for case in cases:
        config = next(iter(case.bakes.values()))["config"]
        own = settings.replace(size=config["size"], cutn=config["cutn"])
        finals = {}
        for j in range(plan.seeds):
            start = start_image(case.index, j, own.size, model.device)
            for method in methods:
                torch.manual_seed(start_seed(case.index, j))  # the splice follows the start
                targets, renderer, scale = recipe(method, case, shift, own, plan.mix)
                torch.manual_seed(start_seed(case.index, j))  # the same random cutouts for every method
                finals.setdefault(method.name, []).append(render.rollout(model, start, targets, renderer,
                                                                         lr_scale=scale))
                bar.update(1)
        for method in methods:
            images = shown(torch.cat(finals[method.name]))  # [seeds, 3, H, W]: each image, both judges
            found = {"guide": score(model, images, case.prompt.embed).tolist(),
                     "scorer": score(scorer, images, case.judge_embed).tolist()}
            scores += [{"prompt": case.prompt.text, "start": j, "method": method.name,
                        **{judge: found[judge][j] for judge in stats.JUDGES}} for j in range(plan.seeds)]
        grid_images.append({m.name: output.to_pixels(finals[m.name][0]) for m in methods})
    bar.close()
    return scores, grid_images


def stage_distances(bakes, cases):
    """Mean spherical distance of each estimator's stages to their prompt (guide model)."""
    found = {}
    for (i, estimator), bake in bakes.items():
        p = cases[i].prompt.embed
        found.setdefault(estimator, []).append(losses.spherical_distance(bake["stages"].to(p.device), p).mean().item())
    return {estimator: statistics.fmean(values) for estimator, values in found.items()}


def summary_of(scores, methods, baselines, bakes):
    """stats.summarize's summary of methods against baselines (Methods among them), with each
    replayed estimator's mean bake seconds."""
    seconds = {}
    for method in methods:
        if method.kind == "microwave":
            found = [b.get("seconds") for (_, e), b in bakes.items() if e == method.estimator]
            seconds[method.name] = None if None in found else statistics.fmean(found)
    return stats.summarize(scores, [m.name for m in methods], [b.name for b in baselines], seconds)


def evaluate_one(baker, scorer, settings, plan, out):
    """The evaluation at one parametrization (settings.param): (the JSON's result, the table, and
    per prompt, the first start's image by each method). Bakes of a parametrization other than
    rgb go to plan.baked_dir/<param>/."""
    folder = Path(plan.baked_dir) if settings.param == "rgb" else Path(plan.baked_dir) / settings.param
    bakes = bake_all(baker, settings, plan, out, folder)
    cases = cases_of(baker.model, scorer, plan, bakes)
    methods = methods_of(plan.estimators, plan.auto_from, settings.param)
    baselines = [m for m in methods if m.name in {b.name for b in BASELINES}]
    scores, images = run_methods(baker.model, scorer, baker.shift, cases, settings, plan, methods)
    summary, distances = summary_of(scores, methods, baselines, bakes), stage_distances(bakes, cases)
    names = [m.name for m in methods]
    result = {"prompts": plan.prompts, "param": settings.param, "pyramid_levels": settings.pyramid_levels,
              "clip_model": plan.guide_model, "score_model": plan.score_model, "seeds": plan.seeds,
              "seed": settings.seed, "methods": names, "auto_from": plan.auto_from,
              "threads": settings.threads,  # the rounding, and so (the renderer being chaotic) the scores, follow it
              "bake_config": {e: {k: v for k, v in bakes[0, e]["config"].items() if k != "seed"}
                              for e in plan.estimators},
              "bakes": {c.prompt.text: {e: str(b["path"]) for e, b in c.bakes.items()} for c in cases},
              "leave_one_out": {c.prompt.text: [str(b["path"]) for _, b in c.near] for c in cases},
              "stage_distance": distances, "scores": scores, "summary": summary}
    return result, report.markdown_table(summary, distances, methods, baselines, plan), images


def evaluate(baker, settings, plan, out):
    """The evaluation of every parametrization of the plan in turn, on the same prompts and starts:
    (the JSON's result, the table, {path: grid image}). out: the grid's output.Output (its path:
    the first parametrization's grid), also the template of the bakes' previews."""
    scorer = models.load_clip(plan.score_model, baker.model.device)
    scorer.set_precision(settings.precision)
    runs = {}
    for param in plan.params:
        runs[param] = evaluate_one(baker, scorer, settings.replace(param=param), plan, out)
        if len(plan.params) > 1:
            print(f"evaluated {param}")
    if len(plan.params) == 1:
        result, table, images = runs[plan.params[0]]
        return result, table, {out.path: report.make_grid(plan.prompts, images, result["methods"])}
    return params_answer(runs, plan, out.path)


def params_answer(runs, plan, path):
    """evaluate's answer for several parametrizations: one table comparing each with rgb (or the
    first) method by method, a grid each, and a grid of normal and the auto_from bake's replay in
    each side by side (OUT_params.png)."""
    base = "rgb" if "rgb" in runs else plan.params[0]
    found = {param: result for param, (result, _, _) in runs.items()}
    names = found[base]["methods"]
    stats.compare_params(found, names, base)
    table = report.params_table(found, names, plan, base)
    table += "".join(f"\n## {param}\n\n{own}" for param, (_, own, _) in runs.items())
    grids = {report.grid_path(path, param, base): report.make_grid(plan.prompts, images, found[param]["methods"])
             for param, (_, _, images) in runs.items()}
    shown_methods = [Method("normal").name, Method("microwave", plan.auto_from).name]
    columns = [f"{param}: {method}" for method in shown_methods for param in runs]
    side = [{f"{param}: {method}": runs[param][2][r][method] for method in shown_methods for param in runs}
            for r in range(len(plan.prompts))]
    grids[report.grid_path(path, "params", base)] = report.make_grid(plan.prompts, side, columns)
    return {"params": found, "base": base}, table, grids
