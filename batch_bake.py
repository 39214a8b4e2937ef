#!/usr/bin/env python3
"""Bake every prompt of a list (one a line; blank lines and # comments ignored), loading CLIP once.

A prompt whose complete bake with the same settings is already in --baked-dir is
skipped, so a stopped run picks up where it was; one baked with other settings is baked
again, saying which. A prompt that fails is reported and the others go on. With --shard
I/N (or under torchrun or a Slurm job array, which set it) only every N-th prompt from
the I-th is baked, so many processes share one list. Progress bars show on a terminal;
in a log file, one line a prompt.

Examples:
  python batch_bake.py prompts.txt
  python batch_bake.py prompts.txt --init-from baked/shared_prompts.pt   # each on top of a shared bake
  torchrun --nproc-per-node 4 batch_bake.py prompts.txt
"""

import common


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompts_file", nargs="?", default="prompts.txt", help="file of prompts, one a line")
    common.add_common_args(p, "bake.py", out=None)  # images go beside the bakes
    common.add_init_arg(common.add_bake_args(p))
    g = p.add_argument_group("batch options")
    g.add_argument("--force", action="store_true", help="bake again prompts that are already baked")
    g.add_argument("--fail-fast", action="store_true", help="stop at the first prompt that fails")
    g.add_argument("--shard", type=common.shard_arg, default=None, metavar="I/N",
                   help="bake every N-th prompt from the I-th (0-based); default: from torchrun's "
                        "RANK/WORLD_SIZE or a Slurm array's SLURM_ARRAY_TASK_ID/COUNT, else 0/1")
    return p.parse_args(argv)


@common.cli
def main(argv=None):
    args = parse_args(argv)
    texts = common.read_prompts(args.prompts_file, keep_going=not args.fail_fast)  # bad lines said, then failed
    init = common.load_baked(args.init_from) if args.init_from else None  # before CLIP loads
    index, count, source = common.pick_shard(args.shard)
    args.device = common.torchrun_device(args.device)
    paths = common.bake_paths(args.baked_dir, texts)
    jobs = [(i, texts[i], paths[i]) for i in range(index, len(texts), count)]  # list positions: seeds follow them
    if source is not None or count > 1:
        print(f"shard {index}/{count}{f' (from {source})' if source != '--shard' else ''}: "
              f"{len(jobs)} of {len(texts)} prompt(s)")
    run = common.start(args, "bake.py", writes_baked=True)
    settings, model = common.settings_of(args, run), run.model
    if init is not None:
        common.check_stage_width(init, model.dim)
        settings = common.starting_from(settings, init)
    baker = common.Baker(model, common.style_shift(model, settings), run.wandb, init=init)
    baked, skipped, failed = common.bake_list(baker, settings, jobs, run.output, args.force, args.fail_fast)
    print(f"{len(baked)} baked, {len(skipped)} already baked (skipped), {len(failed)} failed"
          f"{' (stopped at the first failure)' if args.fail_fast and failed else ''}; bakes in {args.baked_dir}")
    for text, reason in failed:
        print(f"  failed {text!r}: {reason}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
