"""Where an evaluation's images start and how a judge scores them: seeds that no bake and no other
use shares, images as saved, the spherical distance of each to its prompt, and its readout."""

import torch
import torch.nn.functional as F

from . import losses, output, prompts, readout
from .settings import sides

START_SEED = 2**62  # the evaluation's starts come from seeds no bake uses (bakes: --seed + i, below 2**62)
MAX_STARTS = 2**20  # starts per prompt: start (i, j) has seed START_SEED + i * MAX_STARTS + j
TUNE_SEED = 3 * 2**62  # the learning-rate sweep's starts: above every evaluation start (i < 2**41 prompts)


def start_seed(i, j):
    """The seed of the evaluation's start j of prompt i."""
    return START_SEED + i * MAX_STARTS + j


def tune_seed(i, j):
    """The seed of the sweep's start j of its prompt i: never an evaluation's start."""
    return TUNE_SEED + i * MAX_STARTS + j


def start_image(seed, shape, device):
    """A start drawn from its own seed: [1, 3, H, W] (shape: a side or (H, W); the same for every method)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, *sides(shape), generator=generator).to(device)


def start_images(seeds, shape, device):
    """The starts of these seeds as one batch: [len(seeds), 3, H, W] (each start_image of its seed)."""
    return torch.cat([start_image(seed, shape, device) for seed in seeds])


def shown(z, palette=None):
    """The images as saved (quantized, or in their palette), at their own size: [n, 3, H, W]."""
    return output.saved_look(palette)(losses.to_image(z.detach().float()))


def high_frequency(images, cutoff=0.25):
    """The share of each image's variance [n] in fine detail: spatial frequencies above cutoff
    cycles a pixel (half the highest) along either axis, of images [n, 3, H, W] with each
    channel's mean taken out. A flat or smooth image scores near 0, pixel noise about 0.75."""
    x = images.float() - images.float().mean((-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().square()
    fy, fx = torch.fft.fftfreq(x.shape[-2]).abs(), torch.fft.fftfreq(x.shape[-1]).abs()
    fine = ((fy[:, None] > cutoff) | (fx[None, :] > cutoff)).to(power.device)
    return (power * fine).sum((-3, -2, -1)) / power.sum((-3, -2, -1)).clamp_min(1e-12)


def embed(model, images):
    """Unit embeddings of images [n, 3, H, W] in [0, 1], resized to the model's side: [n, D]."""
    resized = F.interpolate(images, size=(model.size, model.size), mode="bilinear", antialias=True,
                            align_corners=False)
    with torch.no_grad():
        return prompts.embed_images(model, resized)


def score(model, images, prompt_embed):
    """Spherical distance of each image [n, 3, H, W] (resized to the model's side) to a prompt: [n]."""
    return losses.spherical_distance(embed(model, images), prompt_embed)


def judge(model, images, prompt_embed, rivals=None):
    """What one judge finds of images [n, 3, H, W]: (their distances to the prompt [n], and where
    rivals (the rival captions' embeddings [R, D], the prompt's index among them, each caption's
    kind) are given, whether it reads each as the prompt ([n] bool) and by kind of rival
    ({kind: [n] bool}); else None, None)."""
    embeds = embed(model, images)
    read, by_kind = readout.reads(embeds, *rivals) if rivals is not None else (None, None)
    return losses.spherical_distance(embeds, prompt_embed), read, by_kind
