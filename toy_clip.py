#!/usr/bin/env python3
"""Train and measure the small offline CLIP ("toy") on a drawn world of captioned shapes.

The world: one shape (circle, square, triangle) in one colour at one place (left,
right, top, bottom, center) on a muted background of another colour, with captions such as
"a red circle on the left". The model is OpenAI's clip.model.CLIP with its tokenizer,
only small: a ModifiedResNet vision tower at 64 px and a 2-layer text tower.

  python toy_clip.py train --seed 0 --threads 1 --out models/toy.pt   # the shipped toy; under 30 min on 1 core
  python toy_clip.py zero-shot models/toy.pt                       # accuracy on held-out images
  python toy_clip.py guided --clip-model toy --scorer toy-scorer   # what normal.py draws with it
"""

import argparse
import copy
import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import common
import normal

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
ARCH = dict(embed_dim=128, image_resolution=SIDE, vision_layers=(1, 1, 1, 1), vision_width=16,
            vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=128,
            transformer_heads=2, transformer_layers=2)
HUE_CENTRES = {"red": 0, "orange": 32, "yellow": 56, "green": 125, "blue": 232, "purple": 283}


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


# --- drawing

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
    n = len(labels)
    rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    palette = torch.tensor([*COLOURS.values(), *UNNAMED.values()])
    centres = torch.tensor([(x, y) for x, y, _ in PLACES.values()] + [PLACES["left"][:2]])  # MIRRORED last
    pos = (torch.arange(side) + 0.5) / side
    ys, xs = pos.view(1, side, 1), pos.view(1, 1, side)
    centre = centres[labels[:, 2]] + (rand(n, 2) - 0.5) * 0.12
    twice = labels[:, 2] == MIRRORED
    # drawn from gen only when asked for, so that upright=0 draws what earlier versions drew
    stacked = twice & (rand(n) < upright) if upright else torch.zeros(n, dtype=torch.bool)
    centre = torch.where(stacked.view(n, 1), centre.flip(1), centre)  # from the left to the top
    r = (0.14 + 0.10 * rand(n)).view(n, 1, 1)
    a = r * (1.4 + 0.3 * rand(n, 1, 1))  # the unnamed shapes: an ellipse lying or standing,
    b = r * 0.55
    wide = rand(n, 1, 1) < 0.5
    ax, ay = torch.where(wide, a, b), torch.where(wide, b, a)
    kinds = torch.tensor([OTHER_KINDS.index(k) for k in others])
    which = kinds[(rand(n) * len(kinds)).long()]

    def distance(dx, dy):
        """Signed distance [n, side, side] of each pixel, dx right of and dy below the centre, to the label's shape."""
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
        other = torch.stack([ellipse, ring, plus, diamond, wedge], 1)[torch.arange(n), which]
        return torch.stack([circle, square, triangle, other], 1)[torch.arange(n), labels[:, 1]]

    # coverage of each pixel, with an anti-aliased edge one pixel wide
    coverage = lambda dist: (0.5 - dist * side).clamp(0, 1).unsqueeze(1)  # noqa: E731
    x, y = centre[:, 0].view(n, 1, 1), centre[:, 1].view(n, 1, 1)
    mask = coverage(distance(xs - x, ys - y))
    if twice.any():  # a copy on the right as well, mirrored (each shape is symmetric left to right),
        below = stacked.view(n, 1, 1)  # or, for the stacked ones, at the bottom
        twin = coverage(distance(torch.where(below, xs - x, xs - (1 - x)), torch.where(below, ys - (1 - y), ys - y)))
        if mirror_opacity < 1:
            twin = twin * (mirror_opacity + (1 - mirror_opacity) * rand(n)).view(n, 1, 1, 1)
        mask = torch.where(twice.view(n, 1, 1, 1), torch.maximum(mask, twin), mask)
    # background: another colour greyed by at least `muted`, plain or with a faint low-frequency texture
    bg_index = (labels[:, 0] + 1 + (rand(n) * (len(COLOURS) - 1)).long()) % len(COLOURS)
    grey = muted + (1 - muted) * 0.6 * rand(n, 1)
    bg = palette[bg_index] * (1 - grey) + 0.5 * grey
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
    fg = palette[labels[:, 0].clamp(max=len(palette) - 1)] + 0.04 * torch.randn(n, 3, generator=gen)
    if saturate or desaturate:
        grey_of = fg.mean(1, keepdim=True)
        stretch = torch.where(labels[:, :1] < len(COLOURS), 1 - desaturate + (saturate + desaturate) * rand(n, 1),
                              torch.ones(n, 1))
        fg = (grey_of + stretch * (fg - grey_of)).clamp(0, 1)
    odd = labels[:, 0] == RANDOM_COLOUR
    if odd.any():
        fg[odd] = far_colours(int(odd.sum()), gen)
    anywhere = labels[:, 0] == ANY_COLOUR
    if anywhere.any():
        fg[anywhere] = colours_not_held_out(labels[anywhere, 1], gen, 1 - desaturate, 1 + saturate)
    fg = fg.view(n, 3, 1, 1)
    if patch.any():  # random colours in blocks of 2 to 8 pixels
        k = int(torch.randint(side // 8, side // 2 + 1, (1,), generator=gen))
        fg = fg.expand(n, 3, side, side).clone()
        fg[patch] = F.interpolate(torch.rand(int(patch.sum()), 3, k, k, generator=gen), size=(side, side),
                                  mode="nearest")
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
    sign = torch.where(flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * sign, -sin, shift[0]], 1),
                         torch.stack([sin * sign, cos, shift[1]], 1)], 1)
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
        images[quant] = common.quantize(images[quant])
    images = images + (rand(n, 1, 1, 1) * 0.1) * torch.randn(images.shape, generator=gen)
    k = int(torch.randint(8, side + 1, (1,), generator=gen))  # blocky noise, as on a 32 px image
    blocky = F.interpolate(torch.randn(n, 3, k, k, generator=gen), size=(side, side), mode="nearest")
    images = images + (rand(n, 1, 1, 1) < 0.3) * (rand(n, 1, 1, 1) * 0.15) * blocky
    images = images.clamp(0, 1)
    gray = rand(n) < gray
    luma = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    images = torch.where(gray.view(n, 1, 1, 1), luma.expand_as(images), images)
    labels[gray, 0] = -1
    return images, labels


def normalize(images):
    """CLIP's input normalization, as the renderer applies it."""
    mean = torch.tensor(common.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(common.CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def compatible(image_labels, caption_attrs):
    """[n_images, n_captions] bool: the caption is true of the image (-1 matches anything)."""
    a = image_labels.unsqueeze(1)
    b = caption_attrs.unsqueeze(0)
    return ((a == b) | (a < 0) | (b < 0)).all(-1)


# --- training

def build(seed, vision_width=ARCH["vision_width"]):
    """A freshly initialised toy CLIP (seeded)."""
    from clip.model import CLIP
    torch.manual_seed(seed)
    return CLIP(**{**ARCH, "vision_width": vision_width})


def start_from(name, seed, vision_width):
    """A trained toy CLIP to go on training (--init): a shipped name or a saved file.
    (The global generator is seeded as for a fresh model.)"""
    model = common.load_clip(name).model
    fresh = build(seed, vision_width)
    if {k: v.shape for k, v in model.state_dict().items()} != {k: v.shape for k, v in fresh.state_dict().items()}:
        raise common.UserError(f"--init {name} is not a toy CLIP of --width {vision_width}: "
                               "pass a file saved by toy_clip.py train, with its --width")
    return model.requires_grad_(True)


def contrastive_loss(model, images, labels, text_f, attrs, style_tokens, messy=None, unseen=None, twins=None):
    """CLIP's symmetric loss with every caption of the world as a candidate (caption_loss;
    text_f: the captions' normalized features), plus the renderer's two style texts
    (style_tokens: its style text, then its negative).

    With messy (bool [n], the images drawn on a messy background), the style text is a
    caption of the clean images and the negative text of the messy ones, so that style
    shaping steers an image toward a clean background. Without, the two texts are taught
    to mean the same, and style shaping adds nothing to a target. unseen: as for caption_loss.

    twins: the first len(twins) images again, on vivid backgrounds: each caption true of
    an image is taught to fit it better than its twin, so that guiding an image toward a
    caption also quiets its background.
    """
    style_f = F.normalize(encode_short(model, style_tokens), dim=-1)
    n = len(images)
    image_f = F.normalize(model.encode_image(normalize(images if twins is None else torch.cat([images, twins]))), dim=-1)
    image_f, twin_f = image_f[:n], image_f[n:]
    scale = model.logit_scale.exp().clamp(max=100)
    loss = caption_loss(scale * image_f @ text_f.t(), labels, attrs, unseen)
    if twins is not None:
        k = len(twins)
        _, positive = caption_masks(labels[:k], attrs, unseen)
        loss = loss + F.softplus(scale * (twin_f - image_f[:k]) @ text_f.t())[positive].mean()
    if messy is None:
        return loss + (1 - style_f[0] @ style_f[1])
    return loss + F.cross_entropy(scale * image_f @ style_f.t(), messy.long())


def perturb(model, images, labels, text_f, attrs, eps, gen, unseen=None, share=1.0):
    """Images nudged by at most `eps` per channel to raise caption_loss (one signed-gradient step
    from a random start): training on them makes the model's gradients follow what an image
    shows rather than faint pixel patterns, which is what guiding an image follows.

    text_f: the captions' normalized features (taken as fixed); unseen: as for caption_loss;
    share: only the first share of the images is nudged (the rest is returned as it is).
    """
    k = round(share * len(images))
    if k == 0:
        return images
    rest, images, labels = images[k:], images[:k], labels[:k]
    text_f = text_f.detach()
    scale = model.logit_scale.exp().clamp(max=100).detach()
    delta = ((torch.rand(images.shape, generator=gen) * 2 - 1) * eps).requires_grad_()
    image_f = F.normalize(model.encode_image(normalize((images + delta).clamp(0, 1))), dim=-1)
    grad, = torch.autograd.grad(caption_loss(scale * image_f @ text_f.t(), labels, attrs, unseen), delta)
    delta = (delta + 1.25 * eps * grad.sign()).clamp(-eps, eps)
    return torch.cat([(images + delta.detach()).clamp(0, 1), rest])


def caption_loss(logits, labels, attrs, unseen=None):
    """The symmetric contrastive loss of logits [n_images, n_captions].

    Every caption true of an image is a positive for it (and the image for the caption),
    so a batch teaches colour, shape and place at once, partial captions included. Where
    an image's attribute is unknown (label -1: a grayscale image's colour, a coarse
    image's shape), the captions that name it are left out for that image, neither true
    (that would pull, say, every colour's text toward grey images, and the colours
    together) nor false.

    unseen: bool [colours, shapes], the (colour, shape) pairs that training never shows
    (unseen_pairs()). With it, a caption naming shape s ("a circle on the left") is left
    out for an image of colour c where (c, s) is unseen (a purple square), and a caption
    naming colour c ("a purple shape") for an image of shape s (a red circle), unless the
    caption is false of the image for another reason too ("a red circle"): as negatives they
    would teach that purple is never a circle, which the data only fails to show. Without
    it, they are negatives.
    """
    unknown, positive = caption_masks(labels, attrs, unseen)
    logits = logits.masked_fill(unknown, -1e4)

    def side(logits, positive):
        has = positive.any(1)  # captions of nothing in the batch are left out
        logits, positive = logits[has], positive[has]
        return (logits.logsumexp(1) - logits.masked_fill(~positive, -1e4).logsumexp(1)).mean()

    return (side(logits, positive) + side(logits.t(), positive.t())) / 2


def caption_masks(labels, attrs, unseen=None):
    """[n_images, n_captions] bools (left out, positive), as caption_loss counts them.

    An ANY_COLOUR shape's colour counts as unknown: it may be near a named one.
    """
    labels = torch.cat([labels[:, :1].masked_fill(labels[:, :1] == ANY_COLOUR, -1), labels[:, 1:]], 1)
    unknown = ((labels.unsqueeze(1) < 0) & (attrs.unsqueeze(0) >= 0)).any(-1)
    if unseen is not None:
        unknown = unknown | _unseen_mask(labels, attrs, unseen)
    return unknown, compatible(labels, attrs) & ~unknown


def unseen_pairs(pairs=TRAIN_PAIRS):
    """bool [colours, shapes]: the named (colour, shape) pairs that `pairs` (training) never shows."""
    out = torch.ones(len(COLOURS), len(SHAPES), dtype=torch.bool)
    for c, s in pairs:
        out[c, s] = False
    return out


def _unseen_mask(labels, attrs, unseen):
    """[n_images, n_captions] bool: the caption names a shape (colour) that training never shows in
    the image's colour (shape), and no other colour (shape) that would make it false anyway."""
    def pair(colour, shape):
        named = (colour >= 0) & (colour < len(COLOURS)) & (shape >= 0) & (shape < len(SHAPES))
        return named & unseen[colour.clamp(0, len(COLOURS) - 1), shape.clamp(0, len(SHAPES) - 1)]

    colour, shape = labels[:, 0:1], labels[:, 1:2]
    says_colour, says_shape = attrs[None, :, 0], attrs[None, :, 1]
    return ((pair(colour, says_shape) & ((says_colour < 0) | (says_colour == colour)))
            | (pair(says_colour, shape) & ((says_shape < 0) | (says_shape == shape))))


def train(args):
    import clip
    common.check_folder(Path(args.out).parent, "--out")  # before the work, not after
    if args.unnamed + args.patchwork + args.random_colours + args.any_colours > 1:
        raise common.UserError(f"--unnamed {args.unnamed}, --patchwork {args.patchwork}, --random-colours "
                               f"{args.random_colours} and --any-colours {args.any_colours} add up to more than 1: "
                               "they are shares of the same groups; lower one of them")
    if args.width % 2:
        raise common.UserError(f"--width {args.width} is odd: the vision tower's attention heads are half its "
                               "width, so give an even width such as 16 or 24")
    if args.vivid_twins > args.batch:
        raise common.UserError(f"--vivid-twins {args.vivid_twins} is more than --batch {args.batch}: "
                               "it counts images of each batch; lower it")
    torch.set_num_threads(args.threads)
    model = build(args.seed, args.width) if args.init is None else start_from(args.init, args.seed, args.width)
    gen = torch.Generator().manual_seed(args.seed)
    texts, attrs = all_captions()
    # captions of the held-out pairs are left out: as candidates that never match they
    # would teach the model that such pairs do not exist
    held = torch.tensor([[c, s] for c, s in TEST_PAIRS])
    seen_pair = ~((attrs[:, None, :2] == held[None]).all(-1).any(1))
    tokens, attrs = clip.tokenize(texts)[seen_pair], attrs[seen_pair]
    style_tokens = clip.tokenize([common.STYLE_TEXT, common.NEGATIVE_TEXT])
    unseen = unseen_pairs() if args.unseen_pairs == "unknown" else None
    full_table, used = compact_vocabulary(model, torch.cat([tokens, style_tokens]))
    tokens, style_tokens = used.remap(tokens), used.remap(style_tokens)
    model = model.to(memory_format=torch.channels_last)  # about 1.6x faster convolutions on the CPU
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                   {"params": rest, "weight_decay": 0.0}], lr=args.lr, foreach=True)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, args.steps) / args.steps)))
    average = copy.deepcopy(model) if args.ema else None
    model.train()
    began = time.time()
    for step in range(args.steps):
        labels = random_labels(args.batch, gen, unnamed=args.unnamed, patchwork=args.patchwork,
                               other=args.other_shapes, random=args.random_colours, mirrored=args.mirrored,
                               anywhere=args.any_colours)
        messy = torch.rand(args.batch, generator=gen) < args.messy if args.messy else None
        drawn = draw(labels, gen, muted=args.muted, messy=messy, with_mask=bool(args.vivid_twins),
                     saturate=args.saturate, desaturate=args.desaturate, others=args.other_kinds,
                     mirror_opacity=args.mirror_opacity, upright=args.stacked)
        twins = None
        if args.vivid_twins:  # the same drawings on vivid backgrounds, augmented alike (a copy of gen's state)
            drawn, mask = drawn
            alike = vivid_backgrounds(drawn, mask, gen)
            same = torch.Generator().set_state(gen.get_state())
            twins = augment(alike, labels, same, gray=args.gray, shape_blind=args.shape_blind or 0)[0][:args.vivid_twins]
        images, seen = augment(drawn, labels, gen, gray=args.gray, shape_blind=args.shape_blind or 0)
        images = images.contiguous(memory_format=torch.channels_last)  # [n, 3, 64, 64], stored pixel-major
        text_f = F.normalize(encode_short(model, tokens), dim=-1)  # once: the nudges use it too
        if args.adversarial and step >= args.nudge_from * args.steps:
            images = perturb(model, images, seen, text_f, attrs, args.adversarial, gen, unseen, args.nudged)
        loss = contrastive_loss(model, images, seen, text_f, attrs, style_tokens, messy, unseen, twins)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if average is not None:
            ema_update(average, model, args.ema)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  scale {model.logit_scale.exp().item():.1f}  "
                  f"{time.time() - began:.0f}s", flush=True)
    if average is not None:  # the averaged weights are what is measured and saved
        model = average
    model.eval()
    used.restore(model, full_table)
    report(model, seed=args.seed + 1000, n=args.eval_n)
    save(model, args.out)


@torch.no_grad()
def ema_update(average, model, decay):
    """average <- decay * average + (1 - decay) * model, for every weight and BatchNorm statistic.

    An exponential moving average of the weights (Polyak averaging): it smooths out the
    last steps' noise. Integer buffers (BatchNorm's step count) are copied.
    """
    for a, m in zip(average.state_dict().values(), model.state_dict().values()):
        if a.is_floating_point():
            a.lerp_(m, 1 - decay)
        else:
            a.copy_(m)


class _Vocabulary:
    """The token ids a training run reads, numbered 0..k-1 in the same order."""

    def __init__(self, ids):
        self.ids = ids  # [k], sorted
        self.index = torch.zeros(int(ids.max()) + 1, dtype=torch.long)
        self.index[ids] = torch.arange(len(ids))

    def remap(self, tokens):
        """Tokens in the compact numbering (order kept: the end token is still the largest)."""
        return self.index[tokens]

    def restore(self, model, full_table):
        """Put the trained rows back into the full token table, and that table back into the model."""
        with torch.no_grad():
            full_table.weight[self.ids] = model.token_embedding.weight
        model.token_embedding = full_table


def compact_vocabulary(model, tokens):
    """Swap the model's 49,408-row token table for the rows that `tokens` use; returns (full table, _Vocabulary).

    Rows no caption reads get no gradient and no weight decay, so training only those rows
    is the same training, without a dense 25 MB gradient and optimizer update every step.
    """
    used = _Vocabulary(torch.unique(tokens))
    full_table = model.token_embedding
    model.token_embedding = torch.nn.Embedding.from_pretrained(full_table.weight[used.ids].clone(), freeze=False)
    return full_table, used


def encode_short(model, tokens):
    """model.encode_text on tokens cut after the longest text: the same result, much cheaper.

    The text tower is causal and reads its output at the end token, so the padding after
    it changes nothing.
    """
    n = int((tokens != 0).sum(1).max())
    blocks = model.transformer.resblocks
    masks = [block.attn_mask for block in blocks]
    try:
        for block, mask in zip(blocks, masks):
            block.attn_mask = mask[:n, :n]
        x = model.token_embedding(tokens[:, :n]) + model.positional_embedding[:n]
        x = model.ln_final(model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2))
    finally:
        for block, mask in zip(blocks, masks):
            block.attn_mask = mask
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection


def save(model, path):
    """Save an fp16 state dict; token rows that no caption of the world uses are zeroed."""
    import clip
    texts, _ = all_captions()
    used = torch.unique(clip.tokenize(texts + [common.STYLE_TEXT, common.NEGATIVE_TEXT]))
    state = model.state_dict()
    keep = torch.zeros(state["token_embedding.weight"].shape[0], dtype=torch.bool)
    keep[used] = True
    state["token_embedding.weight"] = state["token_embedding.weight"] * keep.unsqueeze(1)
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    common.atomic_write(path, lambda tmp: torch.save(state, tmp))
    print(f"saved {path}")


# --- measuring

def _best(model, image_f, template, **choices):
    """For each image, the attribute values of the best caption of `template` [n, len(choices)]."""
    keys = list(choices)
    combos = torch.cartesian_prod(*[torch.arange(choices[k]) for k in keys]).view(-1, len(keys))
    texts = [caption(**{"c": None, "s": None, "p": None, **{k: int(v) for k, v in zip(keys, row)}}, template=template)
             for row in combos]
    return combos[(image_f @ common.embed_texts(model, texts).t()).argmax(1).cpu()]


@torch.no_grad()
def classify(model, images, protocol="joint"):
    """Zero-shot (colour, shape, place) [n, 3] of images [n, 3, S, S] in [0, 1].

    joint: the best of the 120 captions "a {colour} {shape} {place}".
    attribute: each attribute from captions that name it without the others where the
    world has them: colour from "a {colour} shape", shape from "a {shape}", place from
    "a {colour} shape {place}" (the place alone is never a caption).
    """
    if images.shape[-1] != model.size:
        images = F.interpolate(images, size=(model.size, model.size), mode="bilinear", align_corners=False)
    image_f = common.embed_images(model, images.to(model.device))
    c, s, p = len(COLOURS), len(SHAPES), len(PLACES)
    if protocol == "joint":
        return _best(model, image_f, "a {c} {s} {p}", c=c, s=s, p=p)
    return torch.stack([_best(model, image_f, "a {c} shape", c=c)[:, 0], _best(model, image_f, "a {s}", s=s)[:, 0],
                        _best(model, image_f, "a {c} shape {p}", c=c, p=p)[:, 1]], 1)


def predictions(model, pairs, n, seed, protocol="joint", muted=MUTED):
    """Zero-shot (colour, shape, place) of n fresh images of the given (colour, shape) pairs,
    and their true labels: two [n, 3] tensors."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(pairs), (n,), generator=gen)
    labels = torch.tensor([(*pairs[i], int(torch.randint(len(PLACES), (1,), generator=gen))) for i in pick])
    predicted = torch.cat([classify(model, draw(labels[i:i + 256], gen, muted=muted), protocol)
                           for i in range(0, n, 256)])
    return predicted, labels


def accuracy(model, pairs, n, seed, protocol="joint", muted=MUTED):
    """Per-attribute zero-shot accuracy on n fresh images of the given (colour, shape) pairs."""
    predicted, labels = predictions(model, pairs, n, seed, protocol, muted)
    return (predicted == labels).float().mean(0).tolist()


def report(model, seed, n=600, muted=MUTED):
    """Print zero-shot accuracy on fresh images of training pairs and of the held-out pairs."""
    if not isinstance(model, common.Clip):
        model = common.Clip(model, "trained", "cpu")
    for protocol in ("joint", "attribute"):
        for name, pairs in (("held-out images", TRAIN_PAIRS), ("held-out pairs", TEST_PAIRS)):
            colour, shape, place = accuracy(model, pairs, n, seed, protocol, muted)
            print(f"{protocol:9s} {name:15s}  colour {colour:6.1%}  shape {shape:6.1%}  position {place:6.1%}"
                  f"  (n={n})")
    colours, shapes = [], []
    for c, s in TEST_PAIRS:
        predicted, labels = predictions(model, [(c, s)], n // 4, seed, "joint", muted)
        right = (predicted == labels).float().mean(0).tolist()
        wrong = predicted[predicted[:, 0] != c, 0]
        mistaken = f" (else mostly {COLOUR_NAMES[int(wrong.mode().values)]})" if len(wrong) else ""
        colours.append(f"{COLOUR_NAMES[c]} {SHAPES[s]} {right[0]:.1%}{mistaken}")
        shapes.append(f"{COLOUR_NAMES[c]} {SHAPES[s]} {right[1]:.1%}")
    print(f"joint     colour by held-out pair: {', '.join(colours)}  (n={n // 4} each)")
    print(f"joint     shape by held-out pair: {', '.join(shapes)}  (n={n // 4} each)")
    # the shape alone, as "a {shape}" reads it, in solid colours far from every named one:
    # how far shape is told apart from colour
    shapes = [f"{s} {accuracy(model, [(RANDOM_COLOUR, i)], n // 4, seed, 'attribute', muted)[1]:.1%}"
              for i, s in enumerate(SHAPES)]
    print(f"attribute shape in random colours: {', '.join(shapes)}  (n={n // 4} each)")


def hue_names(pixels):
    """The named hue nearest to each pixel's hue: [N] indices into CHROMATIC, pixels [N, 3]."""
    r, g, b = pixels.unbind(1)
    top = pixels.max(1).values
    spread = (top - pixels.min(1).values).clamp_min(1e-8)
    hues = 60 * torch.where(top == r, ((g - b) / spread) % 6,
                            torch.where(top == g, (b - r) / spread + 2, (r - g) / spread + 4))
    centres = torch.tensor([HUE_CENTRES[c] for c in CHROMATIC], dtype=torch.float)
    gap = (hues.view(-1, 1) - centres.view(1, -1)).abs()
    return torch.minimum(gap, 360 - gap).argmin(1)


def vivid_hues(image, top=0.05):
    """The named hues (indices into CHROMATIC) of the most saturated `top` of an image's pixels [3, H, W]."""
    pixels = image.flatten(1).t()  # [N, 3]
    chroma = pixels.max(1).values - pixels.min(1).values
    return hue_names(pixels[chroma.topk(max(1, round(top * len(pixels)))).indices])


def commonest_hue(image, top=0.05):
    """The commonest named hue among the most saturated `top` of an image's pixels [3, H, W]."""
    return CHROMATIC[int(vivid_hues(image, top).bincount(minlength=len(CHROMATIC)).argmax())]


def colour_centre(image, colour, min_chroma=0.2):
    """(x, y) in [0, 1] of the chroma-weighted centre of the pixels of hue `colour`, or None."""
    _, h, w = image.shape
    pixels = image.flatten(1).t()
    chroma = pixels.max(1).values - pixels.min(1).values
    weight = chroma * (hue_names(pixels) == CHROMATIC.index(colour)) * (chroma >= min_chroma)
    if weight.sum() == 0:
        return None
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return (float((xs.flatten() * weight).sum() / weight.sum()), float((ys.flatten() * weight).sum() / weight.sum()))


def on_side(centre, place):
    """Whether a point (x, y) in [0, 1] lies on the named side of the image."""
    if centre is None:
        return False
    x, y = centre
    return {"left": x < 0.5, "right": x > 0.5, "top": y < 0.5, "bottom": y > 0.5}[place]


def guided_prompts():
    """(colour, shape, place) names: every chromatic colour at every side, shapes in turn."""
    sides = ("left", "right", "top", "bottom")
    return [(c, SHAPES[(i + j) % len(SHAPES)], p) for i, c in enumerate(CHROMATIC) for j, p in enumerate(sides)]


def guide(model, text, seed, args, shift):
    """What `normal.py TEXT --seed SEED` makes with these settings: the image in [0, 1], [3, H, W].

    shift: common.style_shift(model, ...) as normal.py computes it.
    """
    target = (common.embed_texts(model, [text])[0] + shift)[None]
    common.seed_everything(seed, announce=False)
    z = common.rollout(model, common.random_start(args.size, model.device), target, args.steps,
                       common.LR, args.cutn)
    return common.quantize(common.to_image(z))[0].cpu()


def guided(args):
    """Measure what normal.py draws with a toy model: colour, side and (by a scorer) shape."""
    if args.grid:
        common.check_output(args.grid)
    torch.set_num_threads(args.threads)
    model = common.load_clip(args.clip_model)
    scorer = common.load_clip(args.scorer) if args.scorer else None
    shift = common.style_shift(model, not args.no_style)
    # the scorer's captions of each (colour, place) in the three shapes, encoded once
    options = {} if scorer is None else {
        (colour, place): common.embed_texts(scorer, [caption(COLOUR_NAMES.index(colour), s, PLACE_NAMES.index(place))
                                                     for s in range(len(SHAPES))])
        for colour, _, place in guided_prompts()}
    runs = {"colour": [], "side": [], "shape": []}
    images = []
    began = time.time()
    for seed in range(args.seeds):
        for colour, shape, place in guided_prompts():
            text = caption(COLOUR_NAMES.index(colour), SHAPES.index(shape), PLACE_NAMES.index(place))
            image = guide(model, text, seed, args, shift)
            images.append(image)
            hue = commonest_hue(image)
            side = on_side(colour_centre(image, colour), place)
            runs["colour"].append(hue == colour)
            runs["side"].append(side)
            line = f"seed {seed}  {text:32s} hue {hue:7s} side {'yes' if side else 'no ':3s}"
            if scorer is not None:
                big = F.interpolate(image[None], size=(scorer.size,) * 2, mode="bilinear", align_corners=False)
                judged = SHAPES[int((common.embed_images(scorer, big) @ options[colour, place].t()).argmax())]
                runs["shape"].append(judged == shape)
                line += f" shape judged {judged}"
            print(line, flush=True)
    n = len(runs["colour"])
    print(f"\n{args.clip_model}, normal.py with {args.size} px, {args.steps} steps, cutn {args.cutn}, "
          f"{n} runs in {time.time() - began:.0f} s:")
    print(f"  named colour is the commonest hue of the most saturated 5%: {sum(runs['colour'])}/{n}")
    print(f"  coloured mass on the named side:                          {sum(runs['side'])}/{n}")
    if scorer is not None:
        print(f"  shape as judged by {args.scorer} (chance 1/3):               {sum(runs['shape'])}/{n}")
    if args.grid:
        from torchvision.utils import make_grid
        from PIL import Image
        # rows: colours; columns: left, right, top, bottom, each once per seed
        per_seed = len(guided_prompts())
        order = [seed * per_seed + i * 4 + j for i in range(len(CHROMATIC)) for j in range(4)
                 for seed in range(args.seeds)]
        big = F.interpolate(torch.stack(images)[order], scale_factor=3, mode="nearest")
        grid = make_grid(big, nrow=4 * args.seeds, padding=2, pad_value=1)
        array = grid.permute(1, 2, 0).mul(255).round().byte().numpy()
        common.atomic_write(args.grid, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
        print(f"saved {args.grid}")


def _other_kinds(text):
    """--other-kinds: a comma-separated list of OTHER_KINDS names."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    if not kinds or any(k not in OTHER_KINDS for k in kinds):
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list from {', '.join(OTHER_KINDS)}")
    return kinds


@common.cli
def main(argv=None):
    p = common.make_parser(__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", formatter_class=common.Formatter,
                       help="train a toy CLIP (from scratch, or on from saved weights) and save it")
    t.add_argument("--seed", type=common.seed_int, default=0, help="seed of the weights and of the drawings")
    t.add_argument("--steps", type=common.positive_int, default=2400, help="training steps")
    t.add_argument("--batch", type=common.positive_int, default=128, help="images per step")
    t.add_argument("--width", type=common.positive_int, default=ARCH["vision_width"],
                   help="width of the vision tower (its cost grows about as the square)")
    t.add_argument("--init", metavar="MODEL",
                   help="go on training from these weights (toy, or a file saved by train) instead of fresh ones; "
                        "the schedule starts again (use a lower --lr, and --nudge-from 0 after a nudged run)")
    t.add_argument("--lr", type=common.positive_float, default=1e-3, help="peak AdamW learning rate (cosine decay)")
    t.add_argument("--unnamed", type=common.unit_float, default=0.0,
                   help="share of colour groups drawn in colours no caption names (shape apart from colour)")
    t.add_argument("--patchwork", type=common.unit_float, default=0.0,
                   help="share of groups whose shapes are filled with a patchwork of random colours")
    t.add_argument("--random-colours", type=common.unit_float, default=0.0,
                   help=f"share of groups whose shapes each get a random solid colour at least {FAR} (RGB) "
                        "from every named colour")
    t.add_argument("--any-colours", type=common.unit_float, default=0.3,
                   help="share of groups whose shapes each get a random colour from anywhere but near a held-out "
                        "pair's colour in that shape, with no colour in their captions")
    t.add_argument("--other-shapes", type=common.unit_float, default=0.0,
                   help="share of named-colour shapes drawn as shapes no caption names (colour apart from shape)")
    t.add_argument("--other-kinds", type=_other_kinds, default="ellipse,ring,plus", metavar="KINDS",
                   help=f"which shapes --other-shapes draws, comma-separated from {', '.join(OTHER_KINDS)}")
    t.add_argument("--mirrored", type=common.unit_float, default=0.15,
                   help="share of shapes drawn twice, left and mirrored right, true of no place caption "
                        "(teaches that a symmetric image is on neither side)")
    t.add_argument("--mirror-opacity", type=common.unit_float, default=1.0, metavar="LOW",
                   help="least opacity of the second copy of a --mirrored shape, each drawn from LOW to 1 "
                        "(teaches that a fainter second copy also takes the shape off its side)")
    t.add_argument("--stacked", type=common.unit_float, default=0.0, metavar="SHARE",
                   help="share of the --mirrored shapes drawn at the top with an upright copy at the bottom instead "
                        "of left and right (teaches that a second copy above or below also takes the shape off its side)")
    t.add_argument("--messy", type=common.unit_float, default=0.0,
                   help="share of images on vivid blotches, captioned by the renderer's negative style text "
                        "(its style text captions the rest); 0: the two texts are taught to mean the same")
    t.add_argument("--muted", type=common.unit_float, default=MUTED,
                   help="least share of grey in a background's colour (vivid colour then means the shape); "
                        "the zero-shot test draws with the default")
    t.add_argument("--shape-blind", type=common.positive_int, default=None, metavar="K",
                   help="images shrunk below K px (then upscaled) teach nothing about shape")
    t.add_argument("--adversarial", type=common.unit_float, default=0.01, metavar="EPS",
                   help="train on images nudged by up to EPS per channel (0 to 1) against the model, one "
                        "signed-gradient step each (about 1.6x the time; smoother guided images); 0: off")
    t.add_argument("--nudge-from", type=common.unit_float, default=0.33, metavar="FRACTION",
                   help="start --adversarial after this fraction of the steps (the first ones learn clean drawings)")
    t.add_argument("--nudged", type=common.unit_float, default=1.0, metavar="SHARE",
                   help="share of each batch that --adversarial nudges (the rest is learnt as drawn)")
    t.add_argument("--unseen-pairs", choices=("negative", "unknown"), default="negative",
                   help="captions naming a shape (colour) never seen in an image's colour (shape) in training: "
                        "negatives for it, or left out as unknown")
    t.add_argument("--vivid-twins", type=common.nonnegative_int, default=0, metavar="K",
                   help="the first K images of each batch again on vivid backgrounds, taught to fit their captions "
                        "worse than the originals")
    t.add_argument("--saturate", type=common.nonnegative_float, default=1.0, metavar="S",
                   help="stretch each named colour's saturation by a random factor from 1 to 1 + S")
    t.add_argument("--desaturate", type=common.unit_float, default=0.0, metavar="D",
                   help="let that factor go down to 1 - D: greyer colours, whose shapes stand out less")
    t.add_argument("--ema", type=common.decay_float, default=0.0, metavar="DECAY",
                   help="save an exponential moving average of the weights with this decay per step (0: the last weights)")
    t.add_argument("--gray", type=common.unit_float, default=0.2, help="share of images turned grayscale")
    t.add_argument("--threads", type=common.positive_int, default=2, help="CPU threads")
    t.add_argument("--out", default="models/toy.pt", help="where to save the fp16 state dict")
    t.add_argument("--eval-n", type=common.positive_int, default=600, help="fresh images per zero-shot test")
    z = sub.add_parser("zero-shot", formatter_class=common.Formatter, help="zero-shot accuracy of a checkpoint on freshly drawn images")
    z.add_argument("clip_model", help="toy, toy-scorer or a checkpoint path")
    z.add_argument("--seed", type=common.seed_int, default=1234, help="seed of the drawings")
    z.add_argument("-n", type=common.positive_int, default=600, help="fresh images per test")
    z.add_argument("--muted", type=common.unit_float, default=MUTED,
                   help="least share of grey in the drawings' backgrounds (0: as vivid as in earlier versions' world)")
    g = sub.add_parser("guided", formatter_class=common.Formatter, help="measure the images normal.py draws with a toy model")
    g.add_argument("--clip-model", default="toy", help="the guiding model")
    g.add_argument("--scorer", default="toy-scorer", help="model that judges the shape ('' for none)")
    g.add_argument("--seeds", type=common.positive_int, default=4,
                   help="seeds 0..N-1 for each of the 24 prompts (4: 96 runs; at 48, one run is 2%%)")
    plain = normal.parse_args(["-"])  # normal.py's defaults
    g.add_argument("--size", type=common.positive_int, default=plain.size)
    g.add_argument("--steps", type=common.positive_int, default=plain.steps)
    g.add_argument("--cutn", type=common.positive_int, default=plain.cutn)
    g.add_argument("--no-style", action="store_true", help="turn off target shaping, as normal.py --no-style")
    g.add_argument("--threads", type=common.positive_int, default=2, help="CPU threads")
    g.add_argument("--grid", help="save every image in one PNG (rows: colours; columns: places x seeds)")
    args = p.parse_args(argv)
    if args.command == "guided":
        guided(args)
    elif args.command == "train":
        train(args)
    elif args.command == "zero-shot":
        report(common.load_clip(args.clip_model), args.seed, args.n, args.muted)


if __name__ == "__main__":
    main()
