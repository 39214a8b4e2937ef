#!/usr/bin/env python3
"""Bake every prompt of a list (one a line; blank lines and # comments ignored), loading CLIP once.

A prompt whose complete bake with the same settings is already in --baked-dir is
skipped, so a stopped run picks up where it was. A prompt that fails is reported and
the others go on. With --shard I/N (or under torchrun or a Slurm job array, which set
it) only every N-th prompt from the I-th is baked, so many processes share one list.

Examples:
  python batch_bake.py prompts.txt
  torchrun --nproc-per-node 4 batch_bake.py prompts.txt
"""

import argparse
import os
import time
from pathlib import Path

import torch

import common

# settings that make two bakes of a prompt the same bake (the seed is not one of them)
SAME_BAKE = ("size", "steps", "lr", "cutn", "stages", "meta_steps", "meta_lr", "stage_reg", "meta_grad",
             "batch", "precision", "style", "style_text", "negative_text")
# settings that older bakes do not record, and the value they were made with
SAME_BAKE_DEFAULTS = {"batch": 1, "precision": "fp32"}


def shard_arg(text):
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N (e.g. 0/4)") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r}: I/N needs 0 <= I < N (e.g. 0/4)")
    return i, n


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompts_file", nargs="?", default="prompts.txt", help="file of prompts, one a line")
    common.add_common_args(p, size=128, steps=30, cutn=1, out=None)  # images go beside the bakes
    common.add_bake_args(p)
    g = p.add_argument_group("batch options")
    g.add_argument("--force", action="store_true", help="bake again prompts that are already baked")
    g.add_argument("--fail-fast", action="store_true", help="stop at the first prompt that fails")
    g.add_argument("--shard", type=shard_arg, default=None, metavar="I/N",
                   help="bake every N-th prompt from the I-th (0-based); default: from torchrun's "
                        "RANK/WORLD_SIZE or a Slurm array's SLURM_ARRAY_TASK_ID/COUNT, else 0/1")
    return p.parse_args(argv)


def read_prompts(path):
    """The prompts of a list file: stripped lines, without blanks, # comments or repeats."""
    path = Path(path)
    if not path.is_file():
        raise common.UserError(f"prompts file {path} not found: give a file with one prompt a line")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise common.UserError(f"cannot read {path} ({type(e).__name__}): save it as UTF-8 text") from None
    prompts = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#") and line not in prompts:
            prompts.append(line)
    if not prompts:
        raise common.UserError(f"{path} holds no prompts: write one prompt a line")
    return prompts


def _env_int(env, name):
    try:
        return int(env[name])
    except ValueError:
        raise common.UserError(f"environment variable {name}={env[name]!r} is not a whole number: "
                               f"unset it or pass --shard I/N") from None


def pick_shard(shard=None, env=None):
    """(I, N, where from): --shard, else torchrun's RANK/WORLD_SIZE, else a Slurm array, else 0/1."""
    env = os.environ if env is None else env
    if shard is not None:
        return (*shard, "--shard")
    if "RANK" in env and "WORLD_SIZE" in env:
        i, n, source = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE"), "torchrun"
    elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = _env_int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        i = _env_int(env, "SLURM_ARRAY_TASK_ID") - first
        n, source = _env_int(env, "SLURM_ARRAY_TASK_COUNT"), "Slurm array"
    else:
        return 0, 1, None
    if not 0 <= i < n:
        raise common.UserError(f"{source} gives shard {i} of {n}: run with --shard I/N to choose")
    return i, n, source


def pick_device(choice, env=None):
    """--device, else the GPU torchrun assigns (LOCAL_RANK), else the usual pick."""
    env = os.environ if env is None else env
    if choice is None and "LOCAL_RANK" in env and torch.cuda.is_available():
        return f"cuda:{_env_int(env, 'LOCAL_RANK') % torch.cuda.device_count()}"
    return choice


def already_baked(path, text, config, model):
    """Whether path holds a complete bake of this prompt with these settings and this model (a common.Clip)."""
    if not path.is_file():
        return False
    try:
        baked = common.load_baked(path)
    except common.UserError:
        return False  # unreadable: bake it again (the write replaces it atomically)
    return (baked["complete"] and baked["prompt"] == text and model.made(baked)
            and all(baked["config"].get(key, SAME_BAKE_DEFAULTS.get(key)) == config[key] for key in SAME_BAKE))


def failure_reason(error):
    """One line on why a prompt failed."""
    if isinstance(error, common.UserError):
        return str(error)
    return common.out_of_memory_message(error) or f"{type(error).__name__}: {error}"


@common.cli
def main(argv=None):
    from tqdm import tqdm
    args = parse_args(argv)
    args.wandb = common.wandb_mode(args.wandb)
    prompts = read_prompts(args.prompts_file)
    index, count, source = pick_shard(args.shard)
    args.device = pick_device(args.device)
    paths = [common.baked_path(args.baked_dir, text) for text in prompts]
    owner = {}
    for text, path in zip(prompts, paths):
        other = owner.setdefault(path, text)
        if other != text:  # only if two prompts hash alike: never seen, but never overwrite
            raise common.UserError(f"{other!r} and {text!r} would both be baked to {path}: reword one of them")
    mine = list(range(index, len(prompts), count))  # list positions: seeds follow the whole list
    if source is not None or count > 1:
        print(f"shard {index}/{count}{f' (from {source})' if source != '--shard' else ''}: "
              f"{len(mine)} of {len(prompts)} prompt(s)")
    model, seed = common.start(args, writes_baked=True)
    shift = common.style_shift(model, args.style, args.style_text, args.negative_text)
    baked, skipped, failed = [], [], []
    bar = tqdm(mine, desc="prompts", position=0, dynamic_ncols=True)
    for i in bar:
        text, path = prompts[i], paths[i]
        bar.set_postfix_str(text[:40])
        for stale in [*path.parent.glob(f".{path.name}.*.tmp"), *path.parent.glob(f".{path.stem}.png.*.tmp")]:
            stale.unlink(missing_ok=True)  # left by a run killed mid-write (this shard alone writes path)
        config = common.bake_config(args, seed + i)
        if not args.force and already_baked(path, text, config, model):
            skipped.append(text)
            continue
        common.seed_everything(seed + i, announce=False)  # recorded in the baked file
        began = time.time()
        try:
            prompt = common.load_prompt(model, text)
            history = common.bake_prompt(model, prompt, shift, args, seed + i, path,
                                         path.with_suffix(".png"), position=1)
        except common.BakeInterrupted as stop:
            bar.close()
            left = len(mine) - len(baked) - len(skipped) - len(failed) - 1
            raise SystemExit(stop.message(f"; {left} prompt(s) not started (run again to go on)")) from None
        except Exception as e:  # one prompt's failure must not cost the rest of the night
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            failed.append((text, failure_reason(e)))
            bar.write(f"failed {text!r}: {failed[-1][1]}")
            if args.fail_fast:
                break
            continue
        baked.append(text)
        bar.write(f"baked {text!r} in {time.time() - began:.0f} s, final meta loss {history[-1]:.4f} -> {path}")
    bar.close()
    print(f"{len(baked)} baked, {len(skipped)} already baked (skipped), {len(failed)} failed"
          f"{' (stopped at the first failure)' if args.fail_fast and failed else ''}; bakes in {args.baked_dir}")
    for text, reason in failed:
        print(f"  failed {text!r}: {reason}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
