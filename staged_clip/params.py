"""The image's parametrization: what Adam optimizes, and how the image is made from it.

- rgb: the pixels themselves, the original's (the renderer then runs exactly as before).
- pyramid: a sum of tensors at size, size/2, ... down to 4 px, each upsampled to the full
  size, so that coarse levels carry the image's global structure: the next step the
  original's author announced for "the code that generates the image from the embeddings".
- fourier: the image's 2-D spectrum, each frequency scaled by 1/frequency so that coarse
  patterns move first, with the colours decorrelated: the parametrization of Olah,
  Mordvintsev and Schubert, "Feature Visualization" (Distill, 2017; Lucid), also used by
  eps696's aphantasia.

Each is linear: decode(x) makes images [B, 3, H, W] from parameters x [B, 3, 1, N] (4-D, so
that per-image learning rates broadcast as they do over pixels), and encode(z) gives
parameters whose image is z, so every parametrization starts from the same start image.
Adam runs on x, elementwise as it runs on pixels; a level's own learning rate is a factor
inside decode (Adam's step does not depend on its gradient's scale, so a factor w on a
level moves that level's share of the image w times as far a step).
"""

import torch
import torch.nn.functional as F

from .errors import UserError
from .settings import PARAMS, sides
SMALLEST_LEVEL = 4  # px: the pyramid's coarsest level is no smaller

# The square root of the colour correlation of natural images (Lucid's, from ImageNet):
# a column per decorrelated channel, the first about luminance. Scaled so its largest
# column has length 1, so no decorrelated channel moves the image more than a pixel would.
COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                            [0.27, 0.00, -0.05],
                            [0.27, -0.09, 0.03]])
COLOUR = COLOUR_SQRT / COLOUR_SQRT.norm(dim=0).max()


def max_levels(shape):
    """How many levels a pyramid of this side (or (height, width)) has down to SMALLEST_LEVEL px (at least 1)."""
    size = min(sides(shape))
    levels = 1
    while size // 2**levels >= SMALLEST_LEVEL:
        levels += 1
    return levels


def check(param, shape, levels=None):
    """A one-line UserError where a parametrization cannot be built for an image of this side (or (height, width))."""
    if param not in PARAMS:
        raise UserError(f"--param {param!r} is unknown: choose one of {', '.join(PARAMS)}")
    height, width = sides(shape)
    named = f"{width} px" if height == width else f"{width}x{height} px"
    if param == "pyramid" and min(height, width) < 2 * SMALLEST_LEVEL:
        raise UserError(f"--size {named} is too small for --param pyramid: its levels halve the image down to "
                        f"{SMALLEST_LEVEL} px, so each side needs at least {2 * SMALLEST_LEVEL} px; give a larger "
                        f"--size or --param rgb")
    if param == "pyramid" and levels is not None and levels > max_levels(shape):
        raise UserError(f"--pyramid-levels {levels} is too many for a {named} image: at most "
                        f"{max_levels(shape)} levels halve it down to {SMALLEST_LEVEL} px")


class Pyramid:
    """Levels at side, side/2, ... (levels of them); the image is their sum, each level upsampled
    bilinearly (smooth, so a coarse level adds no seams at its cell borders for the finer levels
    to undo; its gradient is the fine gradient pooled with the same weights) and weighted by
    1 / levels, so that a step moves a pixel at most as far as a step on the pixel itself would.

    A start image goes wholly into the finest level (the others start at 0): the pyramid's
    start is exactly rgb's. A pyramid of one level is rgb.
    """

    name = "pyramid"

    def __init__(self, shape, levels=None):
        self.shape = sides(shape)
        self.levels = levels or max_levels(shape)
        self.sides = [(self.shape[0] // 2**k, self.shape[1] // 2**k) for k in range(self.levels)]
        self.weight = 1.0 / self.levels

    def split(self, x):
        """x [B, 3, 1, N] -> a level per side, [B, 3, h, w]."""
        sizes = [h * w for h, w in self.sides]
        return [part.reshape(*x.shape[:2], *hw) for part, hw in zip(x.split(sizes, dim=-1), self.sides)]

    def decode(self, x):
        image = None
        for level in self.split(x):
            if level.shape[-2:] != self.shape:
                level = F.interpolate(level, size=self.shape, mode="bilinear", align_corners=False)
            image = level if image is None else image + level
        return image if self.levels == 1 else image * self.weight

    def encode(self, z):
        finest = z if self.levels == 1 else z / self.weight
        parts = [finest.flatten(2)] + [z.new_zeros(*z.shape[:2], h * w) for h, w in self.sides[1:]]
        return torch.cat(parts, dim=-1).unsqueeze(2)


class Fourier:
    """The real 2-D spectrum of decorrelated colour channels (torch.fft.rfft2, orthonormal), each
    frequency scaled by 1 / max(frequency, 1 / side), the scales normalized to a mean square of
    1 (so a step of the same size on every coefficient moves pixels about as far as on rgb).

    x holds the spectrum's real and imaginary parts, [B, 3, 1, H * (W // 2 + 1) * 2]. A start
    image is encoded exactly (up to rounding), so the Fourier start is rgb's.
    """

    name = "fourier"

    def __init__(self, shape, device=None):
        self.shape = height, width = sides(shape)
        fy = torch.fft.fftfreq(height)[:, None]
        fx = torch.fft.rfftfreq(width)[None, :]
        scale = 1.0 / torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(height, width))  # [H, W // 2 + 1]
        self.scale = (scale / scale.pow(2).mean().sqrt()).to(device)
        self.colour = COLOUR.to(device)
        self.uncolour = torch.linalg.inv(COLOUR).to(device)
        self.half = width // 2 + 1

    def decode(self, x):
        spectrum = torch.view_as_complex(x.reshape(*x.shape[:2], self.shape[0], self.half, 2).contiguous())
        channels = torch.fft.irfft2(spectrum * self.scale, s=self.shape, norm="ortho")
        return torch.einsum("ij,bjhw->bihw", self.colour, channels)

    def encode(self, z):
        channels = torch.einsum("ij,bjhw->bihw", self.uncolour, z.float())
        spectrum = torch.fft.rfft2(channels, norm="ortho") / self.scale
        return torch.view_as_real(spectrum).reshape(*z.shape[:2], 1, -1).contiguous()


def of(settings, shape, device=None):
    """The parametrization settings ask for at this image side (or (height, width)): None for rgb
    (pixels as they are)."""
    param = settings.param
    if param == "rgb":
        return None
    check(param, shape, settings.pyramid_levels)
    if param == "pyramid":
        return Pyramid(shape, settings.pyramid_levels)
    return Fourier(shape, device)
