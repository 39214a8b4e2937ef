#!/usr/bin/env python3
"""Time the renderer and the bake: inner steps, an unrolled step, a rollout, a meta step.

Prints a table (and writes JSON with --json): one inner step at each script's defaults,
one differentiable (unrolled) inner step, one rollout, one meta step, the projected
default bake, and peak memory. --reference-design also times the original's inner step
(CLIP's weights receiving gradients, cutouts made one by one, a .item() every step) in
the same run. Speed does not depend on weight values, so random:ViT-B/32 (the real
architecture with random weights, built offline) stands in for ViT-B/32.

Examples:
  python bench.py --device cuda --json bench.json
  python bench.py --device cpu --repeat 3 --stages 2 --steps 3 --reference-design
  python bench.py --device cpu --precision bf16 --reference-design --reference-precision fp32
  python bench.py --serve --jobs 32 --cli 32              # serve.py against the same 32 as CLI commands
"""

import json

import common

TUNE_MALLOC = False  # set when run as a script: the allocator setting lasts for the process


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    common.add_timed_args(p)
    g = p.add_argument_group("benchmark options")
    g.add_argument("--repeat", type=common.positive_int, default=20,
                   help="timed inner steps per row (their median is shown)")
    g.add_argument("--warmup", type=common.positive_int, default=3, help="untimed inner steps before each row")
    g.add_argument("--reference-design", action="store_true",
                   help="also time the original's inner step, side by side")
    g.add_argument("--reference-precision", choices=list(common.PRECISIONS), default=None,
                   help="precision of the original's image tower (default: --precision; the original runs "
                        "fp32 on a CPU, as clip.load gives it there)")
    g.add_argument("--inner-only", action="store_true", help="time the inner steps only (a quick comparison)")
    g.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    g = p.add_argument_group("serving benchmark (--serve: serve.py on a toy model, instead of the above)")
    g.add_argument("--serve", action="store_true",
                   help="time jobs through serve.py from concurrent clients: images a second, 202 to done "
                        "(p50, p95), the server's memory after job 100 and the last")
    g.add_argument("--jobs", type=common.positive_int, default=32, help="jobs to send")
    g.add_argument("--clients", type=common.positive_int, default=8, help="concurrent clients")
    g.add_argument("--job-size", type=common.positive_int, default=16, help="each job's image side")
    g.add_argument("--job-steps", type=common.positive_int, default=40, help="each job's steps")
    g.add_argument("--serve-model", default="toy", help="the served CLIP model")
    g.add_argument("--max-batch", type=common.positive_int, default=8, help="serve.py's --max-batch")
    g.add_argument("--cli", type=int, default=0, metavar="N",
                   help="also run the first N jobs as normal.py commands, one after another, and compare")
    return p.parse_args(argv)


def bench_serve(args):
    """bench.py --serve: the serving benchmark's figures printed (and written with --json)."""
    options = common.ServeBenchOptions(args.jobs, args.clients, args.job_size, args.job_steps, args.serve_model,
                                       args.threads or 2, args.max_batch, args.cli)
    figures = common.bench_serve(options)
    if args.json:
        common.write_text(args.json, json.dumps({**figures, "device": "cpu", **common.provenance()}, indent=2) + "\n")
        print(f"wrote {args.json}")


@common.cli
def main(argv=None):
    args = parse_args(argv)
    if args.json:
        common.check_file(args.json, "--json")
    if args.serve:
        return bench_serve(args)
    run = common.start(args, "bench.py")
    settings, model = common.settings_of(args, run), run.model
    if args.reference_design and args.reference_precision:  # refuse one the device lacks before any work
        model.set_precision(args.reference_precision)
        model.set_precision(args.precision)
    name, made = common.device_name(model.device), common.provenance()
    reference_precision = args.reference_precision or args.precision
    print(f"device: {name}; model: {args.clip_model}; precision: {args.precision}; "
          + (f"reference precision: {reference_precision}; " if args.reference_design else "")
          + f"compile: {args.compile}; torch {made['torch']}; commit {made['commit']}", flush=True)
    rows = []
    options = common.BenchOptions(args.repeat, args.warmup, args.reference_design, args.reference_precision,
                                  TUNE_MALLOC, args.inner_only)
    for row in common.measure(model, settings, options):
        rows.append(row)
        seconds = row["ms"] / 1000
        shown = f"{row['ms']:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"
        print(f"  {row['what']:<66} {shown:>10}  {row['note']}", flush=True)
        if "peak_gib_projected" in row:
            print(f"  {'peak memory of that bake (projected)':<66} {row['peak_gib_projected']:>8.2f} GiB  "
                  f"{row.pop('peak_note')}", flush=True)
    if args.json:
        result = {"device": name, "device_type": model.device.type, "clip_model": args.clip_model,
                  "precision": args.precision, "compile": args.compile, "batch": args.batch,
                  "threads": settings.threads,
                  "reference_precision": reference_precision if args.reference_design else None,
                  "checkpoint": args.checkpoint, **made, "rows": rows}
        common.write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    TUNE_MALLOC = True
    main()
