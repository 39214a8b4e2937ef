"""Cutouts: what CLIP sees of an image at each step (crops, flips, jitter, noise, grayscale)."""

import math

import torch
import torch.nn.functional as F

from .settings import sides

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G and B in a grayscale pixel


def affine(scale, angle, shift_x, shift_y, flip):
    """Batched 2x3 sampling matrices (normalized coordinates) for F.affine_grid: [n, 2, 3].

    Each matrix scales by `scale`, rotates by `angle` (radians), mirrors left to right
    where flip is -1, and moves the centre by (shift_x, shift_y) in [-1, 1] units.
    """
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    row0 = torch.stack([cos * flip, -sin, shift_x], dim=-1)
    row1 = torch.stack([sin * flip, cos, shift_y], dim=-1)
    return torch.stack([row0, row1], dim=1)


def grayscale(images):
    """The luma of images [n, 3, H, W] as one channel: [n, 1, H, W]."""
    return (images * torch.tensor(LUMA, device=images.device).view(1, 3, 1, 1)).sum(1, keepdim=True)


def draw_cutouts(batch, cutn, shape, side, device, generator=None):
    """The random choices of one make_cutouts call, drawn on the device: a dict of tensors.

    Drawn apart from the maths that uses them, so that a compiled loss sees the same
    randomness as the eager one, and nothing is decided on the host (no device sync).
    shape: the images' side, or (height, width). generator: the torch.Generator to draw
    from (default: the global one).
    """
    dev = torch.device(device)
    height, width = sides(shape)
    short = min(height, width)

    def rand(*shape):
        return torch.rand(*shape, device=dev, generator=generator)

    if cutn == 1:
        return {"resize": rand(batch) < 0.5}
    n_crop = round(cutn * 0.8)
    n = batch * cutn
    crop = torch.arange(cutn, device=dev).repeat(batch) < n_crop  # [n]: crop or whole image
    lo = min(short, side) / short
    scale = torch.where(crop, lo + (1 - lo) * rand(n), torch.ones(n, device=dev))  # of the shorter side
    max_angle = torch.where(crop, torch.full((n,), 15.0, device=dev), torch.full((n,), 10.0, device=dev))
    angle = (rand(n) * 2 - 1) * max_angle * math.pi / 180
    # a crop's centre may sit anywhere that keeps the crop inside, plus up to 10% shift
    # (0.2 in [-1, 1] coordinates)
    jitter = crop.float() * 0.2
    extent = torch.tensor([[short / width], [short / height]], device=dev)  # a square's extent across x and y
    shift = (rand(2, n) * 2 - 1) * ((1 - scale * extent) + jitter)
    flip = torch.where(crop & (rand(n) < 0.5), -1.0, 1.0)
    noise = (crop.float() * 0.05 * rand(n)).view(n, 1, 1, 1)
    theta = affine(scale, angle, shift[0], shift[1], flip)
    if height != width:  # a square of the image (rotated as a square), not the rectangle squeezed into one
        theta = theta * torch.cat([extent.expand(2, 2), torch.ones(2, 1, device=dev)], dim=1)
    return {"theta": theta,  # [n, 2, 3]
            "noise": noise * torch.randn(n, 3, side, side, device=dev, generator=generator),
            "gray": (rand(n) < 0.2).view(n, 1, 1, 1)}


def make_cutouts(images, side, cutn, draws=None):
    """What CLIP sees of a batch of images in [0, 1]: [B * cutn, 3, side, side].

    cutn = 1: the whole image, resized to `side` half of the time, then average-pooled
    to `side`. cutn > 1: about 80% random square crops (side between min(S, side) and S,
    S the shorter side) with flips, noise, affine jitter (15 degrees, 10% shift) and
    grayscale; the rest the whole image (where it is not square: its largest square, at a
    random place) rotated by up to 10 degrees; about 20% of each group grayscale. All
    cutouts come from one grid_sample call. draws: the random choices (draw_cutouts),
    drawn here when not given.
    """
    b, _, h, w = images.shape
    if draws is None:
        draws = draw_cutouts(b, cutn, (h, w), side, images.device)
    if cutn == 1:  # the whole image (squeezed into a square where it is not one)
        pooled = F.adaptive_avg_pool2d(images, side)
        if h == side and w == side:
            return pooled
        resized = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
        return torch.where(draws["resize"].view(b, 1, 1, 1), resized, pooled)
    n = b * cutn
    source = images.repeat_interleave(cutn, dim=0)  # [n, 3, H, W]
    grid = F.affine_grid(draws["theta"], [n, 3, side, side], align_corners=False)
    cuts = F.grid_sample(source, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    cuts = cuts + draws["noise"]
    return torch.where(draws["gray"], grayscale(cuts).expand_as(cuts), cuts)


def draws_from(generators, repeat=1):
    """A draw function (draw_cutouts's arguments) for a batch of len(generators) * repeat images
    whose random choices come from one generator per image, the whole batch repeated `repeat`
    times: [g0, g1, ..., g0, g1, ...]. Each image's cutouts then depend on its own generator
    alone, not on what else shares its batch, and repeats see the same cutouts (an ES
    pair's + and - images).
    """
    def draw(batch, cutn, shape, side, device):
        assert batch == len(generators) * repeat, (batch, len(generators), repeat)
        each = [draw_cutouts(1, cutn, shape, side, device, generator=g) for g in generators]
        return {key: torch.cat([d[key] for d in each] * repeat) for key in each[0]}

    return draw
