"""Palettes: the fixed colours pixel art is made in, and what they do to an image.

A palette is written as its colours, "#rrggbb,#rrggbb,...": that text is what a run's
settings, a baked file and a PNG record. --palette takes a name (NAMED), such a list, or an
image file whose colours k-means reduces to --palette-size.

Three ways a palette acts on an image x in [0, 1] ([B, 3, H, W]):
- distance: each pixel's squared distance to its nearest colour, the soft term the
  renderer adds to its loss (0 for an image made of palette colours);
- snap: every pixel replaced by its nearest colour, with the identity's gradient
  (straight through), so that CLIP judges the image as it will be saved;
- indices (with dither: Bayer's 4x4 ordered dither): what an indexed PNG stores.
"""

from pathlib import Path

import torch

from .errors import UserError
from .settings import NO_PALETTE

MAX_COLOURS = 256  # an indexed PNG holds at most this many
KMEANS_ROUNDS = 50
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")

# PICO-8's 16 colours; the Game Boy's 4 greens (DMG); the NES's 55 distinct colours (the
# widely used 2C02 table); CGA's mode-4 palette 1, high intensity; 4 grays
NAMED = {
    "pico8": "#000000 #1d2b53 #7e2553 #008751 #ab5236 #5f574f #c2c3c7 #fff1e8 #ff004d #ffa300 #ffec27 #00e436 "
             "#29adff #83769c #ff77a8 #ffccaa",
    "gameboy": "#0f380f #306230 #8bac0f #9bbc0f",
    "nes": "#000000 #fcfcfc #f8f8f8 #bcbcbc #7c7c7c #a4e4fc #3cbcfc #0078f8 #0000fc #b8b8f8 #6888fc #0058f8 "
           "#0000bc #d8b8f8 #9878f8 #6844fc #4428bc #f8b8f8 #f878f8 #d800cc #940084 #f8a4c0 #f85898 #e40058 "
           "#a80020 #f0d0b0 #f87858 #f83800 #a81000 #fce0a8 #fca044 #e45c10 #881400 #f8d878 #f8b800 #ac7c00 "
           "#503000 #d8f878 #b8f818 #00b800 #007800 #b8f8b8 #58d854 #00a800 #006800 #b8f8d8 #58f898 #00a844 "
           "#005800 #00fcfc #00e8d8 #008888 #004058 #f8d8f8 #787878",
    "cga": "#000000 #55ffff #ff55ff #ffffff",
    "gray4": "#000000 #555555 #aaaaaa #ffffff",
}
NAMED = {name: ",".join(colours.split()) for name, colours in NAMED.items()}
FORMS = (f"a name ({', '.join(NAMED)}), a comma-separated list of colours such as \"#1a1c2c,#5d275d,#b13e53\", "
         f"an image file, or {NO_PALETTE}")
# Bayer's 4x4 threshold matrix, as offsets in (-1/2, 1/2)
BAYER = (torch.tensor([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]]) + 0.5) / 16 - 0.5


VARIANTS = {"": {}, "soft": {"palette_hard": 0.0}, "hard": {"palette_weight": 0.0}}  # evaluate.py --palettes


def variant(name):
    """The settings a --palettes entry makes: NAME (soft term and hard lookup), NAME:soft (the soft
    term only), NAME:hard (the hard lookup only), or none. E.g. variant("pico8:hard")."""
    base, _, mode = name.partition(":")
    if (base != NO_PALETTE and base not in NAMED) or mode not in VARIANTS or (base == NO_PALETTE and mode):
        raise UserError(f"--palettes: {name!r} is not one: give none, or a palette name ({', '.join(NAMED)}) "
                        f"alone or with :soft or :hard, e.g. none,pico8,pico8:soft,pico8:hard")
    return {"palette": resolve(base), **VARIANTS[mode]}


def hex_of(rgb):
    """'#rrggbb' of a colour given as three 0-255 integers."""
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def parse_colour(text):
    """'#rrggbb', '#rgb' (or without '#') -> '#rrggbb'; a UserError naming the bad colour otherwise."""
    digits = text.strip().lower().removeprefix("#")
    if len(digits) == 3:
        digits = "".join(d * 2 for d in digits)
    if len(digits) != 6 or any(d not in "0123456789abcdef" for d in digits):
        raise UserError(f"--palette: {text.strip()!r} is not a colour: write each as #rrggbb (e.g. #1a1c2c) or #rgb")
    return "#" + digits


def check_count(colours, source):
    """A UserError unless a palette has from 2 to MAX_COLOURS distinct colours."""
    if len(colours) < 2:
        raise UserError(f"--palette {source}: a palette needs at least 2 distinct colours, got {len(colours)}")
    if len(colours) > MAX_COLOURS:
        raise UserError(f"--palette {source}: an indexed PNG holds at most {MAX_COLOURS} colours, got {len(colours)}")


def resolve(spec, size=16):
    """The palette a --palette SPEC names, as '#rrggbb,...', or None for 'none'.

    spec: a name of NAMED, a comma-separated list of colours, or an image file (its colours,
    reduced to `size` by k-means where it has more). Raises a one-line UserError otherwise.
    """
    spec = spec.strip()
    if spec.lower() == NO_PALETTE:
        return None
    if spec.lower() in NAMED:
        return NAMED[spec.lower()]
    path = Path(spec)
    if is_file(path):
        return ",".join(from_image(path, size))
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise UserError(f"--palette {spec}: no such file; give {FORMS}")
    if "," not in spec and not (spec.startswith("#") or all(d in "0123456789abcdefABCDEF" for d in spec)):
        raise UserError(f"--palette {spec!r} is no palette name, file or colour: give {FORMS}")
    colours = list(dict.fromkeys(parse_colour(c) for c in spec.split(",") if c.strip()))  # distinct, in order
    check_count(colours, repr(spec))
    return ",".join(colours)


def is_file(path):
    """Whether path names a file (False for a name the system refuses, such as a long list of colours)."""
    try:
        return path.is_file()
    except OSError:
        return False


def from_image(path, size):
    """The colours of an image file, reduced to `size` by k-means where it has more: ['#rrggbb', ...]."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            pixels = torch.from_numpy(np.array(image.convert("RGB"))).reshape(-1, 3).double()  # [N, 3], 0-255
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"--palette {path}: cannot read it as an image ({type(e).__name__}); give {FORMS}") from None
    centres = kmeans(pixels, size)
    colours = list(dict.fromkeys(hex_of(c) for c in centres.round().clamp(0, 255).tolist()))
    check_count(colours, f"{path} (its colours)")
    return colours


def kmeans(points, k, rounds=KMEANS_ROUNDS):
    """k centres of points [N, C], deterministic: the distinct points themselves where there are
    at most k of them; else farthest-point seeding, from the most frequent point, then Lloyd's
    rounds on the distinct points weighted by their counts."""
    distinct, counts = torch.unique(points.double(), dim=0, return_counts=True)
    if len(distinct) <= k:
        return distinct[counts.argsort(descending=True, stable=True)]
    weights = counts.double()
    chosen = [int(counts.argmax())]
    nearest = (distinct - distinct[chosen[0]]).pow(2).sum(1)
    for _ in range(k - 1):
        chosen.append(int((nearest * weights).argmax()))
        nearest = torch.minimum(nearest, (distinct - distinct[chosen[-1]]).pow(2).sum(1))
    centres = distinct[chosen].clone()
    for _ in range(rounds):
        owner = torch.cdist(distinct, centres).argmin(1)
        mass = torch.zeros(k, dtype=weights.dtype).index_add_(0, owner, weights)
        sums = torch.zeros_like(centres).index_add_(0, owner, distinct * weights[:, None])
        moved = torch.where(mass[:, None] > 0, sums / mass.clamp_min(1e-12)[:, None], centres)
        if torch.equal(moved, centres):
            break
        centres = moved
    return centres[mass.argsort(descending=True, stable=True)]


def colours_of(palette, device=None):
    """A palette's colours as a tensor in [0, 1]: [K, 3]."""
    rgb = [[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in palette.split(",")]
    return torch.tensor(rgb, dtype=torch.float32, device=device) / 255


def squared_distances(image, colours):
    """Each pixel's squared distance to each colour: [B, H, W, K]."""
    pixels = image.permute(0, 2, 3, 1)  # [B, H, W, 3]
    return (pixels[..., None, :] - colours.to(pixels.dtype)).pow(2).sum(-1)


def distance(image, colours):
    """The soft term: the mean over pixels of each one's squared distance to its nearest colour: [B]."""
    return squared_distances(image, colours).min(-1).values.mean((1, 2))


def indices(image, colours, dither=False):
    """Each pixel's nearest colour's index, [B, H, W]; dither: first add Bayer's 4x4 ordered offsets,
    scaled by the mean distance between neighbouring colours, so that areas between two colours
    become patterns of both."""
    if dither:
        height, width = image.shape[-2:]
        tiles = BAYER.to(image.device).repeat((height + 3) // 4, (width + 3) // 4)[:height, :width]
        image = image + tiles * spacing(colours)
    return squared_distances(image, colours).argmin(-1)


def spacing(colours):
    """The mean distance from each colour to its nearest other colour."""
    gaps = torch.cdist(colours, colours) + torch.eye(len(colours), device=colours.device) * 1e9
    return gaps.min(1).values.mean()


def lookup(image, colours):
    """Every pixel as its nearest colour: [B, 3, H, W], no gradient."""
    return colours.to(image.dtype)[indices(image.detach(), colours)].permute(0, 3, 1, 2)


class StraightThrough(torch.autograd.Function):
    """lookup in the forward (exactly the palette's colours), the identity in the backward."""

    @staticmethod
    def forward(ctx, image, colours):
        return lookup(image, colours)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def snap(image, colours):
    """Every pixel as its nearest colour, with the identity's gradient (a straight-through estimator)."""
    return StraightThrough.apply(image, colours)


class Schedule:
    """How a palette acts at each step of a run: the soft term's weight rises linearly from 0
    to `weight` over the run's steps, and the last `hard` share of them see the image through
    the hard lookup (snap).

    at(stage, step) -> (colours, weight as a tensor, hard) for losses.image_loss_with, step
    counted from 1 within its stage.
    """

    def __init__(self, palette, weight, hard, stages, steps, device=None):
        self.colours = colours_of(palette, device)
        self.weight, self.stages, self.steps = weight, stages, steps
        self.hard_from = round(stages * steps * (1 - hard))  # steps after this one are hard

    @classmethod
    def of(cls, settings, stages, device=None):
        """The schedule settings ask for over `stages` stages, or None without a palette."""
        if settings.palette is None:
            return None
        return cls(settings.palette, settings.palette_weight, settings.palette_hard, stages, settings.steps, device)

    def at(self, stage, step):
        done = stage * self.steps + step
        weight = torch.tensor(self.weight * done / (self.stages * self.steps), device=self.colours.device)
        return self.colours, weight, done > self.hard_from


def swatches(cell=20, columns=28, label=70):
    """A PIL image of the named palettes, a row of colour cells each (docs/palettes.png)."""
    from PIL import Image, ImageDraw
    rows = [(name, colours.split(",")) for name, colours in NAMED.items()]
    tall = [((len(colours) + columns - 1) // columns) * cell + 6 for _, colours in rows]
    sheet = Image.new("RGB", (label + columns * cell + 6, sum(tall) + 6), "white")
    draw, y = ImageDraw.Draw(sheet), 6
    for (name, colours), height in zip(rows, tall):
        draw.text((6, y + 4), name, fill="black")
        for i, colour in enumerate(colours):
            x0, y0 = label + (i % columns) * cell, y + (i // columns) * cell
            draw.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=colour, outline="#999999")
        y += height
    return sheet
