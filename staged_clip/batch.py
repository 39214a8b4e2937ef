"""Baking a list of prompts: sharding it among processes, resuming, and isolating failures."""

import dataclasses
import os
import sys
import time

import torch

from . import baked, baking, prompts
from .errors import UserError, log, out_of_memory_message
from .randomness import seed_everything


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


def bake_list(baker, settings, jobs, out, force=False, fail_fast=False, same_seed=False, isolate=True):
    """Bake each (i, text, path) of jobs into path, a preview PNG beside it (out: the
    previews' output.Output, its path aside).

    Bake i's seed is settings.seed + i (i: its place in the whole list), so that it does not
    depend on which shard bakes it. A prompt whose complete bake with these settings is
    there already is skipped (unless force; with same_seed, only one of the same seed); one
    whose file was made otherwise is baked again, saying why; one that fails is reported and
    the others go on (unless fail_fast; isolate=False: its error propagates, as it would from a
    single bake). Progress bars only on a terminal: in a log file, one
    line a prompt. Returns (baked, skipped, failed), failed as (text, reason) pairs. Ctrl-C
    raises BakeInterrupted, saying what is left.
    """
    from tqdm import tqdm
    bars = baker.bars and sys.stderr.isatty()
    baker = dataclasses.replace(baker, bars=bars, position=1)
    done, skipped, failed = [], [], []
    bar = tqdm(jobs, desc="prompts", position=0, dynamic_ncols=True, disable=not bars)
    for i, text, path in bar:
        bar.set_postfix_str(text[:40])
        for partial in [*path.parent.glob(f".{path.name}.*.tmp"), *path.parent.glob(f".{path.stem}.png.*.tmp")]:
            partial.unlink(missing_ok=True)  # left by a run killed mid-write (this shard alone writes path)
        own = settings.replace(seed=settings.seed + i)
        if not force and not stale(baker.model, own, text, path, same_seed):
            skipped.append(text)
            continue
        seed_everything(own.seed, announce=False)  # recorded in the baked file
        began = time.time()
        try:
            prompt = prompts.load_prompt(baker.model, text)
            history = baking.bake_prompt(baker, prompt, own, path, out.at(path.with_suffix(".png")))
        except baking.BakeInterrupted as stop:
            bar.close()
            stop.rest = f"; {len(jobs) - len(done) - len(skipped) - len(failed) - 1} prompt(s) not started " \
                        f"(run again to go on)"
            raise
        except Exception as e:  # one prompt's failure must not cost the rest of the night
            if not isolate:
                raise
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


def stale(model, settings, text, path, same_seed=False):
    """Whether a prompt must be baked (again) into path; a file there made otherwise is named, with why."""
    reason = baked.stale_reason(path, text, settings, model, same_seed)
    if reason is not None and path.is_file():
        log(f"baking {text!r} again: {path} is {reason}")
    return reason is not None
