"""One bake's work shared among processes (torchrun): who does which chunk, and gathering the results.

Every process regenerates every perturbation and start from shared seeds, so only the
losses travel (Salimans et al. 2017, "Evolution Strategies as a Scalable Alternative to
Reinforcement Learning"). Chunks, not single pairs, are dealt out: a pair is always rolled
out in the same batch, however many processes there are, so that the sums, and the bake,
are the same as one process's.
"""

import os

import torch

from .errors import UserError


def world():
    """(rank, size) of the process group, or (0, 1) when there is none."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_primary():
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return world()[0] == 0


def join(device, env=None):
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
    gloo on a CPU, nccl on a GPU. Returns (rank, size); (0, 1) when not under torchrun."""
    env = os.environ if env is None else env
    if int(env.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        except (RuntimeError, ValueError) as e:
            raise UserError(f"cannot join torchrun's process group ({str(e).splitlines()[0][:80]}): "
                            f"run with torchrun, or without WORLD_SIZE set") from None
    return world()


def shared_seed(seed):
    """The first process's seed, in every process (each may have drawn its own)."""
    rank, count = world()
    if count == 1:
        return seed
    import torch.distributed as dist
    value = torch.tensor([seed], dtype=torch.long)
    dist.broadcast(value, 0)
    return int(value.item())


def leave():
    """Leave the process group, if this process joined one."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def chunks(n, size):
    """This process's share of items 0..n-1: chunks of `size` (0: n split evenly among the
    processes), dealt out in turn. Returns a list of index lists."""
    rank, count = world()
    size = size or -(-n // count)
    every = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
    return every[rank::count]


def gather(values, mine):
    """values [n, ...], right in the rows `mine` of this process: every process gets every row."""
    rank, count = world()
    if count == 1:
        return values
    import torch.distributed as dist
    owner = torch.full((values.shape[0],), -1, dtype=torch.long, device=values.device)
    owner[mine] = rank
    parts = [torch.empty_like(values) for _ in range(count)]
    owners = [torch.empty_like(owner) for _ in range(count)]
    dist.all_gather(parts, values.contiguous())
    dist.all_gather(owners, owner)
    out = torch.empty_like(values)
    for part, who in zip(parts, owners):
        out[who >= 0] = part[who >= 0]
    return out
