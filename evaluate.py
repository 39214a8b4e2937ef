#!/usr/bin/env python3
"""Measure the method: bake each prompt with each estimator, then compare the ways of making its image.

For every prompt of a list, bake it with each --meta-grads estimator (the exact
meta-gradient "unrolled", the reference's "none", evolution strategies "es"), or reuse
matching bakes from --baked-dir. Then, from N random starts that no bake saw, the same
start for every method, make an image by:
  normal               plain optimization, the same total steps, size and cutouts;
  microwave_<est>      replaying the bake of each estimator;
  auto_mean            auto-microwaving from the other prompts' bakes (this prompt's
  auto_splice          own left out; --auto-from's), per-stage mean or a random splice.
Each final image (as saved: quantized) is scored by its spherical distance to the prompt
under the guiding model and under a held-out scorer model (lower is better). Writes a
markdown table (win rates with 95% intervals), a JSON file with every score, and a grid
of images (prompts x methods). --params runs it all once per image parametrization, on
the same prompts and starts, and compares each with rgb method by method (one table, a
grid per parametrization: OUT_<param>.png, and OUT_params.png with normal and a replay in
each side by side). --chaos instead measures how chaotic the
renderer is.

Examples:
  python evaluate.py prompts_toy.txt --clip-model toy --seeds 5 --size 64 --stages 5 --steps 10 --meta-steps 12
  python evaluate.py prompts_toy.txt --clip-model toy --first 4 --size 64 --stages 5 --steps 10 --chaos
  python evaluate.py prompts_toy.txt --clip-model toy --seeds 5 --size 64 --stages 5 --steps 10 --params rgb,pyramid,fourier
"""

import argparse
import json
import math
from pathlib import Path

import common
from common import evaluation


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompts_file", nargs="?", default="prompts.txt", help="file of prompts, one a line")
    common.add_common_args(p, "bake.py", out="evaluation.png", progress=False)
    common.add_bake_args(p, meta_grad=False)
    p.set_defaults(baked_dir="baked/evaluate", wandb="disabled", seed=0)  # an evaluation repeats by default
    g = p.add_argument_group("evaluation options")
    g.add_argument("--score-model", default=None,
                   help="the held-out scorer: another CLIP (default: toy-scorer when guiding with toy; "
                        "otherwise required, e.g. ViT-B/16)")
    g.add_argument("--seeds", type=common.number(int, lambda v: 1 <= v <= evaluation.MAX_STARTS,
                                                 f"must be from 1 to {evaluation.MAX_STARTS}"),
                   default=5, help="random starts per prompt")
    g.add_argument("--first", type=common.positive_int, default=None, metavar="N",
                   help="evaluate only the first N prompts of the file")
    g.add_argument("--k", type=common.positive_int, default=2, help="nearest bakes auto-microwave uses")
    g.add_argument("--mix", type=common.unit_float, default=0.7, help="auto-microwave's prompt weight")
    g.add_argument("--meta-grads", type=estimators, default=",".join(common.META_GRADS), metavar="LIST",
                   help="the estimators to bake with and compare, comma-separated")
    g.add_argument("--auto-from", choices=common.META_GRADS, default=None,
                   help="whose bakes auto-microwaving composes (default: the default --meta-grad's if listed, "
                        "else the first listed)")
    g.add_argument("--chaos", action="store_true",
                   help="instead of evaluating: the chaos probe of the renderer on each prompt (loss "
                        "differences per perturbation size, spread across starts, meta-gradient agreement)")
    g.add_argument("--sigmas", type=sigma_list, default=",".join(f"{s:g}" for s in common.chaos.SIGMAS),
                   metavar="LIST", help="the chaos probe's perturbation sizes, radians, comma-separated")
    g.add_argument("--pairs", type=common.positive_int, default=8, help="the chaos probe's pairs per size")
    g.add_argument("--params", type=param_list, default=None, metavar="LIST",
                   help="image parametrizations to evaluate in turn, comma-separated (default: --param's); "
                        "bakes of each but rgb go to BAKED_DIR/<param>/")
    g.add_argument("--json", default="evaluation.json", metavar="PATH", help="every score, and the summary")
    g.add_argument("--table", default="evaluation.md", metavar="PATH", help="the markdown table")
    args = p.parse_args(argv)
    if args.score_model is None:
        if args.clip_model != "toy":
            p.error("--score-model is needed: a second CLIP model to judge the images (e.g. ViT-B/16)")
        args.score_model = "toy-scorer"
    if args.seed >= evaluation.START_SEED - evaluation.MAX_STARTS:
        p.error("--seed must be below 2**62 - 2**20 (seeds above are the evaluation's starts)")
    args.params = args.params or [args.param]
    if args.chaos and len(args.params) > 1:
        p.error("--chaos probes one parametrization: give --param instead of --params")
    default = common.Settings().meta_grad
    args.auto_from = args.auto_from or (default if default in args.meta_grads else args.meta_grads[0])
    if args.auto_from not in args.meta_grads:
        p.error(f"--auto-from {args.auto_from} is not among --meta-grads {','.join(args.meta_grads)}")
    return args


def estimators(text):
    """--meta-grads: a comma-separated list of estimators."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in common.META_GRADS for n in names) or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list from {', '.join(common.META_GRADS)}")
    return names


def param_list(text):
    """--params: a comma-separated list of image parametrizations."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in common.PARAMS for n in names) or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list from {', '.join(common.PARAMS)}")
    return names


def sigma_list(text):
    """--sigmas: comma-separated sizes in radians, each from 0 to 1.5."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 <= v <= 1.5 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers from 0 to 1.5, e.g. 0,0.01,0.1")
    return values


def chaos(args, model, settings, shift, texts):
    """The chaos probe on each prompt: print and write its table and JSON."""
    rows = []
    for text in texts:
        rows.append(common.chaos.probe(model, common.load_prompt(model, text), shift, settings, args.sigmas,
                                       args.pairs, settings.seed))
        print(f"probed {text!r}", flush=True)
    table, mean = common.chaos.markdown(rows, args.sigmas, settings)
    common.write_text(args.json, json.dumps({"settings": settings.config(), "rows": rows, "mean": mean}, indent=2,
                                            default=str) + "\n")
    common.write_text(args.table, table)
    print(table)
    print(f"wrote {args.table} and {args.json}")


@common.cli
def main(argv=None):
    args = parse_args(argv)
    wandb = common.WandbLog.from_args(args)
    texts = common.read_prompts(args.prompts_file)[:args.first]
    if len(texts) < 2 and not args.chaos:
        raise common.UserError(f"{args.prompts_file} holds one prompt: leave-one-out needs at least two")
    for path, flag in [(args.json, "--json"), (args.table, "--table")]:
        common.check_file(path, flag)
    model, settings = common.start(args, writes_baked=True)
    shift = common.style_shift(model, settings.style, settings.style_text, settings.negative_text)
    if args.chaos:
        return chaos(args, model, settings, shift, texts)
    scorer = common.load_clip(args.score_model, model.device)
    scorer.set_precision(args.precision)
    runs = {}
    for param in args.params:
        folder = Path(args.baked_dir) if param == "rgb" else Path(args.baked_dir) / param
        runs[param] = evaluate_one(args, model, scorer, settings.replace(param=param), shift, texts, wandb, folder)
        if len(args.params) > 1:
            print(f"evaluated {param}")
    if len(args.params) == 1:
        result, table, images = runs[args.params[0]]
        return write(args, result, table, {args.out: evaluation.make_grid(texts, images, result["methods"])})
    base = "rgb" if "rgb" in runs else args.params[0]
    found = {param: result for param, (result, _, _) in runs.items()}
    evaluation.compare_params(found, found[base]["methods"], base)
    table = evaluation.params_table(found, found[base]["methods"], len(texts), args.seeds, base)
    table += "".join(f"\n## {param}\n\n{own}" for param, (_, own, _) in runs.items())
    grids = {grid_path(args.out, param, base): evaluation.make_grid(texts, images, found[param]["methods"])
             for param, (_, _, images) in runs.items()}
    # side by side: plain optimization and the auto-microwaved estimator's replay, in each parametrization
    shown = ["normal", f"microwave_{args.auto_from}"]
    columns = [f"{param}: {method}" for method in shown for param in runs]
    side = [{f"{param}: {method}": runs[param][2][r][method] for method in shown for param in runs}
            for r in range(len(texts))]
    grids[grid_path(args.out, "params", base)] = evaluation.make_grid(texts, side, columns)
    write(args, {"params": found, "base": base}, table, grids)


def grid_path(out, name, base):
    """Where a grid goes: OUT for the base parametrization's, OUT_<name>.png for the others."""
    return out if name == base else str(Path(out).with_name(f"{Path(out).stem}_{name}{Path(out).suffix}"))


def write(args, result, table, grids):
    """Write the JSON, the table and the grids, and print the table."""
    scores = [s for run in result.get("params", {"": result}).values() for s in run["scores"]]
    if any(not math.isfinite(s[k]) for s in scores for k in evaluation.SCORERS):
        common.log("note: some scores are not finite")
    common.write_text(args.json, json.dumps(result, indent=2) + "\n")
    common.write_text(args.table, table)
    for path, grid in grids.items():
        common.atomic_write(path, lambda tmp, grid=grid: grid.save(tmp, format="PNG"))
    print(table)
    print(f"wrote {args.table}, {args.json} and {', '.join(grids)}")


def evaluate_one(args, model, scorer, settings, shift, texts, wandb, baked_dir):
    """The evaluation at one parametrization (settings.param): (the JSON's result, the table, and
    per prompt, the first start's image by each method)."""

    def info(own, text):
        return common.run_info("evaluate.py", args, own, model.device, prompt=text, meta_grad=own.meta_grad)

    try:
        bakes = evaluation.bake_all(model, shift, texts, settings, args.meta_grads, baked_dir, wandb,
                                    args.save_size, info)
    except common.BakeInterrupted as stop:
        raise SystemExit(stop.message()) from None
    guide_prompts = [common.load_prompt(model, text) for text in texts]
    scorer_embeds = [common.load_prompt(scorer, text).embed for text in texts]
    chosen = evaluation.leave_one_out(model, texts, bakes, [p.embed for p in guide_prompts], args.k, args.auto_from)
    for i, text in enumerate(texts):
        print(f"{text!r}: auto-microwaves from {[b['prompt'] for _, b in chosen[i]]}")
    methods = evaluation.methods_of(args.meta_grads)
    scores, grid_images = evaluation.run_methods(model, scorer, guide_prompts, scorer_embeds, bakes, chosen,
                                                 shift, settings, args.seeds, args.mix, methods)
    summary = evaluation.summarize(scores, methods, bakes)
    distances = evaluation.stage_distances(bakes, guide_prompts)
    table = evaluation.markdown_table(summary, distances, methods, len(texts), args.seeds, args.clip_model,
                                      args.score_model)
    result = {"prompts": texts, "param": settings.param, "pyramid_levels": settings.pyramid_levels,
              "clip_model": args.clip_model, "score_model": args.score_model, "seeds": args.seeds,
              "seed": settings.seed, "methods": methods, "auto_from": args.auto_from,
              "threads": settings.threads,  # the rounding, and so (the renderer being chaotic) the scores, follow it
              "bake_config": {mode: {k: v for k, v in bakes[0, mode]["config"].items() if k != "seed"}
                              for mode in args.meta_grads},
              "bakes": {text: {mode: str(bakes[i, mode]["path"]) for mode in args.meta_grads}
                        for i, text in enumerate(texts)},
              "leave_one_out": {text: [str(b["path"]) for _, b in chosen[i]] for i, text in enumerate(texts)},
              "stage_distance": distances, "scores": scores, "summary": summary}
    return result, table, grid_images


if __name__ == "__main__":
    main()
