#!/usr/bin/env python3
"""Measure the method: bake each prompt with each estimator, then compare the ways of making its image.

For every prompt of a list, bake it with each --meta-grads estimator (the exact
meta-gradient "unrolled", the original's "none", evolution strategies "es"), or reuse
matching bakes from --baked-dir. Then, from N random starts that no bake saw, the same
start for every method, make an image by:
  normal               plain optimization, the same total steps and size;
  normal_tuned         the same at the learning rate a sweep chose by the guide alone, on
                       --tune-prompts (or other starts) that the evaluation never scores;
  normal_drop          the same, the learning rate / 10 for the last quarter (pixray-like);
  normal_decay_tuned   the same, the rate falling linearly to 0 from a peak swept so;
  restart              the prompt as every stage, Adam restarted each stage;
  restart_tuned        the same at a rate swept so;
  objects_first        restart_tuned, its first 40% of stages aimed at the first object the
                       prompt names alone ("a red circle on the left" of "... and a blue
                       square on the right"), the rest at the whole prompt;
  layout_first         the same, its first stages aimed at the prompt without its colour
                       words ("a circle on the left and a square on the right");
  stages_<n>           only where --methods names it (n: 2, 10 or 20): restart_tuned's rate,
                       n stages in the same steps in all;
  shared               with --shared FILE: that shared bake replayed for the prompt (and
                       every prompt's bake then starts from it);
  microwave_<est>      replaying the bake of each estimator;
  auto_mean            auto-microwaving from the other prompts' bakes (this prompt's
  auto_splice          own left out; --auto-from's), per-stage mean or a random splice.
Every image is made at --replay-cutn cutouts (default: microwave.py's). Each final image
(as saved: quantized) is scored by its spherical distance to the prompt under the guiding
model and under each held-out --score-model (lower is better). Writes a markdown table
per judge (win rates with 95% intervals, paired differences with standard errors), a
JSON file with every score, and a grid of images (prompts x methods).
--params runs it all once per image parametrization, on the same prompts and starts, and
compares each with rgb method by method (one table, a grid per parametrization:
OUT_<param>.png, and OUT_params.png with normal and a replay in each side by side).
--chaos instead measures how chaotic the renderer is.

Examples:
  python evaluate.py prompts_toy_test.txt --clip-model toy --meta-grads es --tune-prompts prompts_toy.txt --seeds 8 --size 64 --stages 5 --steps 10 --meta-steps 30
  python evaluate.py prompts_toy.txt --clip-model toy --first 4 --size 64 --stages 5 --steps 10 --chaos
  python evaluate.py prompts_toy.txt --clip-model toy --seeds 5 --size 64 --stages 5 --steps 10 --params rgb,pyramid,fourier
"""

import common

SIGMAS = "0,0.001,0.01,0.05,0.15,0.5"  # the chaos probe's perturbations, radians
# the held-out judges of each offline guide: of the drawn world's single shapes, and of its scenes
OFFLINE_JUDGES = {"toy": ("toy-scorer", "toy-judge"), "scene": ("scene-scorer", "scene-judge")}
# the other keys of a score (and of its readout): no judge's name
RESERVED = {"guide", "prompt", "start", "method", "readout", "readout_by_kind", "high_frequency", "pixels"}
PLAIN = ("normal", "normal_tuned", "normal_drop", "normal_decay_tuned", "restart", "restart_tuned")  # need no bake
STRUCTURE = ("objects_first", "layout_first", "stages_2", "stages_10", "stages_20")  # nor these (restart_tuned's rate)
# the lists some flags take: distinct judges that are no other key of a score; two or more palette
# entries; distinct methods (checked against the evaluation's once known); learning rates; the chaos
# probe's sizes
JUDGE_LIST = common.name_list(accept=lambda n: n not in RESERVED, example="distinct CLIP model names, comma-separated, "
                                                                          "e.g. toy-scorer,toy-judge")
PALETTE_LIST = common.name_list(accept=lambda n: common.palette_variant(n) is not None, least=2,
                                example="two or more distinct entries, e.g. none,pico8,pico8:soft")
METHOD_LIST = common.name_list(example="distinct method names, comma-separated, e.g. normal,shared")
RATE_LIST = common.name_list(cast=float, accept=lambda r: 0 < r < 100, example="distinct learning rates from 0 to "
                                                                                "100, comma-separated, e.g. 0.12,0.24,0.48")
STEPS_LIST = common.name_list(cast=int, accept=lambda n: n >= 1, example="whole numbers of at least 1, comma-separated, "
                                                                         "e.g. 5,10,25,50")
SIGMA_LIST = common.name_list(cast=float, accept=lambda v: 0 <= v <= 1.5, distinct=False,
                              example="comma-separated numbers from 0 to 1.5, e.g. 0,0.01,0.1")


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompts_file", nargs="?", default="prompts.txt", help="file of prompts, one a line")
    common.add_common_args(p, "bake.py", out="evaluation.png", progress=False, seed=0)  # an evaluation repeats
    common.add_bake_args(p, choose_estimator=False, es_title="es options (the es bakes') and the validation gate")
    p.set_defaults(baked_dir="baked/evaluate", wandb="disabled")
    g = p.add_argument_group("evaluation options")
    g.add_argument("--score-model", type=JUDGE_LIST, default=None, metavar="LIST",
                   help="the held-out judges: other CLIPs, comma-separated (default: toy-scorer,toy-judge when "
                        "guiding with toy, scene-scorer,scene-judge with scene; otherwise required, e.g. "
                        "ViT-B/16,RN50)")
    g.add_argument("--replay-cutn", type=common.positive_int, default=common.SCRIPT_DEFAULTS["microwave.py"]["cutn"],
                   metavar="N", help="cutouts every method renders its images with (default: microwave.py's 8, "
                                     "what a user replays with); the bakes' own (1) shows them as they were learned")
    g.add_argument("--replay-steps", type=STEPS_LIST, default=str(common.SCRIPT_DEFAULTS["microwave.py"]["steps"]),
                   metavar="N[,N...]", help="steps a stage every replay runs, each plain baseline as many in all "
                                            "(default: microwave.py's, what a user replays with); several: the "
                                            "step-budget curve, each in turn on the same starts, drawn as OUT and "
                                            "each budget's grid as OUT_<total>steps.png")
    g.add_argument("--tune-prompts", default=None, metavar="FILE",
                   help="prompts on which the tuned baselines' learning rates are swept, by the guide alone (default: "
                        "the evaluated prompts, from starts the evaluation does not score)")
    g.add_argument("--tune-starts", type=common.positive_int, default=2, metavar="N",
                   help="starts per prompt of that sweep")
    g.add_argument("--tune-lrs", type=RATE_LIST, default=",".join(map(str, common.TUNE_LRS)), metavar="LIST",
                   help="the learning rates that sweep tries, comma-separated")
    g.add_argument("--shared", default=None, metavar="SHARED.pt",
                   help="a shared bake (bake.py --prompts FILE): replay it as the method `shared`, compare every "
                        "method with it, and start every prompt's bake from it")
    g.add_argument("--seeds", type=common.positive_int, default=5, help="random starts per prompt")
    g.add_argument("--first", type=common.positive_int, default=None, metavar="N",
                   help="evaluate only the first N prompts of the file")
    g.add_argument("--k", type=common.positive_int, default=2, help="nearest bakes auto-microwave uses")
    g.add_argument("--mix", type=common.unit_float, default=0.7, help="auto-microwave's prompt weight")
    g.add_argument("--meta-grads", type=common.name_list(common.META_GRADS), default=",".join(common.META_GRADS),
                   metavar="LIST", help="the estimators to bake with and compare, comma-separated")
    g.add_argument("--auto-from", choices=common.META_GRADS, default=None,
                   help="whose bakes auto-microwaving composes (default: es, bake.py's default, if listed; "
                        "else the first listed)")
    g.add_argument("--chaos", action="store_true",
                   help="instead of evaluating: the chaos probe of the renderer on each prompt (loss "
                        "differences per perturbation size, spread across starts, meta-gradient agreement)")
    g.add_argument("--sigmas", type=SIGMA_LIST, default=SIGMAS, metavar="LIST",
                   help="the chaos probe's perturbation sizes, radians, comma-separated")
    g.add_argument("--pairs", type=common.positive_int, default=8, help="the chaos probe's pairs per size")
    g.add_argument("--params", type=common.name_list(common.PARAMS), default=None, metavar="LIST",
                   help="image parametrizations to evaluate in turn, comma-separated (default: --param's); "
                        "bakes of each but rgb go to BAKED_DIR/<param>/")
    g.add_argument("--palettes", type=PALETTE_LIST, default=None, metavar="LIST",
                   help="instead of --params: palettes to evaluate in turn, comma-separated, the first the base: "
                        "none, NAME (soft term and hard lookup), NAME:soft or NAME:hard (one of them alone), e.g. "
                        "none,pico8,pico8:soft,pico8:hard; bakes of each go to BAKED_DIR/<entry>/")
    g.add_argument("--methods", type=METHOD_LIST, default=None, metavar="LIST",
                   help="only these methods, comma-separated (names as in the table, e.g. normal_tuned,shared)")
    g.add_argument("--json", default="evaluation.json", metavar="PATH", help="every score, and the summary")
    g.add_argument("--table", default="evaluation.md", metavar="PATH", help="the markdown table")
    args = p.parse_args(argv)
    if args.score_model is None:
        if args.clip_model not in OFFLINE_JUDGES:
            p.error("--score-model is needed: other CLIP models to judge the images (e.g. ViT-B/16)")
        args.score_model = list(OFFLINE_JUDGES[args.clip_model])
    if args.clip_model in args.score_model:
        p.error(f"--score-model {args.clip_model} is the guide itself: a held-out judge is another model")
    for flag, starts in (("--seeds", args.seeds), ("--tune-starts", args.tune_starts)):
        if starts > common.MAX_STARTS:
            p.error(f"{flag} must be from 1 to {common.MAX_STARTS}, got {starts}")
    if args.seed >= common.START_SEED - common.MAX_STARTS:
        p.error("--seed must be below 2**62 - 2**20 (seeds above are the evaluation's starts)")
    args.params = args.params or [args.param]
    if args.chaos and len(args.params) > 1:
        p.error("--chaos probes one parametrization: give --param instead of --params")
    if len(args.replay_steps) > 1 and (len(args.params) > 1 or args.palettes or args.chaos):
        p.error("several --replay-steps draw the step-budget curve at one parametrization and palette: drop "
                "--params, --palettes and --chaos")
    if args.palettes and (len(args.params) > 1 or args.palette is not None or args.chaos):
        p.error("--palettes compares palettes at one parametrization: drop --params, --palette and --chaos")
    args.auto_from = args.auto_from or ("es" if "es" in args.meta_grads else args.meta_grads[0])
    if args.auto_from not in args.meta_grads:
        p.error(f"--auto-from {args.auto_from} is not among --meta-grads {','.join(args.meta_grads)}")
    known = [*PLAIN, *STRUCTURE, *(["shared"] if args.shared else []), *[f"microwave_{e}" for e in args.meta_grads],
             "auto_mean", "auto_splice"]
    if args.methods and set(args.methods) - set(known):
        p.error(f"--methods {','.join(sorted(set(args.methods) - set(known)))}: not among this evaluation's "
                f"methods, {','.join(known)}")
    total = args.stages * min(args.replay_steps)  # the fewest steps any method runs in all
    crowded = [m for m in args.methods or () if m.startswith("stages_") and int(m.split("_")[1]) > total]
    if crowded:
        p.error(f"--methods {','.join(crowded)}: more stages than the {total} steps in all "
                f"(--stages {args.stages} x --replay-steps {min(args.replay_steps)})")
    return args


@common.cli
def main(argv=None):
    args = parse_args(argv)
    texts = common.read_prompts(args.prompts_file)[:args.first]
    if len(texts) < 2 and not args.chaos:
        raise common.UserError(f"{args.prompts_file} holds one prompt: leave-one-out needs at least two")
    tune = common.read_prompts(args.tune_prompts) if args.tune_prompts else None
    if args.shared is not None and not common.is_shared(common.load_baked(args.shared)):
        raise common.UserError(f"--shared {args.shared} is a bake of one prompt: give a shared bake, made by "
                               f"bake.py --prompts FILE")
    for path, flag in [(args.json, "--json"), (args.table, "--table")]:
        common.check_file(path, flag)
    run = common.start(args, "evaluate.py", writes_baked=True)
    settings, model = common.settings_of(args, run), run.model
    shift = common.style_shift(model, settings)
    if args.chaos:
        result, table = common.probe_chaos(model, shift, settings, texts, args.sigmas, args.pairs)
        return common.write_report(args.json, args.table, result, table, {})
    plan = common.Plan(texts, args.meta_grads, args.auto_from, args.params, args.seeds, args.k, args.mix,
                       args.baked_dir, args.clip_model, tuple(args.score_model), replay_cutn=args.replay_cutn,
                       tune_prompts=tune, tune_starts=args.tune_starts, tune_lrs=args.tune_lrs,
                       replay_steps=args.replay_steps[0], budgets=args.replay_steps[1:] and args.replay_steps,
                       source=args.prompts_file, shared=args.shared, palettes=args.palettes, methods=args.methods)
    result, table, grids = common.evaluate(common.Baker(model, shift, run.wandb), settings, plan, run.output)
    common.write_report(args.json, args.table, result, table, grids)


if __name__ == "__main__":
    main()
