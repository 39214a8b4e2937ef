"""The readout: whether a judge reads an image as its prompt, that is, whether the prompt is the
judge's best caption for it among the prompt's rivals. This is CLIP R-precision (Park et al.,
NeurIPS 2021) made exact by a world whose every caption is known. A prompt of one object of the
drawn world (toy/world.py) has as rivals the world's 120 captions "a {colour} {shape} {place}",
so it is read right only when colour, shape and place all are. A scene of two objects
(toy/scenes.py) has as rivals its swaps, colours, shapes or places exchanged between its
objects, and itself with one object dropped: read right when it beats every one, and per kind
of rival, so that binding and object recall show apart. A distance can improve while the
content is still wrong; the readout says whether it is.
"""

import functools

OBJECT = "object"  # the kind of every rival of a one-object prompt: another of the world's captions


@functools.cache
def world_captions():
    """The drawn world's captions of one object, "a {colour} {shape} {place}": 120 of them."""
    from toy import world  # the world's words live with its drawing
    return tuple(world.caption(c, s, p) for c in range(len(world.COLOURS)) for s in range(len(world.SHAPES))
                 for p in range(len(world.PLACES)))


def rivals(text):
    """The captions a judge picks among for a prompt, the prompt one of them: (captions, the prompt's
    index, each caption's kind), or None where the prompt is none of the world's (its readout is
    undefined). Kinds: OBJECT for a one-object prompt's 120; a scene's swaps by scenes.KINDS."""
    text = text.strip()
    captions = world_captions()
    if text in captions:
        return captions, captions.index(text), (OBJECT,) * len(captions)
    from toy import scenes
    scene = scenes.parse(text)
    if scene is None or len(scene) != 2:
        return None
    found = [(kind, scenes.caption(rival)) for kind, some in scenes.rivals(scene).items() for rival in some]
    return (text, *[c for _, c in found]), 0, ("prompt", *[k for k, _ in found])


def pixel_reads(images, text):
    """Whether each image [n, 3, H, W] in [0, 1] of a drawn-world prompt shows it by its pixels alone
    (toy.scenes.pixel_reads: every named colour present on its named side, clearly more there
    than on the opposite side): [n] bool. No CLIP takes part."""
    from toy import scenes
    return scenes.pixel_reads(images, scenes.parse(text.strip()))


def reads(image_embeds, caption_embeds, right, kinds=None):
    """Whether each image's nearest caption is the right one: [n] bool; with kinds (each caption's),
    also {kind: [n] bool}, whether the right caption beats every caption of that kind.

    image_embeds [n, D] and caption_embeds [R, D] are unit vectors (so the largest dot product
    is the nearest); right: the prompt's index among the captions. E.g. an image embedded
    exactly as caption 3 reads as 3.
    """
    near = image_embeds @ caption_embeds.T  # [n, R]
    overall = near.argmax(-1) == right
    if kinds is None:
        return overall
    by_kind = {}
    for kind in dict.fromkeys(k for i, k in enumerate(kinds) if i != right):
        columns = [i for i, k in enumerate(kinds) if k == kind and i != right]
        by_kind[kind] = near[:, right] > near[:, columns].max(-1).values
    return overall, by_kind
