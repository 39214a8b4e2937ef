"""The drawn world: coloured shapes at places with their captions, drawn and augmented as the renderer sees them."""

import math
import re

import torch
import torch.nn.functional as F

from staged_clip.cutouts import affine, grayscale
from staged_clip.models import CLIP_MEAN, CLIP_STD
from staged_clip.output import quantize

COLOURS = {  # name: RGB in [0, 1]
    "red": (0.90, 0.10, 0.10), "green": (0.10, 0.75, 0.15), "blue": (0.10, 0.20, 0.90),
    "yellow": (0.95, 0.90, 0.10), "purple": (0.55, 0.15, 0.75), "orange": (1.00, 0.55, 0.05),
    "white": (0.97, 0.97, 0.97), "black": (0.05, 0.05, 0.05),
}
# colours no caption names: shapes drawn in them teach shape apart from the named colours
UNNAMED = {"pink": (1.00, 0.55, 0.75), "cyan": (0.10, 0.80, 0.85), "brown": (0.50, 0.30, 0.10),
           "grey": (0.50, 0.50, 0.50)}
# colour index of shapes filled with a patchwork of random colours, which no caption names
PATCHWORK = len(COLOURS) + len(UNNAMED)
# colour index of shapes in a random solid colour far from every named colour, which no caption names
RANDOM_COLOUR = PATCHWORK + 1
# colour index of shapes in a random solid colour from anywhere but near a held-out pair's colour in
# that shape; their colour is left out of the captions (it may be near a named one)
ANY_COLOUR = RANDOM_COLOUR + 1
FAR = 0.25  # least RGB distance of a random colour from a named one: 6 times the named colours' jitter
CHROMATIC = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")
# shape index of outlines no caption names (an ellipse, a ring, a plus, a diamond or a wedge, a
# triangle pointing down): a named colour seen in more shapes teaches colour apart from shape
OTHER_SHAPE = len(SHAPES)
OTHER_KINDS = ("ellipse", "ring", "plus", "diamond", "wedge")
PLACES = {  # name: (centre x, centre y, words)
    "left": (0.27, 0.5, "on the left"), "right": (0.73, 0.5, "on the right"),
    "top": (0.5, 0.27, "at the top"), "bottom": (0.5, 0.73, "at the bottom"),
    "center": (0.5, 0.5, "in the center"),
}
COLOUR_NAMES, PLACE_NAMES = list(COLOURS), list(PLACES)
# place index of a shape drawn twice, on the left and mirrored on the right: no place caption is true
MIRRORED = len(PLACES)
HELD_OUT = {("green", "triangle"), ("purple", "circle"), ("orange", "square"), ("white", "triangle")}
TRAIN_PAIRS = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))
               if (COLOUR_NAMES[c], SHAPES[s]) not in HELD_OUT]
TEST_PAIRS = [(COLOUR_NAMES.index(c), SHAPES.index(s)) for c, s in sorted(HELD_OUT)]
# caption templates: {c} colour, {s} shape, {p} place words
TEMPLATES = ("a {c} {s} {p}", "a picture of a {c} {s} {p}", "a {c} {s}", "a picture of a {c} {s}",
             "a {s} {p}", "a {c} shape {p}", "a {c} shape", "a {s}")
SIDE = 64
MUTED = 0.5  # backgrounds mix at least this share of grey into their colour: vivid colour is the shape's
PALETTE = torch.tensor([*COLOURS.values(), *UNNAMED.values()])


def caption(c, s, p, template="a {c} {s} {p}"):
    """A caption of the world; c, s, p are indices (or None where the template omits them)."""
    text = template.format(c=COLOUR_NAMES[c] if c is not None else "",
                           s=SHAPES[s] if s is not None else "",
                           p=PLACES[PLACE_NAMES[p]][2] if p is not None else "")
    return re.sub(r"\ba (?=[aeiou])", "an ", text)  # "an orange circle"


def all_captions():
    """Every caption of the world with its attributes (-1 where the caption is silent)."""
    texts, attrs = [], []
    for template in TEMPLATES:
        for c in range(len(COLOURS)) if "{c}" in template else [None]:
            for s in range(len(SHAPES)) if "{s}" in template else [None]:
                for p in range(len(PLACES)) if "{p}" in template else [None]:
                    texts.append(caption(c, s, p, template))
                    attrs.append([-1 if x is None else x for x in (c, s, p)])
    return texts, torch.tensor(attrs)


def compatible(image_labels, caption_attrs):
    """[n_images, n_captions] bool: the caption is true of the image (-1 matches anything)."""
    a = image_labels.unsqueeze(1)
    b = caption_attrs.unsqueeze(0)
    return ((a == b) | (a < 0) | (b < 0)).all(-1)


def normalize(images):
    """CLIP's input normalization, as the renderer applies it."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


# --- drawing

class Outline:
    """Where each of n shapes lies and how big it is: centres [n, 2] in [0, 1], radii [n, 1, 1],
    the unnamed shapes' ellipse axes and kinds, and which shapes are drawn twice (stacked:
    the second copy below rather than on the right)."""

    def __init__(self, labels, gen, others, upright):
        n = len(labels)
        rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
        centres = torch.tensor([(x, y) for x, y, _ in PLACES.values()] + [PLACES["left"][:2]])  # MIRRORED last
        self.n, self.shape = n, labels[:, 1]
        centre = centres[labels[:, 2]] + (rand(n, 2) - 0.5) * 0.12
        self.twice = labels[:, 2] == MIRRORED
        # drawn from gen only when asked for, so that upright=0 draws what earlier versions drew
        self.stacked = self.twice & (rand(n) < upright) if upright else torch.zeros(n, dtype=torch.bool)
        self.centre = torch.where(self.stacked.view(n, 1), centre.flip(1), centre)  # from the left to the top
        self.r = (0.14 + 0.10 * rand(n)).view(n, 1, 1)
        a = self.r * (1.4 + 0.3 * rand(n, 1, 1))  # the unnamed shapes: an ellipse lying or standing,
        b = self.r * 0.55
        wide = rand(n, 1, 1) < 0.5
        self.ax, self.ay = torch.where(wide, a, b), torch.where(wide, b, a)
        kinds = torch.tensor([OTHER_KINDS.index(k) for k in others])
        self.kind = kinds[(rand(n) * len(kinds)).long()]

    def distance(self, dx, dy):
        """Signed distance [n, side, side] of each pixel, dx right of and dy below the centre, to the shape."""
        r, ax, ay = self.r, self.ax, self.ay
        circle = (dx.pow(2) + dy.pow(2)).sqrt() - r
        square = torch.maximum(dx.abs(), dy.abs()) - 0.88 * r
        # an upward triangle: apex at -r, base at 0.75 r, half-width r at the base
        edge = (dx.abs() * 1.75 - (dy + r)) / math.hypot(1.75, 1.0)
        triangle = torch.maximum(dy - 0.75 * r, edge)
        ellipse = ((dx / ax).pow(2) + (dy / ay).pow(2)).sqrt().sub(1) * torch.minimum(ax, ay)
        ring = ((dx.pow(2) + dy.pow(2)).sqrt() - 0.75 * r).abs() - 0.25 * r
        plus = torch.minimum(torch.maximum(dx.abs() - r, dy.abs() - 0.3 * r),
                             torch.maximum(dx.abs() - 0.3 * r, dy.abs() - r))
        diamond = (dx.abs() * 1.5 + dy.abs() - 1.1 * r) / math.hypot(1.5, 1.0)  # taller than wide
        wedge = torch.maximum(-dy - 0.75 * r, (dx.abs() * 1.75 - (r - dy)) / math.hypot(1.75, 1.0))
        other = torch.stack([ellipse, ring, plus, diamond, wedge], 1)[torch.arange(self.n), self.kind]
        return torch.stack([circle, square, triangle, other], 1)[torch.arange(self.n), self.shape]

    def mask(self, side, gen, mirror_opacity):
        """Each shape's coverage of the pixels [n, 1, side, side], anti-aliased over one pixel.

        A MIRRORED shape gets a second copy, on the right (each shape is symmetric left to
        right) or, stacked, at the bottom, at an opacity drawn from mirror_opacity to 1.
        """
        n = self.n
        pos = (torch.arange(side) + 0.5) / side
        ys, xs = pos.view(1, side, 1), pos.view(1, 1, side)
        coverage = lambda dist: (0.5 - dist * side).clamp(0, 1).unsqueeze(1)  # noqa: E731
        x, y = self.centre[:, 0].view(n, 1, 1), self.centre[:, 1].view(n, 1, 1)
        mask = coverage(self.distance(xs - x, ys - y))
        if self.twice.any():
            below = self.stacked.view(n, 1, 1)
            twin = coverage(self.distance(torch.where(below, xs - x, xs - (1 - x)),
                                          torch.where(below, ys - (1 - y), ys - y)))
            if mirror_opacity < 1:
                twin = twin * (mirror_opacity + (1 - mirror_opacity) * torch.rand(n, generator=gen)).view(n, 1, 1, 1)
            mask = torch.where(self.twice.view(n, 1, 1, 1), torch.maximum(mask, twin), mask)
        return mask


def background(labels, gen, side, muted, messy):
    """Backgrounds [n, 3, side, side]: another colour greyed by at least `muted`, plain or with a
    faint texture, some with blocky noise like the renderer's start; messy ones vivid blotches."""
    n = len(labels)
    rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    bg_index = (labels[:, 0] + 1 + (rand(n) * (len(COLOURS) - 1)).long()) % len(COLOURS)
    grey = muted + (1 - muted) * 0.6 * rand(n, 1)
    bg = PALETTE[bg_index] * (1 - grey) + 0.5 * grey
    bg = bg.view(n, 3, 1, 1).expand(n, 3, side, side)
    texture = F.interpolate(torch.randn(n, 3, 4, 4, generator=gen), size=(side, side), mode="bilinear",
                            align_corners=False)
    bg = bg + (rand(n, 1, 1, 1) < 0.5) * 0.08 * texture
    # or noisy, like the renderer's random start: blocky noise at a random resolution
    k = int(torch.randint(8, side + 1, (1,), generator=gen))
    noise = F.interpolate(torch.randn(n, 3, k, k, generator=gen), size=(side, side), mode="nearest")
    patch = labels[:, 0] == PATCHWORK  # a patchwork shape gets a quiet background
    bg = bg + (rand(n, 1, 1, 1) < 0.3) * ~patch.view(n, 1, 1, 1) * 0.3 * rand(n, 1, 1, 1) * noise
    if messy is not None and messy.any():
        k = int(torch.randint(3, 17, (1,), generator=gen))
        blotches = F.interpolate(0.5 + 0.5 * torch.randn(int(messy.sum()), 3, k, k, generator=gen), size=(side, side),
                                 mode="bilinear", align_corners=False)
        bg = bg.clone()
        bg[messy] = blotches
    return bg


def foreground(labels, gen, side, saturate, desaturate):
    """The shapes' fill [n, 3, 1, 1] (or [n, 3, side, side] where a patchwork is drawn): the
    label's colour with a little jitter and its saturation stretched, or a random colour."""
    n = len(labels)
    fg = PALETTE[labels[:, 0].clamp(max=len(PALETTE) - 1)] + 0.04 * torch.randn(n, 3, generator=gen)
    if saturate or desaturate:
        grey_of = fg.mean(1, keepdim=True)
        stretch = torch.where(labels[:, :1] < len(COLOURS),
                              1 - desaturate + (saturate + desaturate) * torch.rand(n, 1, generator=gen),
                              torch.ones(n, 1))
        fg = (grey_of + stretch * (fg - grey_of)).clamp(0, 1)
    odd = labels[:, 0] == RANDOM_COLOUR
    if odd.any():
        fg[odd] = far_colours(int(odd.sum()), gen)
    anywhere = labels[:, 0] == ANY_COLOUR
    if anywhere.any():
        fg[anywhere] = colours_not_held_out(labels[anywhere, 1], gen, 1 - desaturate, 1 + saturate)
    fg = fg.view(n, 3, 1, 1)
    patch = labels[:, 0] == PATCHWORK
    if patch.any():  # random colours in blocks of 2 to 8 pixels
        k = int(torch.randint(side // 8, side // 2 + 1, (1,), generator=gen))
        fg = fg.expand(n, 3, side, side).clone()
        fg[patch] = F.interpolate(torch.rand(int(patch.sum()), 3, k, k, generator=gen), size=(side, side),
                                  mode="nearest")
    return fg


def draw(labels, gen, side=SIDE, muted=MUTED, messy=None, with_mask=False, saturate=0.0, desaturate=0.0,
         others=OTHER_KINDS, mirror_opacity=1.0, upright=0.0):
    """Images [n, 3, side, side] in [0, 1] of (colour, shape, place) labels [n, 3].

    muted: the least share of grey mixed into the background's colour (0 to 1).
    messy: bool [n], the images whose background is instead vivid blotches of every
    colour, like the renderer's images part way through a run.
    with_mask: also return the shapes' coverage [n, 1, side, side] in [0, 1].
    saturate: a named colour's distance from its grey is stretched by a random factor
    from 1 - desaturate to 1 + saturate (clipped to [0, 1]): a purer or a greyer red is
    still red.
    others: the kinds of OTHER_SHAPE drawn (names from OTHER_KINDS), picked at random.
    mirror_opacity: the least opacity of a MIRRORED shape's second copy, each drawn
    from mirror_opacity to 1 (1: an exact copy): a fainter twin is still a twin.
    upright: the share of MIRRORED shapes drawn at the top with their copy at the bottom
    (upright, not mirrored) instead of on the left and the right.
    """
    mask = Outline(labels, gen, others, upright).mask(side, gen, mirror_opacity)
    bg = background(labels, gen, side, muted, messy)
    fg = foreground(labels, gen, side, saturate, desaturate)
    images = (bg * (1 - mask) + fg * mask).clamp(0, 1)
    return (images, mask) if with_mask else images


def vivid_backgrounds(images, mask, gen):
    """The images with their backgrounds replaced by vivid blotches of every colour (the shapes kept)."""
    n, _, side, _ = images.shape
    k = int(torch.randint(3, 17, (1,), generator=gen))
    blotches = F.interpolate(0.5 + 0.5 * torch.randn(n, 3, k, k, generator=gen), size=(side, side),
                             mode="bilinear", align_corners=False).clamp(0, 1)
    return images * mask + blotches * (1 - mask)


def far_colours(n, gen, far=FAR):
    """n random RGB colours [n, 3], each at least `far` from every named colour."""
    named = torch.tensor(list(COLOURS.values()))
    out = torch.empty(0, 3)
    while len(out) < n:
        pick = torch.rand(4 * n, 3, generator=gen)
        out = torch.cat([out, pick[torch.cdist(pick, named).min(1).values >= far]])
    return out[:n]


def colours_not_held_out(shapes, gen, low=1.0, high=1.0, far=FAR):
    """Random RGB colours [n, 3] for shapes [n], each at least `far` from the colours that the
    held-out pairs would give that shape (a named colour with its saturation stretched from
    `low` to `high`, as draw makes it): a purple circle is never drawn, but a circle in any other colour may be."""
    out = torch.empty(len(shapes), 3)
    todo = torch.ones(len(shapes), dtype=torch.bool)
    factors = torch.linspace(low, high, 9).view(-1, 1, 1)
    while todo.any():
        pick = torch.rand(int(todo.sum()), 3, generator=gen)
        ok = torch.ones(len(pick), dtype=torch.bool)
        for colour, shape in HELD_OUT:
            named = torch.tensor(COLOURS[colour])
            grey = named.mean()
            line = (grey + factors * (named - grey)).clamp(0, 1).view(-1, 3)  # [9, 3]
            near = torch.cdist(pick, line).min(1).values < far
            ok &= ~(near & (shapes[todo] == SHAPES.index(shape)))
        index = todo.nonzero().squeeze(1)[ok]
        out[index] = pick[ok]
        todo[index] = False
    return out


def random_labels(n, gen, pairs=TRAIN_PAIRS, group=16, unnamed=0.0, patchwork=0.0, other=0.0, random=0.0,
                  mirrored=0.0, anywhere=0.0):
    """Labels [n, 3] in groups of `group` that share a colour (hard negatives for each other).

    A share `unnamed` of the groups get a colour that no caption names (index 8 and up),
    a share `patchwork` are filled with random colours (PATCHWORK) and a share `random`
    each have a random solid colour far from the named ones (RANDOM_COLOUR), in any shape. In
    the named colours' groups, a share `other` of the shapes are ones no caption names
    (OTHER_SHAPE). A share `mirrored` of all shapes are drawn on both sides (MIRRORED). A share
    `anywhere` of the groups have a random colour each from anywhere but near a held-out pair (ANY_COLOUR).
    """
    out = []
    while len(out) < n:
        draw_ = float(torch.rand(1, generator=gen))
        if draw_ < patchwork:
            colour, shapes = PATCHWORK, range(len(SHAPES))
        elif draw_ < patchwork + unnamed:
            colour = len(COLOURS) + int(torch.randint(len(UNNAMED), (1,), generator=gen))
            shapes = range(len(SHAPES))
        elif draw_ < patchwork + unnamed + random:
            colour, shapes = RANDOM_COLOUR, range(len(SHAPES))
        elif draw_ < patchwork + unnamed + random + anywhere:
            colour, shapes = ANY_COLOUR, range(len(SHAPES))
        else:
            colour = pairs[int(torch.randint(len(pairs), (1,), generator=gen))][0]
            shapes = [s for c, s in pairs if c == colour]
        named = colour < len(COLOURS)
        for _ in range(group):
            s = shapes[int(torch.randint(len(shapes), (1,), generator=gen))]
            if named and float(torch.rand(1, generator=gen)) < other:
                s = OTHER_SHAPE
            place = int(torch.randint(len(PLACES), (1,), generator=gen))
            if mirrored and float(torch.rand(1, generator=gen)) < mirrored:
                place = MIRRORED
            out.append((colour, s, place))
    return torch.tensor(out[:n])


def augment(images, labels, gen, gray=0.1, shape_blind=0):
    """What the renderer may do to an image, with labels fixed to match.

    Flips swap left and right; grayscale hides the colour (label -1), and shrinking
    an image below shape_blind px (then upscaling it) hides the shape (label -1). Also crops, small
    rotations, noise, blur, quantization, and low-resolution pixels upscaled (nearest
    or bilinear) as when a 32 px image is fed to a 64 px model.
    """
    n, _, side, _ = images.shape
    rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    labels = labels.clone()
    flip = rand(n) < 0.5
    left, right = PLACE_NAMES.index("left"), PLACE_NAMES.index("right")
    was = labels[:, 2].clone()
    labels[:, 2] = torch.where(flip & (was == left), right, torch.where(flip & (was == right), left, was))
    scale = 0.8 + 0.2 * rand(n)
    angle = (rand(n) * 2 - 1) * 10 * math.pi / 180
    shift = (rand(2, n) * 2 - 1) * (1 - scale + 0.08)
    theta = affine(scale, angle, shift[0], shift[1], torch.where(flip, -1.0, 1.0))  # [n, 2, 3]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    low = rand(n) < 0.4  # low-resolution pixels, upscaled
    if low.any():
        k = int(torch.randint(12, 40, (1,), generator=gen))
        small = F.interpolate(images[low], size=(k, k), mode="area")
        mode = "nearest" if rand(1) < 0.5 else "bilinear"
        images[low] = F.interpolate(small, size=(side, side), mode=mode,
                                    **({} if mode == "nearest" else {"align_corners": False}))
        if k < shape_blind:
            labels[low, 1] = -1
    blur = rand(n) < 0.2
    if blur.any():
        images[blur] = F.avg_pool2d(F.pad(images[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    quant = rand(n) < 0.2
    if quant.any():
        images[quant] = quantize(images[quant])
    images = images + (rand(n, 1, 1, 1) * 0.1) * torch.randn(images.shape, generator=gen)
    k = int(torch.randint(8, side + 1, (1,), generator=gen))  # blocky noise, as on a 32 px image
    blocky = F.interpolate(torch.randn(n, 3, k, k, generator=gen), size=(side, side), mode="nearest")
    images = images + (rand(n, 1, 1, 1) < 0.3) * (rand(n, 1, 1, 1) * 0.15) * blocky
    images = images.clamp(0, 1)
    gray = rand(n) < gray
    images = torch.where(gray.view(n, 1, 1, 1), grayscale(images).expand_as(images), images)
    labels[gray, 0] = -1
    return images, labels
