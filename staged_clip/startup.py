"""A run's start: the device, CPU threads, CLIP at its precision (compiled where asked), the seed."""

import os
import time

import torch

from . import models, render
from .randomness import seed_everything


def launch(clip_model, device=None, seed=None, threads=None, precision="fp32", compile=False):
    """Pick the device and threads, load CLIP (at precision, compiled where asked), then seed.

    Seeding comes after loading, so that a seed means the same run whatever loading drew.
    Returns (the models.Clip, the seed, the threads).
    """
    device = models.pick_device(device)
    threads = use_threads(threads)
    model = models.load_clip(clip_model, device)
    model.set_precision(precision)
    if compile:
        render.use_compile(model)
    return model, seed_everything(seed), threads


def busy_cores(seconds=0.1, stat="/proc/stat"):
    """How many cores other processes keep busy, from /proc/stat over a short while (None off Linux)."""
    def sample():
        with open(stat) as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all time, and idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)  # this process sleeps meanwhile: what is busy is the others
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    cores = os.cpu_count() or 1
    if total1 <= total0:
        return 0
    return round(cores * (1 - (idle1 - idle0) / (total1 - total0)))


def use_threads(requested=None):
    """Set torch's CPU threads and return how many: requested, else OMP_NUM_THREADS, else auto.

    auto: torch's own choice (a thread per core), less the cores other processes keep busy
    when the run starts, at least one. On a shared machine more threads than free cores
    make OpenMP's threads wait on each other: beside one busy process on two cores, two
    threads ran a step 8 times slower than one (see docs/performance.md).
    """
    if requested is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        requested = int(os.environ["OMP_NUM_THREADS"]) or None
    if requested is None:
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        requested = max(1, min(torch.get_num_threads(), available - (busy_cores() or 0)))
    torch.set_num_threads(requested)
    return requested
