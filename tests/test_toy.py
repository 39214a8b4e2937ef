"""The drawn world, the shipped offline models (toy, toy-scorer, toy-judge) and what they guide."""

import copy
import numpy as np
import pytest
import torch
from PIL import Image
from clip.model import VisionTransformer

import common
import normal
from staged_clip import models, settings
from toy import cli as toy_cli, measure, training, world


def labels_of(*names):
    """Label rows [n, 3] from (colour, shape, place) names."""
    return torch.tensor([(world.COLOUR_NAMES.index(c), world.SHAPES.index(s), world.PLACE_NAMES.index(p))
                         for c, s, p in names])


# --- the world

def test_drawn_shape_has_its_colour_and_place():
    gen = torch.Generator().manual_seed(0)
    names = [("red", "circle", "left"), ("blue", "square", "right"), ("yellow", "triangle", "top"),
             ("green", "circle", "bottom")]
    images = world.draw(labels_of(*names), gen)
    for image, (colour, _, place) in zip(images, names):
        centre = measure.colour_centre(image, colour, min_chroma=0.5)  # the shape, not a greyed background
        assert measure.on_side(centre, place), (colour, place, centre)


def test_shapes_differ():
    # one draw, three shapes: the triangle covers least; circle and square differ at the corners
    masks = []
    for shape in world.SHAPES:
        gen = torch.Generator().manual_seed(0)
        image = world.draw(labels_of(("white", shape, "center")), gen)[0]
        masks.append(image.min(0).values > 0.9)
    circle, square, triangle = masks
    assert triangle.sum() < 0.7 * min(circle.sum(), square.sum())
    assert (circle ^ square).sum() > 0.15 * circle.sum()


def test_flip_swaps_left_and_right_and_grayscale_hides_colour():
    gen = torch.Generator().manual_seed(0)
    labels = labels_of(*[("red", "circle", "left")] * 64)
    images, seen = world.augment(world.draw(labels, gen), labels, gen)
    left, right = world.PLACE_NAMES.index("left"), world.PLACE_NAMES.index("right")
    assert (seen[:, 2] == left).any() and (seen[:, 2] == right).any()
    for image, label in zip(images, seen):
        x = measure.colour_centre(image, "red", min_chroma=0.3)
        if label[0] >= 0 and x is not None:  # grayscale images have no red to find
            assert (x[0] < 0.5) == (label[2] == left)
    gray = seen[:, 0] < 0
    assert torch.allclose(images[gray][:, 0], images[gray][:, 1])


def test_captions_and_compatibility():
    texts, attrs = world.all_captions()
    assert len(set(texts)) == len(texts)
    assert "an orange circle on the left" in texts and "a picture of a red square" in texts
    image = labels_of(("red", "square", "top"))
    ok = dict(zip(texts, world.compatible(image, attrs)[0].tolist()))
    assert ok["a red square at the top"] and ok["a red square"] and ok["a square at the top"]
    assert not ok["a red circle at the top"] and not ok["a blue square"] and not ok["a red shape on the left"]
    pink = torch.tensor([[len(world.COLOURS), world.SHAPES.index("square"), world.PLACE_NAMES.index("top")]])
    ok = dict(zip(texts, world.compatible(pink, attrs)[0].tolist()))  # a colour no caption names
    assert ok["a square at the top"] and not any(ok[f"a {c} square"] for c in ("red", "white", "black"))


def test_grayscale_images_say_nothing_about_colour_captions():
    texts, attrs = world.all_captions()
    labels = labels_of(("red", "square", "top"), ("blue", "circle", "left"))
    labels[1, 0] = -1  # the blue circle, turned grayscale
    logits = torch.randn(2, len(texts), generator=torch.Generator().manual_seed(0), requires_grad=True)
    training.caption_loss(logits, labels, attrs).backward()
    names_colour = attrs[:, 0] >= 0
    assert logits.grad[1, names_colour].abs().max() == 0  # neither pulled toward nor pushed from "blue"
    assert logits.grad[1, ~names_colour].abs().max() > 0  # "a circle on the left" still teaches
    assert logits.grad[0, names_colour].abs().max() > 0   # a coloured image learns its colour


def test_unseen_pairs_are_not_taught_as_impossible():
    texts, attrs = world.all_captions()
    unseen = training.unseen_pairs()
    assert {(world.COLOUR_NAMES[c], world.SHAPES[s]) for c, s in unseen.nonzero().tolist()} == world.HELD_OUT
    labels = labels_of(("purple", "square", "top"), ("red", "circle", "left"))
    at = {t: i for i, t in enumerate(texts)}

    def grads(unseen):
        logits = torch.randn(2, len(texts), generator=torch.Generator().manual_seed(0), requires_grad=True)
        training.caption_loss(logits, labels, attrs, unseen).backward()
        return logits.grad

    plain, open_world = grads(None), grads(unseen)
    # purple is never shown as a circle, nor a circle in purple: those captions are left out ...
    for image, text in ((0, "a circle"), (0, "a circle at the top"), (1, "a purple shape"), (1, "a purple shape on the left")):
        assert plain[image, at[text]] != 0 and open_world[image, at[text]] == 0, (image, text)
    # ... but not where the caption is false for another reason, nor where it is true
    for image, text in ((0, "a red circle"), (0, "a square"), (0, "a triangle"), (0, "a purple square at the top"),
                        (1, "a purple square"), (1, "a circle"), (1, "a blue shape")):
        assert open_world[image, at[text]] != 0, (image, text)


def test_coarse_images_say_nothing_about_shape_captions():
    texts, attrs = world.all_captions()
    labels = labels_of(("red", "square", "top"), ("blue", "circle", "left"))
    labels[1, 1] = -1  # the blue circle, shrunk too far to tell its shape
    logits = torch.randn(2, len(texts), generator=torch.Generator().manual_seed(0), requires_grad=True)
    training.caption_loss(logits, labels, attrs).backward()
    names_shape = attrs[:, 1] >= 0
    assert logits.grad[1, names_shape].abs().max() == 0
    assert logits.grad[1, ~names_shape].abs().max() > 0  # "a blue shape on the left" still teaches
    images = world.draw(labels_of(*[("red", "circle", "left")] * 64), torch.Generator().manual_seed(0))
    kept = torch.cat([world.augment(images, labels_of(*[("red", "circle", "left")] * 64), torch.Generator().manual_seed(s),
                                  shape_blind=24)[1][:, 1] for s in range(12)])
    assert 0.03 < (kept == -1).float().mean() < 0.4  # some coarse images, not all
    assert set(kept.tolist()) == {-1, world.SHAPES.index("circle")}


def test_patchwork_shapes_have_many_colours_and_no_colour_name():
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([[world.PATCHWORK, world.SHAPES.index("square"), world.PLACE_NAMES.index("center")]])
    image = world.draw(labels, gen)[0]
    inside = image[:, 26:38, 26:38].flatten(1).t()  # the middle of the square
    assert len({world.CHROMATIC[i] for i in measure.hue_names(inside).tolist()}) >= 4
    texts, attrs = world.all_captions()
    ok = dict(zip(texts, world.compatible(labels, attrs)[0].tolist()))
    assert ok["a square in the center"] and not any(ok[world.caption(c, 1, None, "a {c} {s}")] for c in range(len(world.COLOURS)))
    gen = torch.Generator().manual_seed(1)
    groups = world.random_labels(256, gen, patchwork=0.5)[:, 0].view(-1, 16)
    assert (groups == groups[:, :1]).all()  # groups share their colour
    assert 0.2 < (groups[:, 0] == world.PATCHWORK).float().mean() < 0.8


def test_random_colour_shapes_stay_far_from_every_named_colour():
    gen = torch.Generator().manual_seed(0)
    labels = world.random_labels(320, gen, random=0.5)
    odd = labels[:, 0] == world.RANDOM_COLOUR
    assert 0.2 < odd.float().mean() < 0.8 and set(labels[odd, 1].tolist()) == {0, 1, 2}  # every shape
    squares = torch.tensor([[world.RANDOM_COLOUR, world.SHAPES.index("square"), world.PLACE_NAMES.index("center")]] * 64)
    middle = world.draw(squares, gen)[:, :, 30:34, 30:34].mean((2, 3))  # [64, 3]: each square's colour
    named = torch.tensor(list(world.COLOURS.values()))
    assert torch.cdist(middle, named).min() >= world.FAR - 0.01
    assert middle.std(0).min() > 0.15  # spread over the colour space, not a few fixed colours
    texts, attrs = world.all_captions()
    ok = dict(zip(texts, world.compatible(squares[:1], attrs)[0].tolist()))
    assert ok["a square in the center"] and not any(ok[world.caption(c, 1, None, "a {c} {s}")] for c in range(len(world.COLOURS)))


def _distance_to_held_out_colours(colours, shape, low=1.0, high=2.0):
    """[n] least RGB distance of colours [n, 3] to the colours a held-out pair in `shape` is drawn in."""
    lines = []
    for c, s in world.HELD_OUT:
        if s == shape:
            named = torch.tensor(world.COLOURS[c])
            factors = torch.linspace(low, high, 33).view(-1, 1)
            lines.append((named.mean() + factors * (named - named.mean())).clamp(0, 1))
    if not lines:
        return torch.full((len(colours),), float("inf"))
    return torch.cdist(colours, torch.cat(lines)).min(1).values


def test_any_colour_shapes_are_never_a_held_out_pair_and_name_no_colour():
    gen = torch.Generator().manual_seed(0)
    shapes = torch.arange(3).repeat(400)  # circles, squares and triangles
    colours = world.colours_not_held_out(shapes, gen, 1.0, 2.0)
    named = torch.tensor(list(world.COLOURS.values()))
    for s, shape in enumerate(world.SHAPES):
        mine = colours[shapes == s]
        assert _distance_to_held_out_colours(mine, shape).min() >= world.FAR - 1e-4  # no purple circle, ...
        assert mine.std(0).min() > 0.2  # ... but anywhere else,
        assert torch.cdist(mine, named).min() < 0.1  # near named colours too
    # a circle may be near orange (orange circles are taught); a square may not
    orange = torch.tensor(world.COLOURS["orange"])
    assert (colours[shapes == 0] - orange).norm(dim=1).min() < world.FAR
    assert (colours[shapes == 1] - orange).norm(dim=1).min() >= world.FAR - 1e-4
    labels = world.random_labels(320, gen, random=0.0, anywhere=0.5)
    groups = labels[:, 0].view(-1, 16)
    assert (groups == groups[:, :1]).all() and 0.2 < (groups[:, 0] == world.ANY_COLOUR).float().mean() < 0.8
    circles = torch.tensor([[world.ANY_COLOUR, 0, world.PLACE_NAMES.index("center")]] * 64)
    middle = world.draw(circles, gen, saturate=1.0)[:, :, 30:34, 30:34].mean((2, 3))  # each circle's colour
    assert _distance_to_held_out_colours(middle, "circle").min() >= world.FAR - 0.01
    # their colour is neither true nor false: every caption naming one is left out, the rest taught
    texts, attrs = world.all_captions()
    unknown, positive = training.caption_masks(circles[:1], attrs)
    at = {t: i for i, t in enumerate(texts)}
    assert unknown[0, attrs[:, 0] >= 0].all() and not unknown[0, attrs[:, 0] < 0].any()
    assert positive[0, at["a circle in the center"]] and not positive[0, at["a square"]]


def test_train_nudges_from_nudge_from_and_draws_with_mirror_opacity(tmp_path, monkeypatch):
    calls, drawn = [], []
    real, real_draw = training.perturb, world.draw
    monkeypatch.setattr(training, "perturb", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(world, "draw", lambda *a, **k: drawn.append((k.get("mirror_opacity"), k.get("upright")))
                        or real_draw(*a, **k))
    toy_cli.main(["train", "--steps", "4", "--batch", "16", "--eval-n", "16", "--nudge-from", "0.5",
                  "--mirror-opacity", "0.4", "--stacked", "0.3", "--out", str(tmp_path / "m.pt")])
    assert len(calls) == 2  # steps 2 and 3 of 0..3
    assert drawn[:4] == [(0.4, 0.3)] * 4  # the training drawings (the zero-shot report's come after)


def test_mirrored_shapes_lie_on_both_sides_and_on_neither_in_captions():
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([[world.COLOUR_NAMES.index("red"), s, world.MIRRORED] for s in range(3)] * 4)
    images = world.draw(labels, gen)
    red = ((images - torch.tensor(world.COLOURS["red"]).view(1, 3, 1, 1)).norm(dim=1) < 0.2).float()  # [n, H, W]
    half = images.shape[-1] // 2
    left, right = red[..., :half].sum((1, 2)), red[..., half:].sum((1, 2))
    assert (left > 20).all() and ((left - right).abs() / left < 0.25).all()  # one copy a side
    texts, attrs = world.all_captions()
    ok = dict(zip(texts, world.compatible(labels[:1], attrs)[0].tolist()))
    assert ok["a red circle"] and ok["a red shape"] and not any(ok[f"a red circle {p[2]}"] for p in world.PLACES.values())
    _, seen = world.augment(images, labels, gen)
    assert (seen[:, 2] == world.MIRRORED).all()  # a flip leaves it on both sides
    placed = world.random_labels(640, torch.Generator().manual_seed(1), mirrored=0.5)[:, 2]
    assert 0.3 < (placed == world.MIRRORED).float().mean() < 0.7


def test_a_mirrored_copy_may_be_fainter():
    labels = torch.tensor([[world.COLOUR_NAMES.index("red"), s, world.MIRRORED] for s in range(3)] * 20)
    _, exact = world.draw(labels, torch.Generator().manual_seed(0), with_mask=True)
    assert torch.allclose(exact, exact.flip(-1), atol=1e-4)  # the default: an exact mirror image
    _, mask = world.draw(labels, torch.Generator().manual_seed(0), with_mask=True, mirror_opacity=0.3)
    half = mask.shape[-1] // 2
    left, right = mask[..., :half].amax((1, 2, 3)), mask[..., half:].amax((1, 2, 3))
    assert (left == 1).all() and (right >= 0.3).all() and (right < 0.95).any() and right.std() > 0.1
    # shapes placed on one side are not touched
    single = labels.clone()
    single[:, 2] = world.PLACE_NAMES.index("left")
    _, one = world.draw(single, torch.Generator().manual_seed(0), with_mask=True, mirror_opacity=0.3)
    assert one[..., half + 8:].max() == 0


def test_stacked_copies_lie_above_and_below_upright():
    labels = torch.tensor([[world.COLOUR_NAMES.index("red"), s, world.MIRRORED] for s in range(3)] * 8)
    _, mask = world.draw(labels, torch.Generator().manual_seed(0), with_mask=True, upright=1.0)
    mask = mask[:, 0]
    half = mask.shape[-1] // 2
    top, bottom = mask[:, :half].sum((1, 2)), mask[:, half:].sum((1, 2))
    assert (top > 20).all() and ((top - bottom).abs() / top < 0.25).all()  # one copy above, one below
    cols = mask.sum(1)  # both copies in the middle column, none on the left or the right
    assert (cols[:, :12].sum(1) == 0).all() and (cols[:, -12:].sum(1) == 0).all()
    rows = mask.sum(2)  # the lower triangle is upright too: it widens downward, as the upper one does
    for triangle in rows[2::3]:
        upper, lower = triangle[:half].nonzero().squeeze(1), half + triangle[half:].nonzero().squeeze(1)
        assert triangle[upper[-2]] > triangle[upper[1]] and triangle[lower[-2]] > triangle[lower[1]]
    _, both = world.draw(labels, torch.Generator().manual_seed(0), with_mask=True, upright=0.5)
    side_by_side = both[:, 0, :, :12].sum((1, 2)) > 0  # a mix: some left and right, some above and below
    assert 0 < side_by_side.sum() < len(labels)


def test_muted_backgrounds_are_greyer():
    labels = labels_of(*[("red", "circle", "left")] * 64)
    corner = lambda muted: world.draw(labels, torch.Generator().manual_seed(0), muted=muted)[:, :, :4, -4:]  # noqa: E731
    chroma = lambda ims: (ims.max(1).values - ims.min(1).values).mean()  # noqa: E731
    assert chroma(corner(0.7)) < 0.6 * chroma(corner(0.0))


def test_messy_backgrounds_are_vivid_blotches_and_leave_the_shape():
    labels = labels_of(*[("red", "circle", "left")] * 32)
    messy = torch.arange(32) % 2 == 0
    images = world.draw(labels, torch.Generator().manual_seed(0), muted=0.5, messy=messy)
    corner = images[:, :, :, -12:]  # the right side: background only
    spread = corner.flatten(2).std(-1).mean(1)  # [n]: how much the background varies
    assert spread[messy].min() > 0.25 and spread[messy].mean() > 2 * spread[~messy].mean()
    assert ((images[:, 0] - images[:, 1] > 0.6).flatten(1).sum(1) > 40).all()  # the red circle is drawn on both
    plain = world.draw(labels, torch.Generator().manual_seed(0), muted=0.5)
    assert torch.equal(plain[~messy], world.draw(labels, torch.Generator().manual_seed(0), muted=0.5,
                                               messy=torch.zeros(32, dtype=torch.bool))[~messy])


def test_saturate_makes_named_colours_purer_and_keeps_their_hue():
    labels = torch.tensor([[c, 1, 4] for c in range(len(world.COLOURS))] * 8
                          + [[len(world.COLOURS), 1, 4]] * 8)  # pink, which no caption names
    plain, mask = world.draw(labels, torch.Generator().manual_seed(0), with_mask=True)
    pure = world.draw(labels, torch.Generator().manual_seed(0), saturate=1.0)
    centre = (mask[:, 0] == 1).flatten(1).float().argmax(1)  # a pixel inside each shape
    pick = lambda ims: ims.flatten(2)[torch.arange(len(ims)), :, centre]  # noqa: E731 - [n, 3]
    chroma = lambda px: px.max(1).values - px.min(1).values  # noqa: E731
    chromatic = torch.tensor([world.COLOUR_NAMES[c] in world.CHROMATIC if c < len(world.COLOURS) else False
                              for c in labels[:, 0].tolist()])
    assert (chroma(pick(pure)) >= chroma(pick(plain)) - 1e-6)[chromatic].all()
    assert chroma(pick(pure))[chromatic].mean() > chroma(pick(plain))[chromatic].mean() + 0.1
    assert torch.equal(measure.hue_names(pick(pure)[chromatic]), measure.hue_names(pick(plain)[chromatic]))
    odd = labels[:, 0] == len(world.COLOURS)  # colours no caption names are left alone
    assert torch.allclose(pick(pure)[odd], pick(plain)[odd])
    assert torch.equal(world.draw(labels, torch.Generator().manual_seed(0), saturate=0.0), plain)
    # --desaturate: greyer, never purer, still the same hue
    grey = world.draw(labels, torch.Generator().manual_seed(0), desaturate=0.5)
    assert (chroma(pick(grey)) <= chroma(pick(plain)) + 1e-6)[chromatic].all()
    assert chroma(pick(grey))[chromatic].mean() < chroma(pick(plain))[chromatic].mean() - 0.1
    assert torch.equal(measure.hue_names(pick(grey)[chromatic]), measure.hue_names(pick(plain)[chromatic]))
    assert torch.allclose(pick(grey)[odd], pick(plain)[odd])


def test_vivid_twins_keep_the_shape_and_are_taught_to_fit_worse():
    import clip
    gen = torch.Generator().manual_seed(0)
    labels = world.random_labels(16, gen)
    images, mask = world.draw(labels, gen, with_mask=True)
    twins = world.vivid_backgrounds(images, mask, gen)
    inside, outside = mask.expand_as(images) == 1, mask.expand_as(images) == 0
    assert torch.equal(twins[inside], images[inside])
    chroma = lambda ims: (ims.max(1).values - ims.min(1).values)[outside[:, 0]].mean()  # noqa: E731
    assert chroma(twins) > 1.3 * chroma(images)
    spread = lambda ims: ims[:, :, :, -12:].flatten(2).std(-1).mean()  # noqa: E731 - over the right edge
    assert spread(twins) > 2 * spread(images)

    model = training.build(0).eval()  # running BatchNorm statistics: the twins do not change the others' features
    texts, attrs = world.all_captions()
    style = clip.tokenize([settings.STYLE_TEXT, settings.NEGATIVE_TEXT])
    tokens = clip.tokenize(texts)

    def loss(twins):
        text_f = torch.nn.functional.normalize(training.encode_short(model, tokens), dim=-1)
        return training.contrastive_loss(model, images, labels, text_f, attrs, style, twins=twins)

    with torch.no_grad():  # a twin the same as its image fits exactly as well: the term is softplus(0)
        assert float(loss(images[:4]) - loss(None)) == pytest.approx(np.log(2), abs=1e-4)

    def gap():  # how much better the images fit their captions than their twins
        with torch.no_grad():
            text_f = torch.nn.functional.normalize(training.encode_short(model, tokens), dim=-1)
            f = torch.nn.functional.normalize(model.encode_image(world.normalize(torch.cat([images[:8], twins[:8]]))), dim=-1)
            _, positive = training.caption_masks(labels[:8], attrs)
            return float(((f[:8] - f[8:]) @ text_f.t())[positive].mean())

    before = gap()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        (loss(twins[:8]) - loss(None)).backward()  # the twins' term alone
        optimizer.step()
    assert gap() > before + 0.004


def test_adversarial_nudges_are_small_and_raise_the_loss():
    import clip
    model = models.load_clip("toy").model
    gen = torch.Generator().manual_seed(0)
    labels = world.random_labels(32, gen)
    images = world.draw(labels, gen)
    texts, attrs = world.all_captions()
    tokens = clip.tokenize(texts)

    def loss(x):
        with torch.no_grad():
            image_f = torch.nn.functional.normalize(model.encode_image(world.normalize(x)), dim=-1)
            text_f = torch.nn.functional.normalize(training.encode_short(model, tokens), dim=-1)
            return float(training.caption_loss(50 * image_f @ text_f.t(), labels, attrs))

    eps = 0.05  # five times training's: the shipped guide has learnt to shrug off nudges of 0.01
    with torch.no_grad():
        text_f = torch.nn.functional.normalize(training.encode_short(model, tokens), dim=-1)
    nudged = training.perturb(model, images, labels, text_f, attrs, eps, gen)
    noisy = (images + (torch.rand(images.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
    assert (nudged - images).abs().max() <= eps + 1e-6 and not torch.equal(nudged, images)
    # a nudge against the model hurts it far more than random noise of the same size (a
    # nudge the other way would help it)
    clean = loss(images)
    assert loss(nudged) - clean > max(1e-3, 20 * abs(loss(noisy) - clean))
    # --nudged 0.5: the first half is nudged, the second half is left exactly as drawn
    half = training.perturb(model, images, labels, text_f, attrs, eps, gen, share=0.5)
    assert torch.equal(half[16:], images[16:]) and half.shape == images.shape
    assert (half[:16] - images[:16]).abs().max() <= eps + 1e-6 and not torch.equal(half[:16], images[:16])


def test_unnamed_shapes_keep_their_colour_and_no_shape_name():
    labels = torch.tensor([[world.COLOUR_NAMES.index("red"), world.OTHER_SHAPE, world.PLACE_NAMES.index("left")]] * 8)
    images = world.draw(labels, torch.Generator().manual_seed(0))
    named = world.draw(labels_of(*[("red", s, "left") for s in world.SHAPES]), torch.Generator().manual_seed(0))
    masks = lambda ims: ims[:, 0] - ims[:, 1] > 0.5  # noqa: E731 - red pixels
    for mask in masks(images):
        assert mask.any() and all((mask ^ other).sum() > 20 for other in masks(named))
    assert all(measure.on_side(measure.colour_centre(im, "red", min_chroma=0.5), "left") for im in images)
    texts, attrs = world.all_captions()
    ok = dict(zip(texts, world.compatible(labels[:1], attrs)[0].tolist()))
    assert ok["a red shape on the left"] and not any(ok[f"a red {s}"] for s in world.SHAPES)
    shapes = world.random_labels(512, torch.Generator().manual_seed(2), other=0.5)[:, 1]
    assert 0.3 < (shapes == world.OTHER_SHAPE).float().mean() < 0.7


def test_other_kinds_draw_only_the_kinds_asked_for():
    labels = torch.tensor([[world.COLOUR_NAMES.index("red"), world.OTHER_SHAPE, world.PLACE_NAMES.index("center")]] * 32)

    def masks(kinds):  # the same draws each time: only the kind of each shape may differ
        return world.draw(labels, torch.Generator().manual_seed(0), others=kinds, with_mask=True)[1][:, 0]

    one = {kind: masks((kind,)) for kind in world.OTHER_KINDS}
    for i, a in enumerate(world.OTHER_KINDS):
        for b in world.OTHER_KINDS[i + 1:]:
            assert all(not torch.equal(x, y) for x, y in zip(one[a], one[b])), (a, b)
    for kind, widest in (("wedge", "top"), ("diamond", "middle")):  # where each row of the shape is widest
        for widths in one[kind].sum(-1):
            rows = widths.nonzero().squeeze(1)
            at = (widths.argmax() - rows[0]) / (rows[-1] - rows[0])
            assert at < 0.2 if widest == "top" else 0.3 < at < 0.7, (kind, at)
    mixed = masks(("ring", "plus"))  # each is one of the two kinds asked for, and both occur
    is_ring = [torch.equal(m, r) for m, r in zip(mixed, one["ring"])]
    assert all(r or torch.equal(m, p) for r, m, p in zip(is_ring, mixed, one["plus"])) and 0 < sum(is_ring) < 32
    assert torch.equal(masks(world.OTHER_KINDS), world.draw(labels, torch.Generator().manual_seed(0), with_mask=True)[1][:, 0])


def test_hue_measures():
    image = torch.full((3, 10, 10), 0.5)
    image[:, :, :3] = torch.tensor([0.1, 0.2, 0.9]).view(3, 1, 1)  # a blue stripe on the left
    assert measure.commonest_hue(image) == "blue"
    x, y = measure.colour_centre(image, "blue")
    assert x == pytest.approx(0.15) and y == pytest.approx(0.5)
    assert measure.colour_centre(image, "red") is None and not measure.on_side(None, "left")


def test_a_compact_token_table_trains_like_the_full_one():
    import clip
    texts, _ = world.all_captions()
    tokens = clip.tokenize(texts[:40])
    full = training.build(0)
    compact = copy.deepcopy(full)
    table, used = training.compact_vocabulary(compact, tokens)
    small = used.remap(tokens)
    assert compact.token_embedding.num_embeddings < 100 and torch.equal(small.argmax(-1), tokens.argmax(-1))
    assert torch.allclose(training.encode_short(full, tokens), training.encode_short(compact, small))
    for model, t in ((full, tokens), (compact, small)):
        optimizer = torch.optim.AdamW(model.token_embedding.parameters(), lr=0.1, weight_decay=0.0)
        training.encode_short(model, t).pow(2).sum().backward()
        optimizer.step()
    used.restore(compact, table)
    assert compact.token_embedding.num_embeddings == full.token_embedding.num_embeddings
    assert torch.allclose(compact.token_embedding.weight, full.token_embedding.weight, atol=1e-6)
    assert not torch.equal(full.token_embedding.weight, training.build(0).token_embedding.weight)  # it did train


@pytest.mark.parametrize("width", [training.ARCH["vision_width"], 24])
def test_training_runs_and_saves_a_small_loadable_checkpoint(tmp_path, width):
    out = tmp_path / "m.pt"
    toy_cli.main(["train", "--steps", "2", "--batch", "16", "--eval-n", "16", "--width", str(width), "--out", str(out)])
    state = torch.load(out, weights_only=True)
    assert state["token_embedding.weight"].dtype == torch.float16
    used = (state["token_embedding.weight"] != 0).any(1).sum()
    assert 20 < used < 200  # only the world's words (and the style texts) keep their rows
    model = models.load_clip(str(out))
    assert model.size == world.SIDE and model.dim == training.ARCH["embed_dim"]
    assert model.model.visual.layer1[0].conv1.weight.shape[0] == width  # the checkpoint says its width
    assert out.stat().st_size < 8_000_000  # deflated: the zeroed token rows take almost nothing


def test_training_a_vision_transformer_tower_saves_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "vit.pt"
    toy_cli.main(["train", "--patch", "16", "--layers", "1", "--width", "64", "--steps", "2", "--batch", "16",
                  "--eval-n", "16", "--out", str(out)])
    model = models.load_clip(str(out))
    visual = model.model.visual
    assert isinstance(visual, VisionTransformer) and visual.conv1.weight.shape == (64, 3, 16, 16)
    assert len(visual.transformer.resblocks) == 1 and model.size == world.SIDE


@pytest.mark.parametrize("flags, says", [(["--patch", "8", "--width", "96"], "a multiple of 64 .* divides the image side"),
                                         (["--patch", "10"], "a multiple of 64 .* divides the image side"),
                                         (["--layers", "2"], "--layers 2 counts a vision transformer's blocks")])
def test_a_vision_transformer_of_an_impossible_shape_is_refused_before_any_work(tmp_path, flags, says):
    out = tmp_path / "vit.pt"
    with pytest.raises(SystemExit, match=says):
        toy_cli.main(["train", *flags, "--steps", "1", "--out", str(out)])
    assert not out.exists()


def test_ema_update_averages_weights_and_batchnorm_statistics():
    average, model = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(4.0)
    model.num_batches_tracked.fill_(7)
    training.ema_update(average, model, 0.75)
    assert torch.allclose(average.weight, torch.full((3,), 0.75 * 1 + 0.25 * 2))
    assert torch.allclose(average.running_mean, torch.full((3,), 0.25 * 4))
    assert int(average.num_batches_tracked) == 7
    assert torch.equal(model.weight, torch.full((3,), 2.0))  # the trained model is left alone


def test_training_with_ema_saves_the_averaged_weights(tmp_path):
    def distance_from_start(*extra):
        out = tmp_path / "m.pt"
        toy_cli.main(["train", "--steps", "2", "--batch", "16", "--eval-n", "16", "--out", str(out), *extra])
        state = torch.load(out, weights_only=True)
        start = dict(training.build(0).visual.named_parameters(prefix="visual"))
        return sum((state[k].float() - w).norm() for k, w in start.items())
    last, averaged = distance_from_start(), distance_from_start("--ema", "0.99")
    assert averaged < 0.05 * last  # two steps move an average with decay 0.99 by about 2% as far


def test_training_can_go_on_from_trained_weights(tmp_path):
    out = tmp_path / "m.pt"
    toy_cli.main(["train", "--init", "toy", "--steps", "1", "--batch", "16", "--eval-n", "16", "--lr", "1e-6",
              "--out", str(out)])
    state = torch.load(out, weights_only=True)
    start = torch.load(models.TOY_MODELS["toy"], weights_only=True)
    fresh = training.build(0).state_dict()
    for k in ("visual.conv1.weight", "transformer.resblocks.0.attn.in_proj_weight", "text_projection"):
        # a tiny step from the shipped weights, far nearer them than the fresh weights they were trained from
        assert (state[k].float() - start[k].float()).norm() < 0.05 * (fresh[k] - start[k].float()).norm()
    # the words the world uses kept their trained rows (restored into the full table)
    assert torch.equal(state["token_embedding.weight"] != 0, start["token_embedding.weight"] != 0)


def test_init_of_another_width_is_refused_before_any_work(tmp_path):
    out = tmp_path / "m.pt"
    with pytest.raises(SystemExit, match="--init toy is not a toy CLIP of --width 24: pass a file"):
        toy_cli.main(["train", "--init", "toy", "--width", "24", "--steps", "1", "--out", str(out)])
    assert not out.exists()


# --- the shipped models

@pytest.fixture(scope="module", params=["toy", "toy-scorer", "toy-judge"])
def shipped(request):
    return models.load_clip(request.param)


def test_shipped_files_are_small_fp16_state_dicts():
    for path in models.TOY_MODELS.values():
        assert path.stat().st_size <= 20 * 2**20
        state = torch.load(path, weights_only=True)
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}


# (colour, shape, place) accuracy each shipped model must keep on fresh drawings of the
# training pairs and of the held-out pairs (chance: 1/8, 1/3, 1/5); both tell held-out
# pairs' shapes well above chance
FLOORS = {"toy": ((0.95, 0.95, 0.95), (0.95, 0.7, 0.95)), "toy-scorer": ((0.95, 0.95, 0.95), (0.9, 0.6, 0.9)),
          "toy-judge": ((0.95, 0.95, 0.85), (0.85, 0.8, 0.8))}


def test_the_judge_is_another_architecture():
    judge, guide = models.load_clip("toy-judge").model.visual, models.load_clip("toy").model.visual
    assert isinstance(judge, VisionTransformer) and not isinstance(guide, VisionTransformer)


def test_shipped_models_classify_fresh_drawings(shipped):
    for pairs, floors in zip((world.TRAIN_PAIRS, world.TEST_PAIRS), FLOORS[shipped.name]):
        accuracy = measure.accuracy(shipped, pairs, n=120, seed=99)
        assert all(a >= f for a, f in zip(accuracy, floors)), (shipped.name, accuracy)


def test_guided_counts_every_run_and_each_run_ignores_how_many_follow(capsys, tmp_path):
    """`guided --seeds 2` is 48 runs whose first 24 are exactly `--seeds 1`'s (each run is
    seeded on its own, so a larger sample only adds runs), laid out 6 colours by 4 x 2."""
    import numpy as np
    from PIL import Image
    base = ["guided", "--scorer", "", "--steps", "3", "--threads", "1"]
    toy_cli.main(base + ["--seeds", "1", "--grid", str(tmp_path / "one.png")])
    one = capsys.readouterr().out
    toy_cli.main(base + ["--seeds", "2", "--grid", str(tmp_path / "two.png")])
    two = capsys.readouterr().out
    lines = lambda out: [l for l in out.splitlines() if l.startswith("seed ")]
    assert len(lines(one)) == 24 and len(lines(two)) == 48
    assert lines(two)[:24] == lines(one) and all(l.startswith("seed 1 ") for l in lines(two)[24:])
    assert "48 runs" in two and "coloured mass on the named side:" in two
    grid_one, grid_two = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("one", "two"))
    assert grid_two.shape == (6 * 98 + 2, 8 * 98 + 2, 3)  # 32-px images shown at 96 px, 2 px apart
    tile = lambda grid, row, col: grid[2 + 98 * row:98 * (row + 1), 2 + 98 * col:98 * (col + 1)]
    for row in range(6):
        for place in range(4):  # seed 0's image of each prompt, then seed 1's
            assert (tile(grid_one, row, place) == tile(grid_two, row, 2 * place)).all()
            assert (tile(grid_one, row, place) != tile(grid_two, row, 2 * place + 1)).any()


def test_zero_shot_reports_each_held_out_pair_and_shapes_in_random_colours(capsys):
    import re
    toy_cli.main(["zero-shot", "toy-scorer", "-n", "40"])
    out = capsys.readouterr().out
    held_out = sorted(f"{c} {s}" for c, s in world.HELD_OUT)
    for attribute in ("colour", "shape"):
        pairs = re.search(rf"{attribute} by held-out pair: (.*)  \(", out).group(1)
        assert sorted(re.findall(r"(\w+ \w+) [\d.]+%", pairs)) == held_out
    # a colour below 100% says what the pair was mistaken for: a named colour, not its own
    for pair, share, mistaken in re.findall(r"(\w+ \w+) ([\d.]+)%(?: \(else mostly (\w+)\))?",
                                            re.search(r"colour by held-out pair: (.*)  \(", out).group(1)):
        assert (float(share) < 100) == bool(mistaken), pair
        assert not mistaken or (mistaken in world.COLOUR_NAMES and mistaken != pair.split()[0])
    odd = dict(re.findall(r"(\w+) ([\d.]+)%", re.search(r"shape in random colours: (.*)  \(", out).group(1)))
    assert list(odd) == list(world.SHAPES)
    assert sum(float(v) for v in odd.values()) / 3 > 50  # the scorer tells shapes apart in any colour


def test_toy_name_is_the_shipped_file():
    by_name = models.load_clip("toy").model.state_dict()
    by_path = models.load_clip(str(models.TOY_MODELS["toy"])).model.state_dict()
    assert all(torch.equal(by_name[k], by_path[k]) for k in by_name)


def test_missing_shipped_file_says_how_to_restore(monkeypatch, tmp_path):
    monkeypatch.setitem(models.TOY_MODELS, "toy", tmp_path / "gone.pt")
    with pytest.raises(common.UserError, match="missing.*git checkout"):
        models.load_clip("toy")


# --- what the toy model guides (normal.py's defaults, one seed)

def guided(prompt, name):
    normal.main([prompt, "--clip-model", "toy", "--seed", "0", "--out", name])
    return torch.from_numpy(np.array(Image.open(name).convert("RGB"))).permute(2, 0, 1).float() / 255


def hue_share(image, colour, top=0.2):
    """The share of an image's most saturated `top` of pixels whose hue is the named colour."""
    return float((measure.vivid_hues(image, top) == world.CHROMATIC.index(colour)).float().mean())


def test_guided_colour_follows_the_prompt():
    # compared within one seed, by hue among the most vivid pixels: the background's tint
    # (which varies with the model) would swamp a mean over all pixels
    red, blue = guided("a red circle", "red.png"), guided("a blue circle", "blue.png")
    assert hue_share(red, "red") > hue_share(blue, "red") + 0.2
    assert hue_share(blue, "blue") > hue_share(red, "blue") + 0.2


def test_guided_place_follows_the_prompt():
    left = measure.colour_centre(guided("a red circle on the left", "left.png"), "red")
    right = measure.colour_centre(guided("a red circle on the right", "right.png"), "red")
    assert left is not None and right is not None
    assert left[0] < right[0]


def roughness(image):
    """Mean absolute difference between neighbouring pixels of a saved image [3, H, W], taken
    on the optimized tensor's grid (the PNG is that grid upscaled)."""
    step = image.shape[-1] // common.SCRIPT_DEFAULTS["normal.py"]["size"]
    image = image[:, ::step, ::step]
    return float((image[:, 1:] - image[:, :-1]).abs().mean() + (image[:, :, 1:] - image[:, :, :-1]).abs().mean()) / 2


def test_guided_images_are_smooth_not_noise():
    # a guide trained without nudged images paints vivid pixel noise (its images measured
    # 0.045 to 0.084 here); the shipped guide paints smooth shapes (0.025 to 0.047)
    images = [guided("a green square at the top", "green.png"), guided("a purple triangle on the right", "purple.png")]
    assert sum(map(roughness, images)) / len(images) < 0.045


def test_style_shaping_is_neutral_for_the_guide():
    # the guide was taught that the two style texts mean the same: shaping adds ~nothing
    model = models.load_clip("toy")
    assert common.style_shift(model).norm() < 0.05


def test_train_defaults_are_the_shipped_recipe():
    """The README's training command (the defaults, --seed 0) is the one that made models/toy.pt."""
    shipped = ["--mirror-opacity", "0.3", "--other-shapes", "0.2", "--other-kinds", "diamond,wedge",
               "--any-colours", "0.3", "--mirrored", "0.15", "--adversarial", "0.01", "--nudge-from", "0.33",
               "--saturate", "1", "--steps", "2400", "--batch", "128"]
    assert toy_cli.parse_args(["train"]) == toy_cli.parse_args(["train", *shipped])
