"""Where a run's images start: one seed or several (variations, rendered as one batch), and
perhaps a start image with some of the usual random start mixed in."""

from dataclasses import dataclass

import torch

from . import cutouts, prompts
from .settings import sides


def variation_seeds(seed, count):
    """The seeds of `count` variations: seed, seed + 1, ... (wrapping below 2**63)."""
    return [(seed + i) % 2**63 for i in range(count)]


@dataclass(frozen=True)
class Start:
    """seeds: one per image. path: a start image's file, or None (the random start, a standard
    normal); it is read at the size the images are rendered at. noise: the share of the random
    start mixed into the start image ((1 - noise) * image + noise * random, in the renderer's
    units, where 0 and 1 are -1 and 1).

    One seed draws from the global generator, seeded with it when the run started (so a run
    without variations is the run it always was); several seeds draw each image's start and
    cutouts from its own generator, so each variation is the run its seed alone would make.
    """

    seeds: tuple
    path: str = None  # the start image's file, recorded in the PNGs
    noise: float = 0.0

    @classmethod
    def of(cls, seed, variations=1, path=None, noise=0.0):
        return cls(tuple(variation_seeds(seed, variations)), path, noise)

    def images(self, shape, device):
        """The start images [len(seeds), 3, H, W] and what draws their cutouts (None: the global generator)."""
        height, width = sides(shape)
        if len(self.seeds) == 1:
            z, draw = torch.randn(1, 3, height, width, device=device), None
        else:
            generators = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]
            z = torch.cat([torch.randn(1, 3, height, width, device=device, generator=g) for g in generators])
            draw = cutouts.draws_from(generators)
        if self.path is not None:
            image = load_start_image(self.path, (height, width)).to(device) * 2 - 1  # to_image's inverse
            z = image if self.noise == 0 else (1 - self.noise) * image + self.noise * z
            z = z.expand(len(self.seeds), -1, -1, -1).contiguous()
        return z, draw


def load_start_image(path, shape):
    """--init-image: the file as a [1, 3, H, W] tensor in [0, 1], resized to cover the grid and centre-cropped."""
    return prompts.load_image(path, shape, what="--init-image")
