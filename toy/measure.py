"""Measuring a toy CLIP: zero-shot accuracy on fresh drawings, and what normal.py draws with it."""

import time

import torch
import torch.nn.functional as F

from staged_clip import readout
from staged_clip.losses import to_image
from staged_clip.models import Clip, load_clip
from staged_clip.output import atomic_write, check_output, quantize
from staged_clip.prompts import embed_images, embed_texts, style_shift
from staged_clip.randomness import seed_everything
from staged_clip.render import random_start, rollout
from staged_clip.settings import Settings
from staged_clip.stats import interval

from . import scenes, world

HUE_CENTRES = {"red": 0, "orange": 32, "yellow": 56, "green": 125, "blue": 232, "purple": 283}


def _best(model, image_f, template, **choices):
    """For each image, the attribute values of the best caption of `template` [n, len(choices)]."""
    keys = list(choices)
    combos = torch.cartesian_prod(*[torch.arange(choices[k]) for k in keys]).view(-1, len(keys))
    texts = [world.caption(**{"c": None, "s": None, "p": None, **{k: int(v) for k, v in zip(keys, row)}}, template=template)
             for row in combos]
    return combos[(image_f @ embed_texts(model, texts).t()).argmax(1).cpu()]


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
    image_f = embed_images(model, images.to(model.device))
    c, s, p = len(world.COLOURS), len(world.SHAPES), len(world.PLACES)
    if protocol == "joint":
        return _best(model, image_f, "a {c} {s} {p}", c=c, s=s, p=p)
    return torch.stack([_best(model, image_f, "a {c} shape", c=c)[:, 0], _best(model, image_f, "a {s}", s=s)[:, 0],
                        _best(model, image_f, "a {c} shape {p}", c=c, p=p)[:, 1]], 1)


def predictions(model, pairs, n, seed, protocol="joint", muted=world.MUTED):
    """Zero-shot (colour, shape, place) of n fresh images of the given (colour, shape) pairs,
    and their true labels: two [n, 3] tensors."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(pairs), (n,), generator=gen)
    labels = torch.tensor([(*pairs[i], int(torch.randint(len(world.PLACES), (1,), generator=gen))) for i in pick])
    predicted = torch.cat([classify(model, world.draw(labels[i:i + 256], gen, muted=muted), protocol)
                           for i in range(0, n, 256)])
    return predicted, labels


def accuracy(model, pairs, n, seed, protocol="joint", muted=world.MUTED):
    """Per-attribute zero-shot accuracy on n fresh images of the given (colour, shape) pairs."""
    predicted, labels = predictions(model, pairs, n, seed, protocol, muted)
    return (predicted == labels).float().mean(0).tolist()


def report(model, seed, n=600, muted=world.MUTED):
    """Print zero-shot accuracy on fresh images of training pairs and of the held-out pairs."""
    if not isinstance(model, Clip):
        model = Clip(model, "trained", "cpu")
    for protocol in ("joint", "attribute"):
        for name, pairs in (("held-out images", world.TRAIN_PAIRS), ("held-out pairs", world.TEST_PAIRS)):
            colour, shape, place = accuracy(model, pairs, n, seed, protocol, muted)
            print(f"{protocol:9s} {name:15s}  colour {colour:6.1%}  shape {shape:6.1%}  position {place:6.1%}"
                  f"  (n={n})")
    colours, shapes = [], []
    for c, s in world.TEST_PAIRS:
        predicted, labels = predictions(model, [(c, s)], n // 4, seed, "joint", muted)
        right = (predicted == labels).float().mean(0).tolist()
        wrong = predicted[predicted[:, 0] != c, 0]
        mistaken = f" (else mostly {world.COLOUR_NAMES[int(wrong.mode().values)]})" if len(wrong) else ""
        colours.append(f"{world.COLOUR_NAMES[c]} {world.SHAPES[s]} {right[0]:.1%}{mistaken}")
        shapes.append(f"{world.COLOUR_NAMES[c]} {world.SHAPES[s]} {right[1]:.1%}")
    print(f"joint     colour by held-out pair: {', '.join(colours)}  (n={n // 4} each)")
    print(f"joint     shape by held-out pair: {', '.join(shapes)}  (n={n // 4} each)")
    # the shape alone, as "a {shape}" reads it, in solid colours far from every named one:
    # how far shape is told apart from colour
    shapes = [f"{s} {accuracy(model, [(world.RANDOM_COLOUR, i)], n // 4, seed, 'attribute', muted)[1]:.1%}"
              for i, s in enumerate(world.SHAPES)]
    print(f"attribute shape in random colours: {', '.join(shapes)}  (n={n // 4} each)")


@torch.no_grad()
def scene_report(model, seed, n=600, muted=world.MUTED):
    """Zero-shot figures of a model on fresh drawings, each a share with its 95% Wilson interval:
    single objects of the held-out (colour, shape) pairs (colour, shape and place, each read
    apart, "attribute", and by the best of the 120 captions, "joint": see classify), and n scenes
    of held-out combinations (also on flat backgrounds, as a page or a canvas shows them, and
    drawn another way, by PIL: scenes.draw_pil), of training ones, and with a pair the world never
    shows: binding, the true caption against its colour, shape and place swaps, and object
    recall, the true caption against both captions missing one object.
    Returns {test: {figure: [share, low, high]}}."""
    if not isinstance(model, Clip):
        model = Clip(model, "trained", "cpu")
    found = {}
    for protocol in ("attribute", "joint"):
        predicted, labels = predictions(model, world.TEST_PAIRS, n, seed, protocol, muted)
        right = (predicted == labels).sum(0).tolist()
        found[f"single objects, held-out pairs, {protocol}"] = {name: share(r, n) for name, r in
                                                                zip(("colour", "shape", "place"), right)}
    for name, training, unseen, plain in (("scenes, held-out combinations", False, False, 0.0),
                                          ("scenes, held-out combinations, flat backgrounds", False, False, 1.0),
                                          ("scenes, held-out combinations, drawn by PIL", False, False, None),
                                          ("scenes, training combinations", True, False, 0.0),
                                          ("scenes with a pair the world never shows", True, True, 0.0)):
        gen = torch.Generator().manual_seed(seed)
        some = scenes.random_scenes(n, gen, training=training, distinct=1.0, unseen=unseen)
        drawn = scenes.draw_pil(some) if plain is None else scenes.draw(some, gen, muted=muted, plain=plain)
        image_f = embed_images(model, F.interpolate(drawn, size=model.size, mode="bilinear", align_corners=False))
        wins = {kind: 0 for kind in scenes.KINDS}
        for scene, features in zip(some, image_f):  # each with distinct colours and shapes: all four kinds
            captions, right, kinds = readout.rivals(scenes.caption(scene))
            _, by_kind = readout.reads(features[None], embed_texts(model, list(captions)), right, kinds)
            for kind, read in by_kind.items():
                wins[kind] += bool(read)
        found[name] = {("recall (true vs one object dropped)" if kind == "drop" else f"binding: {kind} swap"):
                       share(wins[kind], n) for kind in scenes.KINDS}
    return found


def share(right, n):
    """[right / n, its 95% Wilson interval's low and high]."""
    return [right / n, *interval(right, n)]


def print_scenes(found):
    """Print scene_report's figures, a line a test."""
    for test, figures in found.items():
        print(f"{test}: " + ", ".join(f"{name} {v:.1%} ({lo:.1%}-{hi:.1%})" for name, (v, lo, hi) in figures.items()))


def hue_names(pixels):
    """The named hue nearest to each pixel's hue: [N] indices into CHROMATIC, pixels [N, 3]."""
    r, g, b = pixels.unbind(1)
    top = pixels.max(1).values
    spread = (top - pixels.min(1).values).clamp_min(1e-8)
    hues = 60 * torch.where(top == r, ((g - b) / spread) % 6,
                            torch.where(top == g, (b - r) / spread + 2, (r - g) / spread + 4))
    centres = torch.tensor([HUE_CENTRES[c] for c in world.CHROMATIC], dtype=torch.float)
    gap = (hues.view(-1, 1) - centres.view(1, -1)).abs()
    return torch.minimum(gap, 360 - gap).argmin(1)


def vivid_hues(image, top=0.05):
    """The named hues (indices into CHROMATIC) of the most saturated `top` of an image's pixels [3, H, W]."""
    pixels = image.flatten(1).t()  # [N, 3]
    chroma = pixels.max(1).values - pixels.min(1).values
    return hue_names(pixels[chroma.topk(max(1, round(top * len(pixels)))).indices])


def commonest_hue(image, top=0.05):
    """The commonest named hue among the most saturated `top` of an image's pixels [3, H, W]."""
    return world.CHROMATIC[int(vivid_hues(image, top).bincount(minlength=len(world.CHROMATIC)).argmax())]


def colour_centre(image, colour, min_chroma=0.2):
    """(x, y) in [0, 1] of the chroma-weighted centre of the pixels of hue `colour`, or None."""
    _, h, w = image.shape
    pixels = image.flatten(1).t()
    chroma = pixels.max(1).values - pixels.min(1).values
    weight = chroma * (hue_names(pixels) == world.CHROMATIC.index(colour)) * (chroma >= min_chroma)
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
    return [(c, world.SHAPES[(i + j) % len(world.SHAPES)], p) for i, c in enumerate(world.CHROMATIC) for j, p in enumerate(sides)]


def guide(model, text, seed, settings, shift):
    """What `normal.py TEXT --seed SEED` makes with these settings: the image in [0, 1], [3, H, W].

    shift: style_shift(model, settings) as normal.py computes it.
    """
    target = (embed_texts(model, [text])[0] + shift)[None]
    seed_everything(seed, announce=False)
    z = rollout(model, random_start(settings.size, model.device), target, settings)
    return quantize(to_image(z))[0].cpu()


def guided(args):
    """Measure what normal.py draws with a toy model: colour, side and (by a scorer) shape."""
    if args.grid:
        check_output(args.grid)
    model = load_clip(args.clip_model)
    scorer = load_clip(args.scorer) if args.scorer else None
    settings = Settings(size=args.size, steps=args.steps, cutn=args.cutn, style=not args.no_style)
    shift = style_shift(model, settings)
    # the scorer's captions of each (colour, place) in the three shapes, encoded once
    options = {} if scorer is None else {
        (colour, place): embed_texts(scorer, [world.caption(world.COLOUR_NAMES.index(colour), s, world.PLACE_NAMES.index(place))
                                                     for s in range(len(world.SHAPES))])
        for colour, _, place in guided_prompts()}
    runs = {"colour": [], "side": [], "shape": []}
    images = []
    began = time.time()
    for seed in range(args.seeds):
        for colour, shape, place in guided_prompts():
            text = world.caption(world.COLOUR_NAMES.index(colour), world.SHAPES.index(shape), world.PLACE_NAMES.index(place))
            image = guide(model, text, seed, settings, shift)
            images.append(image)
            hue = commonest_hue(image)
            side = on_side(colour_centre(image, colour), place)
            runs["colour"].append(hue == colour)
            runs["side"].append(side)
            line = f"seed {seed}  {text:32s} hue {hue:7s} side {'yes' if side else 'no ':3s}"
            if scorer is not None:
                big = F.interpolate(image[None], size=(scorer.size,) * 2, mode="bilinear", align_corners=False)
                judged = world.SHAPES[int((embed_images(scorer, big) @ options[colour, place].t()).argmax())]
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
        order = [seed * per_seed + i * 4 + j for i in range(len(world.CHROMATIC)) for j in range(4)
                 for seed in range(args.seeds)]
        big = F.interpolate(torch.stack(images)[order], scale_factor=3, mode="nearest")
        grid = make_grid(big, nrow=4 * args.seeds, padding=2, pad_value=1)
        array = grid.permute(1, 2, 0).mul(255).round().byte().numpy()
        atomic_write(args.grid, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
        print(f"saved {args.grid}")
