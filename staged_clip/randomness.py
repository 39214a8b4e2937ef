"""Random state: seeding a run, and setting the streams aside or back."""

import random
import secrets
from contextlib import contextmanager

import torch


def seed_everything(seed=None, announce=True):
    """Seed python and torch (a fresh seed when None), print it and return it."""
    if seed is None:
        seed = secrets.randbelow(2**31)
    random.seed(seed)
    torch.manual_seed(seed)
    if announce:
        print(f"seed: {seed}")
    return seed


@contextmanager
def rng_aside(device):
    """Run a block without moving the random streams the rest of the run draws from."""
    state = random.getstate()
    with torch.random.fork_rng(devices=cuda_devices(torch.device(device))):
        yield
    random.setstate(state)


def cuda_devices(device):
    """The devices whose generators fork_rng must set aside for work on device."""
    return [device] if device.type == "cuda" else []


def rng_state(device):
    """torch's random state for work on device (the CPU's, and the GPU's where used)."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(device, state):
    """Restore what rng_state returned."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
