"""Teaching a toy CLIP scenes of two objects, in one of two ways.

"web": as CLIP was taught, from captions as the web writes them. An image's caption is often
partial (one of its objects, or both without their places), and a caption counts as true of
every image in the batch that shows what it names; the only negatives are the other images'
captions. A scene's colour swap is then almost never in the batch, so nothing asks the model
to bind colours to objects: its binding stays as weak as real CLIP's (ARO, Yuksekgonul et al.
2023). "complete": as the judges are taught (after Gurung, Hoffmann and Brox 2025). Every caption
names every object, a caption is true only of the very scene it names, and each image brings
its own hard negatives into the batch: the scene with its colours, shapes or places swapped
between the objects, and with one object dropped.
"""

import torch
import torch.nn.functional as F

from . import scenes, world

MODES = ("web", "complete")
WEB_COMPLETE = 0.3  # the share of complete captions in the web mode; the rest are partial


def web_caption(scene, gen):
    """A caption as the web might write it: the whole scene (WEB_COMPLETE of the time), else one of
    its objects, or its objects without their places ("a red circle and a blue square")."""
    pick = float(torch.rand(1, generator=gen))
    if pick < WEB_COMPLETE:
        return scenes.caption(scene)
    if pick < WEB_COMPLETE + (1 - WEB_COMPLETE) / 2:
        return world.caption(*scene[int(torch.randint(len(scene), (1,), generator=gen))])
    return scenes.JOIN.join(world.caption(c, s, None, "a {c} {s}") for c, s, _ in scene)


def named_objects(text):
    """The objects a caption names, each (colour, shape, place or None): from a scene's caption, an
    object's, or objects without places."""
    objects = []
    for part in text.split(scenes.JOIN):
        words = part.split()  # "a red circle on the left" / "a red circle"
        place = None
        if len(words) > 3:
            place = next(i for i, (_, _, said) in enumerate(world.PLACES.values()) if part.endswith(said))
        objects.append((world.COLOUR_NAMES.index(words[1]), world.SHAPES.index(words[2]), place))
    return objects


def true_of(texts, batch, complete):
    """[n_images, n_texts] bool: which caption is true of which scene. complete: only a caption
    naming exactly the scene's objects, places included; else any caption whose every object the
    scene shows (where it names a place, there)."""
    out = torch.zeros(len(batch), len(texts), dtype=torch.bool)
    for j, text in enumerate(texts):
        said = named_objects(text)
        for i, scene in enumerate(batch):
            shown = [any(c == o[0] and s == o[1] and (p == o[2] or p is None and not complete) for o in scene)
                     for c, s, p in said]
            out[i, j] = all(shown) and (not complete or len(said) == len(scene))
    return out


def multi_positive_loss(logits, positive):
    """The symmetric contrastive loss of logits [n_images, n_texts] where each image may have several
    true texts and each text several true images (positive: bool, the same shape): per row, the
    log of all its logits' softmax mass less that of its positives; rows with no positive are
    left out (a hard negative is true of no image)."""
    def side(logits, positive):
        has = positive.any(1)
        logits, positive = logits[has], positive[has]
        return (logits.logsumexp(1) - logits.masked_fill(~positive, -1e4).logsumexp(1)).mean()

    return (side(logits, positive) + side(logits.t(), positive.t())) / 2


def batch(n, gen, muted=world.MUTED, saturate=0.0, plain=0.0):
    """n training scenes drawn (a share `plain` on flat backgrounds) and augmented as the renderer
    sees images (flips swap left and right for both objects; no grayscale, which would unname the
    colours): (images, scenes as shown)."""
    some = scenes.random_scenes(n, gen)
    images = scenes.draw(some, gen, muted=muted, saturate=saturate, plain=plain)
    labels = scenes.labels_of(some)
    again = torch.Generator().set_state(gen.get_state())  # the same augmentation, for the second object
    shown, first = world.augment(images, labels[:, 0], gen, gray=0.0)
    _, second = world.augment(images, labels[:, 1], again, gray=0.0)
    flipped = [tuple(tuple(int(v) for v in obj) for obj in (first[i], second[i]) if obj[0] >= 0) for i in range(n)]
    return shown, flipped


def loss(model, images, shown, mode, gen, encode, tokens_of):
    """The scene loss of a batch (images [n, 3, S, S], shown: their scenes) in a mode of MODES.

    encode(tokens) gives the texts' features; tokens_of(texts) their tokens (in the training's
    vocabulary)."""
    complete = mode == "complete"
    texts = [scenes.caption(s) if complete else web_caption(s, gen) for s in shown]
    if complete:  # each image's hard negatives, into the batch
        texts += [scenes.caption(r) for s in shown for some in scenes.rivals(s).values() for r in some]
    texts = list(dict.fromkeys(texts))  # one column a caption
    text_f = F.normalize(encode(tokens_of(texts)), dim=-1)
    image_f = F.normalize(model.encode_image(world.normalize(images)), dim=-1)
    scale = model.logit_scale.exp().clamp(max=100)
    return multi_positive_loss(scale * image_f @ text_f.t(), true_of(texts, shown, complete))


def vocabulary_texts():
    """Texts whose tokens scene captions use beyond the world's captions (the word "and")."""
    return ["a red circle on the left and a blue square on the right", "a red circle and a blue square"]
