"""Scenes: one or two objects of the drawn world, each a named colour, shape and place, two never
overlapping; their captions in a fixed grammar, and the swapped captions that test binding.

A scene is a tuple of objects, each (colour, shape, place) as indices of world.COLOUR_NAMES,
world.SHAPES and world.PLACE_NAMES. Two objects stand at opposite places, on the left and on
the right, or at the top and at the bottom, and are smaller than the world's single shapes
(RADIUS): with their centres jittered by at most JITTER / 2, the nearest two can come is 0.46 -
JITTER = 0.38 of the side apart, while each reaches at most RADIUS[1] = 0.16 from its centre
toward the other, so they never touch. A scene's caption names every object in drawing order:
"a red circle on the left and a blue square on the right"; training draws both orders. No
scene shows a (colour, shape) pair the world never shows (world.HELD_OUT, a green triangle).
"""

import itertools

import torch

from staged_clip.structure import JOIN

from . import world

OPPOSITE = (("left", "right"), ("top", "bottom"))  # the places two objects stand at
RADIUS = (0.10, 0.16)  # a scene object's size (the outline's r, as a share of the side)
JITTER = 0.08  # the full range of a scene object's centre jitter, per axis
# (colour, shape, place) that no training scene shows: the scenes' held-out combinations
HELD_OUT_OBJECTS = (("yellow", "square", "top"), ("blue", "circle", "right"), ("red", "triangle", "bottom"),
                    ("black", "square", "left"), ("white", "circle", "top"), ("orange", "triangle", "left"))
# (colour, shape) pairs that no training scene shows together: the held-out pairings
HELD_OUT_PAIRINGS = ((("red", "circle"), ("blue", "square")), (("green", "square"), ("yellow", "circle")),
                     (("purple", "triangle"), ("orange", "circle")), (("black", "circle"), ("white", "square")),
                     (("blue", "triangle"), ("red", "square")), (("yellow", "triangle"), ("green", "circle")))
KINDS = ("colour", "shape", "place", "drop")  # the kinds of a scene's rivals (swaps, and an object dropped)


def named(obj):
    """(colour, shape, place) indices as names."""
    c, s, p = obj
    return world.COLOUR_NAMES[c], world.SHAPES[s], world.PLACE_NAMES[p]


def indices(names):
    """(colour, shape, place) names as indices."""
    c, s, p = names
    return world.COLOUR_NAMES.index(c), world.SHAPES.index(s), world.PLACE_NAMES.index(p)


def caption(scene):
    """A scene's caption: its objects' captions in order, joined by " and "."""
    return JOIN.join(world.caption(*obj) for obj in scene)


def object_captions():
    """{caption of one object: (colour, shape, place)} for the world's 120 objects."""
    return {world.caption(c, s, p): (c, s, p) for c in range(len(world.COLOURS)) for s in range(len(world.SHAPES))
            for p in range(len(world.PLACES))}


def parse(text):
    """The scene a caption of this grammar names (one object, or two at opposite places), or None."""
    objects = object_captions()
    parts = text.strip().split(JOIN)
    if not 1 <= len(parts) <= 2 or any(part not in objects for part in parts):
        return None
    scene = tuple(objects[part] for part in parts)
    if len(scene) == 2 and not opposite(scene[0][2], scene[1][2]):
        return None
    return scene


def opposite(p, q):
    """Whether two places (indices) are a pair two objects may stand at."""
    return {world.PLACE_NAMES[p], world.PLACE_NAMES[q]} in [set(pair) for pair in OPPOSITE]


def rivals(scene):
    """The scenes a scene's caption is tested against, by kind: its colours swapped between the
    objects, its shapes swapped, its places swapped, and each object dropped (a kind is left out
    where the swap changes nothing: two objects of one colour have no colour swap). One object:
    no rivals."""
    if len(scene) != 2:
        return {}
    (c1, s1, p1), (c2, s2, p2) = scene
    found = {"colour": [((c2, s1, p1), (c1, s2, p2))] if c1 != c2 else [],
             "shape": [((c1, s2, p1), (c2, s1, p2))] if s1 != s2 else [],
             "place": [((c1, s1, p2), (c2, s2, p1))],
             "drop": [(scene[0],), (scene[1],)]}
    return {kind: found[kind] for kind in KINDS if found[kind]}


def held_out(scene):
    """Whether a scene uses a held-out combination: an object of HELD_OUT_OBJECTS or a held-out pairing."""
    names = [named(obj) for obj in scene]
    pairs = {(c, s) for c, s, _ in names}
    return any(n in HELD_OUT_OBJECTS for n in names) or any(set(p) <= pairs and len(pairs) == 2
                                                             for p in HELD_OUT_PAIRINGS)


def unseen_pair(scene):
    """Whether a scene has an object of a (colour, shape) pair that the world never shows at all
    (world.HELD_OUT: a green triangle): no scene of such is taught, none is among the prompts,
    and the zero-shot test reports them apart, as a harder question than held-out combinations."""
    return any((c, s) in world.HELD_OUT for c, s, _ in (named(obj) for obj in scene))


def all_scenes():
    """Every scene of two objects (in both orders) at opposite places, distinct in colour and shape."""
    found = []
    for first, second in OPPOSITE:
        for a, b in ((first, second), (second, first)):
            pa, pb = world.PLACE_NAMES.index(a), world.PLACE_NAMES.index(b)
            for (c1, s1), (c2, s2) in itertools.permutations(itertools.product(range(len(world.COLOURS)),
                                                                                 range(len(world.SHAPES))), 2):
                if c1 != c2 and s1 != s2:
                    found.append(((c1, s1, pa), (c2, s2, pb)))
    return found


def random_scenes(n, gen, training=True, distinct=0.8, unseen=False):
    """n random two-object scenes (training: none with a held-out combination; else only such), none
    with a pair the world never shows (unseen: only such, held out or not).

    A share `distinct` have objects of different colours and shapes; the rest may share one."""
    out = []
    while len(out) < n:
        pair = OPPOSITE[int(torch.randint(len(OPPOSITE), (1,), generator=gen))]
        if float(torch.rand(1, generator=gen)) < 0.5:
            pair = pair[::-1]  # both orders
        c = torch.randint(len(world.COLOURS), (2,), generator=gen).tolist()
        s = torch.randint(len(world.SHAPES), (2,), generator=gen).tolist()
        scene = tuple((c[k], s[k], world.PLACE_NAMES.index(pair[k])) for k in range(2))
        if float(torch.rand(1, generator=gen)) < distinct and (c[0] == c[1] or s[0] == s[1]):
            continue
        if unseen_pair(scene) != unseen or (not unseen and held_out(scene) != (not training)):
            continue
        out.append(scene)
    return out


def labels_of(scenes):
    """Scenes as labels [n, 2, 3] (colour, shape, place of each object; -1 for a missing second)."""
    return torch.tensor([[*scene[0]] + [*(scene[1] if len(scene) > 1 else (-1, -1, -1))] for scene in scenes]
                        ).view(len(scenes), 2, 3)


def draw(scenes, gen, side=world.SIDE, muted=world.MUTED, saturate=0.0, with_masks=False, plain=0.0):
    """Images [n, 3, side, side] in [0, 1] of scenes (one or two objects each), at their places, at
    RADIUS, on the world's muted backgrounds, or for a share `plain` on one flat colour (plain_colours).
    with_masks: also each object's coverage [n, 2, side, side] (zero for a missing second object)."""
    labels = labels_of(scenes)
    n = len(scenes)
    bg = world.background(labels[:, 0], gen, side, muted, None)
    if plain:
        flat = torch.rand(n, generator=gen) < plain
        bg = torch.where(flat.view(n, 1, 1, 1), plain_colours(labels, gen).view(n, 3, 1, 1), bg)
    images, masks = bg, torch.zeros(n, 2, side, side)
    for k in range(2):
        present = labels[:, k, 0] >= 0
        own = labels[:, k].clamp(min=0)
        outline = world.Outline(own, gen, world.OTHER_KINDS, 0.0)
        centres = torch.tensor([world.PLACES[name][:2] for name in world.PLACE_NAMES])[own[:, 2]]
        outline.centre = centres + (torch.rand(n, 2, generator=gen) - 0.5) * JITTER
        outline.r = (RADIUS[0] + (RADIUS[1] - RADIUS[0]) * torch.rand(n, generator=gen)).view(n, 1, 1)
        mask = outline.mask(side, gen, 1.0) * present.view(n, 1, 1, 1)  # [n, 1, side, side]
        fill = world.foreground(own, gen, side, saturate, 0.0)
        images = images * (1 - mask) + fill * mask
        masks[:, k] = mask[:, 0]
    images = images.clamp(0, 1)
    return (images, masks) if with_masks else images


def sample_prompts(seed=0, scenes=40, singles=10, test=20, test_held_out=8):
    """The scene prompt lists, by a seeded sample: (a list to learn and choose on: `scenes` scenes of
    training combinations and `singles` single objects; a test list: `test` other scenes, of which
    `test_held_out` use a held-out combination). Every scene has objects of two colours and two
    shapes; no scene is in both lists, in either order."""
    gen = torch.Generator().manual_seed(seed)
    every = all_scenes()
    order = torch.randperm(len(every), generator=gen).tolist()
    learn, test_seen, test_held, taken = [], [], [], set()
    for i in order:
        scene = every[i]
        key = frozenset(scene)  # the same scene in the other order counts as the same
        if key in taken or any(unseen_pair(r) for r in [scene, *itertools.chain(*rivals(scene).values())]):
            continue  # a judge could not tell this scene from a swap that no image ever showed
        if held_out(scene):
            if len(test_held) < test_held_out:
                test_held.append(scene)
                taken.add(key)
        elif len(learn) < scenes:
            learn.append(scene)
            taken.add(key)
        elif len(test_seen) < test - test_held_out:
            test_seen.append(scene)
            taken.add(key)
    objects = [(c, s, p) for c, s in world.TRAIN_PAIRS for p in range(len(world.PLACES))]
    ones = [objects[i] for i in torch.randperm(len(objects), generator=gen)[:singles].tolist()]
    return [caption(s) for s in learn] + [world.caption(*o) for o in ones], \
        [caption(s) for s in test_held + test_seen]


PROMPT_HEADERS = {
    "learn": "# Prompts of the scene world (toy/scenes.py) for learning and choosing anything: {scenes} scenes of\n"
             "# two objects (training combinations only) and {singles} single objects. Made by a seeded sample:\n"
             "# python3 -m toy prompts --seed {seed}\n",
    "test": "# Test prompts of the scene world, which choose nothing: {test} scenes, none in prompts_scenes.txt\n"
            "# (in either order), the first {held} using a held-out combination (toy/scenes.py). Made by\n"
            "# python3 -m toy prompts --seed {seed}\n",
}


def plain_colours(labels, gen, far=world.FAR):
    """A flat background colour [n, 3] for each scene (labels [n, 2, 3]): white, black or mid grey a
    quarter of the time each, else any colour, each at least `far` (RGB) from its objects' colours,
    so that a scene drawn on a page or a canvas, not only on the world's muted grounds, reads alike."""
    named = torch.tensor(list(world.COLOURS.values()))
    fixed = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    out = torch.empty(len(labels), 3)
    for i, objects in enumerate(labels):
        own = named[objects[objects[:, 0] >= 0, 0]]  # [k, 3]
        while True:
            pick = int(torch.randint(4, (1,), generator=gen))
            colour = fixed[pick] if pick < 3 else torch.rand(3, generator=gen)
            if torch.cdist(colour[None], own).min() >= far:
                out[i] = colour
                break
    return out


PIL_BACKGROUNDS = ("white", "black", (128, 128, 128))  # draw_pil's flat grounds, in turn


def draw_pil(scenes, side=world.SIDE, supersample=4):
    """Scenes drawn another way, for checking the models on images no code of the world drew:
    plain PIL shapes in the world's named colours at the centre of their places (radius 0.13, the
    middle of RADIUS), on white, black and grey in turn (PIL_BACKGROUNDS), drawn supersample times
    larger and downscaled. Images [n, 3, side, side] in [0, 1]."""
    import numpy as np
    from PIL import Image, ImageDraw
    big, out = side * supersample, []
    for k, scene in enumerate(scenes):
        image = Image.new("RGB", (big, big), PIL_BACKGROUNDS[k % len(PIL_BACKGROUNDS)])
        pen = ImageDraw.Draw(image)
        for obj in scene:
            colour, shape, place = named(obj)
            x, y = (v * big for v in world.PLACES[place][:2])
            r, fill = 0.13 * big, tuple(round(v * 255) for v in world.COLOURS[colour])
            if shape == "circle":
                pen.ellipse([x - r, y - r, x + r, y + r], fill=fill)
            elif shape == "square":
                pen.rectangle([x - 0.88 * r, y - 0.88 * r, x + 0.88 * r, y + 0.88 * r], fill=fill)
            else:
                pen.polygon([(x, y - r), (x - r, y + 0.75 * r), (x + r, y + 0.75 * r)], fill=fill)
        small = np.asarray(image.resize((side, side), Image.BILINEAR), dtype=np.float32) / 255
        out.append(torch.from_numpy(small).permute(2, 0, 1))
    return torch.stack(out)


# the pixel readout: a pixel is in a named colour when that is its nearest of the world's colours
# (named and unnamed) within PIXEL_NEAR; an object's colour is present on its side when at least
# PIXEL_SHARE of the image is in it there, and lies there when there is at least PIXEL_MAJORITY
# times as much of it there as on the opposite side (for "in the center": its middle half a side,
# against the rest)
PIXEL_NEAR = 0.3
PIXEL_SHARE = 0.01
PIXEL_MAJORITY = 2
SIDE_OF = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "center": "rim"}


def region(name, height, width):
    """A place's part of the image, [H, W] bool: a half for a side, the middle half a side for the
    center, and "rim" what lies outside that middle."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    middle = (abs(2 * x + 1 - width) < width / 2) & (abs(2 * y + 1 - height) < height / 2)
    return {"left": 2 * x + 1 < width, "right": 2 * x + 1 > width, "top": 2 * y + 1 < height,
            "bottom": 2 * y + 1 > height, "center": middle, "rim": ~middle}[name]


def pixel_reads(images, scene):
    """Whether each image [n, 3, H, W] in [0, 1] shows its scene by its pixels alone: every named
    colour present on its named side and at least twice as much there as on the opposite side.
    [n] bool. It knows nothing of shapes, and nothing of CLIP."""
    n, _, height, width = images.shape
    palette = world.PALETTE.to(images)  # [C, 3]: the named colours first
    distances = torch.cdist(images.permute(0, 2, 3, 1).reshape(n, -1, 3), palette[None].expand(n, -1, -1))
    nearest, index = distances.min(-1)  # [n, H * W]
    read = torch.ones(n, dtype=torch.bool, device=images.device)
    for c, _, p in scene:
        mine = ((index == c) & (nearest < PIXEL_NEAR)).view(n, height, width).float()
        place = world.PLACE_NAMES[p]
        here = (mine * region(place, height, width).to(mine)).mean((-2, -1))
        there = (mine * region(SIDE_OF[place], height, width).to(mine)).mean((-2, -1))
        read &= (here >= PIXEL_SHARE) & (here >= PIXEL_MAJORITY * there)
    return read
