"""The scene world: two objects drawn where and as their caption says, never overlapping; captions
and their swaps; held-out combinations; the prompt lists; the readout of a scene prompt."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_evaluate, tiny_clip_model
from staged_clip import prompts, readout
from toy import scenes, world


def scene_of(text):
    found = scenes.parse(text)
    assert found is not None, text
    return found


def test_captions_name_every_object_in_order_and_parse_back():
    scene = scene_of("a red circle on the left and a blue square on the right")
    assert [scenes.named(obj) for obj in scene] == [("red", "circle", "left"), ("blue", "square", "right")]
    assert scenes.caption(scene) == "a red circle on the left and a blue square on the right"
    assert scenes.caption(scene[::-1]) == "a blue square on the right and a red circle on the left"
    assert scenes.caption(scene_of("an orange triangle at the top and a red circle at the bottom")).startswith("an ")
    for bad in ("a red circle on the left and a blue square at the top",  # not opposite places
                "a red circle on the left and", "a red apple and a blue square on the right",
                "a red circle on the left and a blue square on the right and a red circle at the top"):
        assert scenes.parse(bad) is None, bad


def test_the_rivals_are_what_they_say():
    scene = scene_of("a red circle on the left and a blue square on the right")
    found = {kind: [scenes.caption(s) for s in some] for kind, some in scenes.rivals(scene).items()}
    assert found == {"colour": ["a blue circle on the left and a red square on the right"],
                     "shape": ["a red square on the left and a blue circle on the right"],
                     "place": ["a red circle on the right and a blue square on the left"],
                     "drop": ["a red circle on the left", "a blue square on the right"]}
    same_colour = scene_of("a red circle at the top and a red square at the bottom")
    assert "colour" not in scenes.rivals(same_colour) and "shape" in scenes.rivals(same_colour)
    for some in scenes.rivals(scene).values():
        for rival in some:
            assert rival != scene and sorted(rival) != sorted(scene)  # another scene, in any order


def drawn(n=200, seed=0, largest=False):
    gen = torch.Generator().manual_seed(seed)
    some = scenes.random_scenes(n, gen, distinct=1.0)
    if largest:  # every object at the largest size and jittered toward the other: the nearest two can come
        radius, jitter = scenes.RADIUS, scenes.JITTER
        scenes.RADIUS, scenes.JITTER = (radius[1], radius[1]), jitter
        try:
            return some, scenes.draw(some, gen, with_masks=True)
        finally:
            scenes.RADIUS = radius
    return some, scenes.draw(some, gen, with_masks=True)


def test_two_objects_never_overlap():
    for largest in (False, True):
        _, (images, masks) = drawn(400, seed=1, largest=largest)
        assert images.shape == (400, 3, world.SIDE, world.SIDE)
        assert (masks[:, 0] * masks[:, 1]).max() == 0  # not one pixel covered by both
        assert (masks.flatten(2).sum(-1) > 20).all()  # and both there


def test_each_object_is_drawn_in_its_colour_at_its_place_in_its_shape():
    some, (images, masks) = drawn(120, seed=2)
    side = world.SIDE
    pos = (torch.arange(side) + 0.5) / side
    for i, scene in enumerate(some):
        for k, (c, s, p) in enumerate(scene):
            mask = masks[i, k]
            inside = mask > 0.99
            colour = images[i][:, inside].mean(1)  # the object's own pixels
            assert (colour - torch.tensor(world.COLOURS[world.COLOUR_NAMES[c]])).abs().max() < 0.15, (scene, k)
            x = (mask.sum(0) * pos).sum() / mask.sum()
            y = (mask.sum(1) * pos).sum() / mask.sum()
            place = world.PLACE_NAMES[p]
            want = {"left": x < 0.4, "right": x > 0.6, "top": y < 0.4, "bottom": y > 0.6}[place]
            assert want, (scene, k, float(x), float(y))
            rows, cols = inside.any(1).nonzero(), inside.any(0).nonzero()
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            fill = float(inside.sum() / box)  # a square fills its box, a circle pi/4 of it, a triangle half
            shape = min(("circle", math.pi / 4), ("square", 1.0), ("triangle", 0.5), key=lambda a: abs(a[1] - fill))
            assert shape[0] == world.SHAPES[s], (scene, k, fill)


def test_training_scenes_hold_out_the_held_out_combinations():
    gen = torch.Generator().manual_seed(3)
    train, test = scenes.random_scenes(500, gen), scenes.random_scenes(100, gen, training=False)
    assert not any(scenes.held_out(s) for s in train) and all(scenes.held_out(s) for s in test)
    assert not any(scenes.unseen_pair(s) for s in train + test)  # a green triangle is in no scene taught or tested
    unseen = scenes.random_scenes(50, gen, unseen=True)
    assert all(scenes.unseen_pair(s) for s in unseen)
    names = [[scenes.named(o) for o in s] for s in test]
    assert any(n in scenes.HELD_OUT_OBJECTS for scene in names for n in scene)
    left, right = scenes.HELD_OUT_PAIRINGS[0]
    assert scenes.held_out(scene_of(f"a {' '.join(left)} on the left and a {' '.join(right)} on the right"))
    assert not scenes.held_out(scene_of("a red circle on the left and a green square on the right"))


def test_the_prompt_lists_are_the_seeded_sample_and_disjoint(tmp_path):
    done = subprocess.run([sys.executable, "-m", "toy", "prompts", "--seed", "0", "--folder", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("prompts_scenes.txt", "prompts_scenes_test.txt"):
        assert (tmp_path / name).read_text() == (ROOT / name).read_text(), name  # the shipped lists, remade
    learn = prompts.read_prompts(ROOT / "prompts_scenes.txt")
    test = prompts.read_prompts(ROOT / "prompts_scenes_test.txt")
    learn_scenes = [scene_of(t) for t in learn]
    test_scenes = [scene_of(t) for t in test]
    assert sum(len(s) == 2 for s in learn_scenes) == 40 and sum(len(s) == 1 for s in learn_scenes) == 10
    assert len(test_scenes) == 20 and all(len(s) == 2 for s in test_scenes)
    assert not {frozenset(s) for s in learn_scenes} & {frozenset(s) for s in test_scenes}  # in either order
    assert sum(scenes.held_out(s) for s in test_scenes) >= 5
    assert not any(scenes.held_out(s) for s in learn_scenes)
    for scene in learn_scenes + test_scenes:  # nor any of their swaps: a judge could not read an image as one
        assert not any(scenes.unseen_pair(r) for r in [scene, *[x for v in scenes.rivals(scene).values() for x in v]])


def test_a_scene_prompts_rivals_and_its_readout_by_kind():
    text = "a red circle on the left and a blue square on the right"
    captions, right, kinds = readout.rivals(text)
    assert captions[right] == text and kinds[right] == "prompt"
    assert sorted(kinds) == sorted(["prompt", "colour", "shape", "place", "drop", "drop"])
    embeds = torch.eye(len(captions))  # caption i along axis i
    image = torch.nn.functional.normalize(embeds[right] + 0.9 * embeds[kinds.index("drop")], dim=0)
    overall, by_kind = readout.reads(image[None], embeds, right, kinds)
    assert overall.tolist() == [True] and all(v.tolist() == [True] for v in by_kind.values())
    swapped = torch.nn.functional.normalize(embeds[kinds.index("colour")] + 0.1 * embeds[right], dim=0)[None]
    overall, by_kind = readout.reads(swapped, embeds, right, kinds)
    assert overall.tolist() == [False] and by_kind["colour"].tolist() == [False] and by_kind["drop"].tolist() == [True]
    assert readout.rivals("a red circle on the left and a blue square at the top") is None


# --- teaching scenes

def test_web_captions_are_often_partial_and_complete_ones_name_every_object():
    from toy import scene_training
    gen = torch.Generator().manual_seed(0)
    scene = scene_of("a red circle on the left and a blue square on the right")
    said = [scene_training.web_caption(scene, gen) for _ in range(300)]
    whole = said.count(scenes.caption(scene)) / len(said)
    assert abs(whole - scene_training.WEB_COMPLETE) < 0.1
    assert set(said) == {scenes.caption(scene), "a red circle on the left", "a blue square on the right",
                         "a red circle and a blue square"}


def test_a_caption_is_true_of_what_it_names():
    from toy import scene_training
    shown = [scene_of("a red circle on the left and a blue square on the right"),
             scene_of("a blue circle on the left and a red square on the right")]
    texts = ["a red circle on the left and a blue square on the right", "a red circle on the left",
             "a red circle and a blue square", "a blue circle on the left and a red square on the right"]
    web = scene_training.true_of(texts, shown, complete=False)
    assert web.tolist() == [[True, True, True, False], [False, False, False, True]]
    complete = scene_training.true_of(texts, shown, complete=True)  # only the whole scene, exactly
    assert complete.tolist() == [[True, False, False, False], [False, False, False, True]]


def test_the_multi_positive_loss_against_a_worked_example():
    from toy import scene_training
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    positive = torch.tensor([[True, False, False], [False, True, True]])
    rows = [math.log(math.exp(2) + 2) - 2, math.log(1 + 2 * math.e) - math.log(2 * math.e)]
    columns = [math.log(math.exp(2) + 1) - 2, math.log(1 + math.e) - 1, math.log(1 + math.e) - 1]
    expected = (sum(rows) / 2 + sum(columns) / 3) / 2
    assert scene_training.multi_positive_loss(logits, positive).item() == pytest.approx(expected, rel=1e-5)
    # a hard negative (a column true of no image) counts only against the images, never as a row of its own
    more = torch.cat([logits, torch.tensor([[1.5], [0.5]])], 1)
    assert scene_training.multi_positive_loss(more, torch.cat([positive, torch.zeros(2, 1, dtype=torch.bool)], 1)) > \
        scene_training.multi_positive_loss(logits, positive)


def test_a_flip_moves_both_objects_and_their_captions_follow():
    from toy import scene_training
    gen = torch.Generator().manual_seed(5)
    images, shown = scene_training.batch(64, gen)
    assert images.shape == (64, 3, world.SIDE, world.SIDE) and all(len(s) == 2 for s in shown)
    for scene in shown:  # still a scene of the grammar: two objects at opposite places
        assert scenes.opposite(scene[0][2], scene[1][2])
    again = torch.Generator().manual_seed(5)
    drawn = scenes.random_scenes(64, again)
    flips = sum(a != b for a, b in zip(drawn, shown))
    left_right = sum(world.PLACE_NAMES[s[0][2]] in ("left", "right") for s in drawn)
    assert 0 < flips < left_right  # some flipped, only left-right scenes can be


def test_the_scene_loss_runs_and_learns_on_a_tiny_clip():
    import clip as openai_clip
    from toy import scene_training
    model = tiny_clip_model().float().requires_grad_(True)  # its own copy: the session's tiny must stay untrained
    gen = torch.Generator().manual_seed(0)
    images, shown = scene_training.batch(8, gen)
    images = torch.nn.functional.interpolate(images, size=32, mode="bilinear", align_corners=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = scene_training.loss(model, images, shown, "complete", gen, model.encode_text, openai_clip.tokenize)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


# --- the shipped scene models

SCENE_MODELS = ("scene", "scene-scorer", "scene-judge")


def test_the_scene_models_are_shipped_small():
    for name in SCENE_MODELS:
        assert (ROOT / "models" / f"{name}.pt").stat().st_size <= 16_000_000, name



@pytest.mark.parametrize("name", SCENE_MODELS)
def test_every_script_takes_a_scene_model_as_its_clip_model(name, tmp_path):
    """Each model guides normal.py; the guide also bakes a scene prompt, and microwave.py and
    auto_microwave.py replay that bake (double backward through each tower included)."""
    from PIL import Image
    import auto_microwave
    import bake
    import microwave
    import normal
    text = "a red circle on the left and a blue square on the right"
    small = ["--clip-model", name, "--device", "cpu", "--size", "16", "--cutn", "1", "--seed", "0"]
    normal.main([text, *small, "--steps", "2", "--out", "n.png"])
    assert Image.open("n.png").info["clip_model"] == name
    bake.main([text, *small, "--stages", "2", "--steps", "2", "--meta-steps", "1", "--baked-dir", "b",
               "--name", "s", "--out", "b.png"])
    microwave.main([text, "b/s.pt", *small, "--steps", "2", "--out", "m.png"])
    auto_microwave.main(["a green circle at the top and a red square at the bottom", *small, "--steps", "2",
                         "--baked-dir", "b", "--k", "1", "--out", "a.png"])
    assert all(Path(f).exists() for f in ("m.png", "a.png"))

@pytest.fixture(scope="module")
def zero_shot():
    """Each scene model's zero-shot figures on 200 fresh drawings per test (its own seed, not the docs')."""
    from staged_clip import models
    from toy import measure
    return {name: measure.scene_report(models.load_clip(name), seed=77, n=200) for name in SCENE_MODELS}


# the floor for the judges, binding and single objects alike: on these 200 drawings they
# measured at least 93% (binding) and 93.5% (single objects); 92% and more on docs' 600
JUDGE_FLOOR = 0.9
PIL_FLOOR = 0.82  # on plain PIL drawings on white, black and grey: measured 87.5% and more on these 120

@pytest.mark.parametrize("name", ["scene-scorer", "scene-judge"])
def test_the_scene_judges_bind_recall_and_read_single_objects(zero_shot, name):
    found = zero_shot[name]
    for figure, (value, _, _) in found["scenes, held-out combinations"].items():
        assert value >= JUDGE_FLOOR, (name, figure, value)
    for figure, (value, _, _) in found["single objects, held-out pairs, attribute"].items():
        assert value >= JUDGE_FLOOR, (name, figure, value)


def test_the_scene_guide_binds_weakly_as_clip_does(zero_shot):
    colour = zero_shot["scene"]["scenes, held-out combinations"]["binding: colour swap"][0]
    assert 0.5 < colour < 0.85  # measured 73% on these 200, 64% on docs' 600; the judges 96% and more
    assert zero_shot["scene"]["single objects, held-out pairs, attribute"]["colour"][0] >= 0.9


@pytest.mark.parametrize("name", ["scene-scorer", "scene-judge"])
def test_a_judge_reads_drawn_test_scenes_as_their_prompts_and_their_colour_swaps_not(name):
    """Through evaluate's readout: the world's drawings of each test prompt read as the prompt
    (measured: 94% and 95% of 20 x 4), drawings of its colour swap almost never."""
    from staged_clip import models, scoring
    judge = models.load_clip(name)
    gen = torch.Generator().manual_seed(0)
    own_read, swap_read, swap_colour = [], [], []
    for text in prompts.read_prompts(ROOT / "prompts_scenes_test.txt"):
        captions, right, kinds = readout.rivals(text)
        embeds = prompts.embed_texts(judge, list(captions))
        scene = scene_of(text)
        own, other = scenes.draw([scene] * 4, gen), scenes.draw([scenes.rivals(scene)["colour"][0]] * 4, gen)
        own_read.append(readout.reads(scoring.embed(judge, own), embeds, right).float().mean())
        overall, by_kind = readout.reads(scoring.embed(judge, other), embeds, right, kinds)
        swap_read.append(overall.float().mean())
        swap_colour.append(by_kind["colour"].float().mean())
    assert sum(own_read) / len(own_read) >= 0.8
    assert sum(swap_read) / len(swap_read) <= 0.1 and sum(swap_colour) / len(swap_colour) <= 0.1


def test_evaluate_judges_the_scene_guide_with_the_scene_judges_by_default():
    import evaluate
    assert evaluate.parse_args(["p.txt", "--clip-model", "scene"]).score_model == ["scene-scorer", "scene-judge"]
    assert evaluate.parse_args(["p.txt", "--clip-model", "toy"]).score_model == ["toy-scorer", "toy-judge"]


def test_evaluate_reports_a_scene_prompts_readout_by_kind(tiny_ckpt, wide_ckpt):
    result = run_evaluate(tiny_ckpt, wide_ckpt, "--meta-steps", "1", "--meta-grads", "none", "--methods",
                          "normal,restart", "--tune-lrs", "0.12",
                          texts=["a red circle on the left and a blue square on the right", "a green circle at the top"])
    scene = [s for s in result["scores"] if s["prompt"].startswith("a red circle")]
    single = [s for s in result["scores"] if s["prompt"] == "a green circle at the top"]
    assert all(set(s["readout_by_kind"][wide_ckpt]) == set(scenes.KINDS) for s in scene)
    assert all("readout_by_kind" not in s for s in single)  # one object: its 120 rivals, no kinds
    for s in scene:  # read right overall exactly when right against every kind
        assert s["readout"][wide_ckpt] == all(s["readout_by_kind"][wide_ckpt].values())
    entry = result["summary"]["normal"][wide_ckpt]
    shares = [s["readout_by_kind"][wide_ckpt]["colour"] for s in scene if s["method"] == "normal"]
    assert entry["readout_by_kind"]["colour"] == pytest.approx(sum(shares) / len(shares))
    assert "| method | colour | shape | place | drop |" in Path("e.md").read_text()


def test_plain_backgrounds_keep_away_from_the_objects_colours():
    gen = torch.Generator().manual_seed(4)
    some = scenes.random_scenes(200, gen)
    labels = scenes.labels_of(some)
    flat = scenes.plain_colours(labels, gen)
    named = torch.tensor(list(world.COLOURS.values()))
    for colour, objects in zip(flat, labels):
        assert torch.cdist(colour[None], named[objects[:, 0]]).min() >= world.FAR
    white, black = (flat == 1).all(1).sum(), (flat == 0).all(1).sum()
    assert white > 20 and black > 20  # a page and a dark canvas among them
    images = scenes.draw(some[:8], gen, plain=1.0)
    assert (images[:, :, 0, 0] == images[:, :, -1, -1]).all()  # flat: a corner is the other corner


def test_pil_drawings_show_each_object_in_its_colour_at_its_place():
    some = scenes.random_scenes(30, torch.Generator().manual_seed(3), distinct=1.0)
    images = scenes.draw_pil(some, side=64)
    for image, scene in zip(images, some):
        for obj in scene:
            colour, _, place = scenes.named(obj)
            x, y = (round(v * 64) for v in world.PLACES[place][:2])
            assert torch.allclose(image[:, y, x], torch.tensor(world.COLOURS[colour]), atol=0.01), (scene, obj)
        assert any(torch.allclose(image[:, 1, 1], torch.tensor(g)) for g in ([1.0] * 3, [0.0] * 3, [128 / 255] * 3))


@pytest.mark.parametrize("name", ["scene-scorer", "scene-judge"])
def test_the_judges_read_plain_pil_scenes_of_held_out_combinations(name):
    """Scenes drawn another way (toy.scenes.draw_pil: PIL shapes on white, black and grey), read
    through evaluate's readout."""
    from staged_clip import models, scoring
    judge = models.load_clip(name)
    some = scenes.random_scenes(120, torch.Generator().manual_seed(21), training=False, distinct=1.0)
    right = {kind: 0 for kind in scenes.KINDS}
    for scene, image in zip(some, scenes.draw_pil(some)):
        captions, index, kinds = readout.rivals(scenes.caption(scene))
        _, by_kind = readout.reads(scoring.embed(judge, image[None]), prompts.embed_texts(judge, list(captions)),
                                   index, kinds)
        for kind, read in by_kind.items():
            right[kind] += bool(read)
    for kind, count in right.items():
        assert count / len(some) >= PIL_FLOOR, (name, kind, count)


def test_the_single_object_test_prompts_are_the_shape_test_prompts_the_scene_list_lacks():
    singles = prompts.read_prompts(ROOT / "prompts_singles_test.txt")
    learn = set(prompts.read_prompts(ROOT / "prompts_scenes.txt"))
    shapes = prompts.read_prompts(ROOT / "prompts_toy_test.txt")
    assert singles == [t for t in shapes if t not in learn] and len(singles) == 19
    assert all(len(scene_of(t)) == 1 for t in singles)


def test_pixels_read_the_worlds_drawings_of_a_scene_and_not_its_colour_swap_or_noise():
    gen = torch.Generator().manual_seed(0)
    for text in prompts.read_prompts(ROOT / "prompts_scenes_test.txt")[:6]:
        scene = scenes.parse(text)
        assert scenes.pixel_reads(scenes.draw([scene] * 8, gen), scene).float().mean() >= 0.75, text
        swapped = scenes.rivals(scene)["colour"][0]  # the same shapes and places, the colours exchanged
        assert not scenes.pixel_reads(scenes.draw([swapped] * 8, gen), scene).any(), text
    assert not scenes.pixel_reads(torch.rand(32, 3, 64, 64, generator=gen), scene).any()  # colour everywhere


def test_pixels_read_a_colour_on_its_side_by_hand():
    red = torch.tensor(world.COLOURS["red"])
    image = torch.full((1, 3, 16, 16), 0.5)  # grey, the world's unnamed colour
    image[0, :, 6:10, 1:5] = red[:, None, None]  # 16 red pixels on the left: 6% of the image
    left, right = scenes.parse("a red circle on the left"), scenes.parse("a red circle on the right")
    assert scenes.pixel_reads(image, left).tolist() == [True] and scenes.pixel_reads(image, right).tolist() == [False]
    image[0, :, 6:10, 12:14] = red[:, None, None]  # 8 red on the right too: still twice as much on the left
    assert scenes.pixel_reads(image, left).tolist() == [True]
    image[0, :, 6:10, 14:15] = red[:, None, None]  # 12 on the right: no longer
    assert scenes.pixel_reads(image, left).tolist() == [False]
