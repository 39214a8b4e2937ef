#!/usr/bin/env python3
"""Measure the method: bake each prompt two ways, then compare five ways of making its image.

For every prompt of a list, bake it with the real meta-gradient (--meta-grad unrolled)
and the reference's way (none), or reuse matching bakes from --baked-dir. Then, from N
random starts that no bake saw, the same start for every method, make an image by:
  normal               plain optimization, the same total steps, size and cutouts;
  microwave_unrolled   replaying the unrolled bake;
  microwave_none       replaying the reference-style bake;
  auto_mean            auto-microwaving from the other prompts' bakes (this prompt's
  auto_splice          own left out), per-stage mean or a random splice.
Each final image (as saved: quantized) is scored by its spherical distance to the prompt
under the guiding model and under a held-out scorer model (lower is better). Writes a
markdown table, a JSON file with every score, and a grid of images (prompts x methods).

Example: python evaluate.py prompts_toy.txt --clip-model toy --score-model toy-scorer \\
    --seeds 5 --size 64 --stages 5 --steps 10 --meta-steps 12
"""

import json
import math

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
    g.add_argument("--json", default="evaluation.json", metavar="PATH", help="every score, and the summary")
    g.add_argument("--table", default="evaluation.md", metavar="PATH", help="the markdown table")
    args = p.parse_args(argv)
    if args.score_model is None:
        if args.clip_model != "toy":
            p.error("--score-model is needed: a second CLIP model to judge the images (e.g. ViT-B/16)")
        args.score_model = "toy-scorer"
    if args.seed >= evaluation.START_SEED - evaluation.MAX_STARTS:
        p.error("--seed must be below 2**62 - 2**20 (seeds above are the evaluation's starts)")
    return args


@common.cli
def main(argv=None):
    args = parse_args(argv)
    wandb = common.WandbLog.from_args(args)
    texts = common.read_prompts(args.prompts_file)[:args.first]
    if len(texts) < 2:
        raise common.UserError(f"{args.prompts_file} holds one prompt: leave-one-out needs at least two")
    for path, flag in [(args.json, "--json"), (args.table, "--table")]:
        common.check_file(path, flag)
    model, settings = common.start(args, writes_baked=True)
    scorer = common.load_clip(args.score_model, model.device)
    scorer.set_precision(args.precision)
    shift = common.style_shift(model, settings.style, settings.style_text, settings.negative_text)

    def info(own, text):
        return common.run_info("evaluate.py", args, own, model.device, prompt=text, meta_grad=own.meta_grad)

    try:
        bakes = evaluation.bake_both(model, shift, texts, settings, args.baked_dir, wandb, args.save_size, info)
    except common.BakeInterrupted as stop:
        raise SystemExit(stop.message()) from None
    guide_prompts = [common.load_prompt(model, text) for text in texts]
    scorer_embeds = [common.load_prompt(scorer, text).embed for text in texts]
    chosen = evaluation.leave_one_out(model, texts, bakes, [p.embed for p in guide_prompts], args.k)
    for i, text in enumerate(texts):
        print(f"{text!r}: auto-microwaves from {[b['prompt'] for _, b in chosen[i]]}")
    scores, grid_images = evaluation.run_methods(model, scorer, guide_prompts, scorer_embeds, bakes, chosen,
                                                 shift, settings, args.seeds, args.mix)
    summary = evaluation.summarize(scores)
    distances = evaluation.stage_distances(bakes, guide_prompts)
    table = evaluation.markdown_table(summary, distances, len(texts), args.seeds, args.clip_model, args.score_model)
    result = {"prompts": texts, "clip_model": args.clip_model, "score_model": args.score_model,
              "seeds": args.seeds, "seed": settings.seed,
              "bake_config": {k: v for k, v in bakes[0, "unrolled"]["config"].items() if k != "seed"},
              "bakes": {text: {mode: str(bakes[i, mode]["path"]) for mode in ("unrolled", "none")}
                        for i, text in enumerate(texts)},
              "leave_one_out": {text: [str(b["path"]) for _, b in chosen[i]] for i, text in enumerate(texts)},
              "stage_distance": distances, "scores": scores, "summary": summary}
    if any(not math.isfinite(s[k]) for s in scores for k in evaluation.SCORERS):
        common.log("note: some scores are not finite")
    common.write_text(args.json, json.dumps(result, indent=2) + "\n")
    common.write_text(args.table, table)
    grid = evaluation.make_grid(texts, grid_images)
    common.atomic_write(args.out, lambda tmp: grid.save(tmp, format="PNG"))
    print(table)
    print(f"wrote {args.table}, {args.json} and {args.out}")


if __name__ == "__main__":
    main()
