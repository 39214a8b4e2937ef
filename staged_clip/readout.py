"""The readout: whether a judge reads an image as its prompt, that is, whether the prompt is the
judge's best caption for it among the prompt's rivals. This is CLIP R-precision (Park et al.,
NeurIPS 2021) made exact by a world whose every caption is known: a prompt of the drawn world
(toy/world.py) has as rivals the world's 120 captions "a {colour} {shape} {place}", so a readout
is right only when colour, shape and place all are. A distance can improve while the content
is still wrong; the readout says whether it is.
"""

import functools


@functools.cache
def world_captions():
    """The drawn world's captions of one object, "a {colour} {shape} {place}": 120 of them."""
    from toy import world  # the world's words live with its drawing
    return tuple(world.caption(c, s, p) for c in range(len(world.COLOURS)) for s in range(len(world.SHAPES))
                 for p in range(len(world.PLACES)))


def rivals(text):
    """The captions a judge picks among for a prompt, the prompt one of them: (captions, the prompt's
    index), or None where the prompt is none of the world's captions (its readout is undefined)."""
    captions = world_captions()
    return (captions, captions.index(text.strip())) if text.strip() in captions else None


def reads(image_embeds, caption_embeds, right):
    """Whether each image's nearest caption is the right one: [n] bool.

    image_embeds [n, D] and caption_embeds [R, D] are unit vectors (so the largest dot product
    is the nearest); right: the prompt's index among the captions. E.g. an image embedded
    exactly as caption 3 reads as 3.
    """
    return (image_embeds @ caption_embeds.T).argmax(-1) == right
