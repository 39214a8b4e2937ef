"""Baking a list of prompts: sharding it among processes, resuming, and isolating failures."""

import argparse
import os
import time

import torch

from . import baked, baking, output, prompts
from .errors import UserError, out_of_memory_message
from .randomness import seed_everything


def shard_arg(text):
    """--shard: 'I/N' -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N (e.g. 0/4)") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r}: I/N needs 0 <= I < N (e.g. 0/4)")
    return i, n


def env_int(env, name):
    """An environment variable that must hold a whole number."""
    try:
        return int(env[name])
    except ValueError:
        raise UserError(f"environment variable {name}={env[name]!r} is not a whole number: "
                        f"unset it or pass --shard I/N") from None


def pick_shard(shard=None, env=None):
    """(I, N, where from): --shard, else torchrun's RANK/WORLD_SIZE, else a Slurm array, else 0/1."""
    env = os.environ if env is None else env
    if shard is not None:
        return (*shard, "--shard")
    if "RANK" in env and "WORLD_SIZE" in env:
        i, n, source = env_int(env, "RANK"), env_int(env, "WORLD_SIZE"), "torchrun"
    elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = env_int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        i = env_int(env, "SLURM_ARRAY_TASK_ID") - first
        n, source = env_int(env, "SLURM_ARRAY_TASK_COUNT"), "Slurm array"
    else:
        return 0, 1, None
    if not 0 <= i < n:
        raise UserError(f"{source} gives shard {i} of {n}: run with --shard I/N to choose")
    return i, n, source


def torchrun_device(choice, env=None):
    """--device, else the GPU torchrun assigns (LOCAL_RANK), else None (the usual pick)."""
    env = os.environ if env is None else env
    if choice is None and "LOCAL_RANK" in env and torch.cuda.is_available():
        return f"cuda:{env_int(env, 'LOCAL_RANK') % torch.cuda.device_count()}"
    return choice


def bake_paths(baked_dir, texts):
    """Each prompt's baked file; two prompts that would share one are refused."""
    paths = [baked.baked_path(baked_dir, text) for text in texts]
    owner = {}
    for text, path in zip(texts, paths):
        other = owner.setdefault(path, text)
        if other != text:  # only if two prompts hash alike: never seen, but never overwrite
            raise UserError(f"{other!r} and {text!r} would both be baked to {path}: reword one of them")
    return paths


def failure_reason(error):
    """One line on why a prompt failed."""
    if isinstance(error, UserError):
        return str(error)
    return out_of_memory_message(error) or f"{type(error).__name__}: {error}"


def bake_list(model, settings, shift, texts, paths, mine, wandb, save_size, info, force=False, fail_fast=False):
    """Bake the prompts texts[i] for i in mine into paths[i], a preview PNG beside each.

    Each bake's seed is settings.seed + i (i: its place in the whole list), so it does
    not depend on which shard bakes it. A prompt whose complete bake with these settings
    is there already is skipped (unless force); one that fails is reported and the others
    go on (unless fail_fast). save_size: the preview's side; info(settings, text): its
    PNG text chunks. Returns (baked, skipped, failed),
    failed as (text, reason) pairs. Ctrl-C raises BakeInterrupted, saying what is left.
    """
    from tqdm import tqdm
    done, skipped, failed = [], [], []
    bar = tqdm(mine, desc="prompts", position=0, dynamic_ncols=True)
    for i in bar:
        text, path = texts[i], paths[i]
        bar.set_postfix_str(text[:40])
        for stale in [*path.parent.glob(f".{path.name}.*.tmp"), *path.parent.glob(f".{path.stem}.png.*.tmp")]:
            stale.unlink(missing_ok=True)  # left by a run killed mid-write (this shard alone writes path)
        own = settings.replace(seed=settings.seed + i)
        if not force and baked.already_baked(path, text, own, model):
            skipped.append(text)
            continue
        seed_everything(own.seed, announce=False)  # recorded in the baked file
        began = time.time()
        try:
            prompt = prompts.load_prompt(model, text)
            preview = output.Output(str(path.with_suffix(".png")), save_size)
            history = baking.bake_prompt(model, prompt, shift, own, path, preview, wandb, info(own, text), position=1)
        except baking.BakeInterrupted as stop:
            bar.close()
            left = len(mine) - len(done) - len(skipped) - len(failed) - 1
            stop.rest = f"; {left} prompt(s) not started (run again to go on)"
            raise
        except Exception as e:  # one prompt's failure must not cost the rest of the night
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            failed.append((text, failure_reason(e)))
            bar.write(f"failed {text!r}: {failed[-1][1]}")
            if fail_fast:
                break
            continue
        done.append(text)
        bar.write(f"baked {text!r} in {time.time() - began:.0f} s, final meta loss {history[-1]:.4f} -> {path}")
    bar.close()
    return done, skipped, failed
