"""The bakes shipped in baked/ for the offline world: what baked/README.md says made them, and
auto-microwaving from them on a fresh clone. A user's own bakes beside them change nothing here."""

import subprocess

import torch
from PIL import Image

import common
from conftest import ROOT
from staged_clip import baked, models
from staged_clip.settings import Settings


# baked/README.md's commands: the shared bake of prompts_toy.txt, then each prompt's on top of it
SHARED = Settings(size=64, stages=5, steps=10, cutn=8, meta_views=8, lr=0.96, meta_steps=40, population=8,
                         learn_style=True)
SHIPPED = Settings(size=64, stages=5, steps=10, cutn=8, meta_views=8, lr=0.96, meta_steps=10, learn_style=True,
                          lr_sigma=0.1, style_sigma=0.1, init_from="baked/shared_prompts_toy.pt")


def test_baked_ships_the_shared_bake_of_the_toy_prompts():
    found = baked.load_baked(ROOT / "baked" / "shared_prompts_toy.pt")
    texts = common.read_prompts(ROOT / "prompts_toy.txt")
    assert found["kind"] == "shared" and found["complete"] and found["clip_model"] == "toy"
    assert sorted(found["prompts"] + found["held_out"]) == sorted(texts)
    assert not baked.differences(SHARED, found["config"])
    assert models.load_clip("toy", torch.device("cpu")).made(found)


def test_baked_ships_a_default_bake_of_every_toy_prompt():
    model = models.load_clip("toy", torch.device("cpu"))
    texts = common.read_prompts(ROOT / "prompts_toy.txt")
    names = {"shared_prompts_toy.pt", "shared_prompts_scenes.pt"}
    for text in texts:
        path = baked.baked_path(ROOT / "baked", text)
        reason = baked.stale_reason(path, text, SHIPPED, model)
        assert reason is None, f"{path.name}: {reason}, not the README's bake"
        found = baked.load_baked(path)
        assert found["config"]["meta_grad"] == Settings().meta_grad and found["lr_scale"] is not None
        assert found["style_scale"] is not None
        names.add(path.name)
    try:
        tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "baked/*.pt"], capture_output=True, text=True)
    except OSError:  # no git here
        return
    if tracked.returncode == 0:  # a git checkout: nothing else ships (a user's own bakes are untracked)
        assert {line.split("/")[-1] for line in tracked.stdout.split()} == names


def test_auto_microwave_runs_from_the_shipped_bakes(tmp_path, capsys):
    import auto_microwave
    auto_microwave.main(["a green triangle on the left", "--clip-model", "toy", "--baked-dir", str(ROOT / "baked"),
                         "--size", "16", "--steps", "2", "--cutn", "1", "--seed", "0", "--out", str(tmp_path / "a.png")])
    said = capsys.readouterr().out
    used = [line for line in said.splitlines() if str(ROOT / "baked") in line or "(baked/" in line]
    assert len(used) == 2  # it names the two shipped bakes it composes
    assert Image.open(tmp_path / "a.png").size == (512, 512)


# baked/README.md's command for the scene model's shared bake
SCENES = Settings(size=64, stages=5, steps=10, cutn=8, meta_views=8, lr=0.48, meta_steps=40, population=8,
                  learn_style=True, learn_object=True, learn_layout=True)


def test_baked_ships_the_shared_bake_of_the_scene_prompts_and_microwave_replays_it(tmp_path, capsys):
    import microwave
    found = baked.load_baked(ROOT / "baked" / "shared_prompts_scenes.pt")
    texts = common.read_prompts(ROOT / "prompts_scenes.txt")
    assert found["kind"] == "shared" and found["complete"] and found["clip_model"] == "scene"
    assert sorted(found["prompts"] + found["held_out"]) == sorted(texts)
    assert not baked.differences(SCENES, found["config"])
    assert found["object_weight"] is not None and found["layout_weight"] is not None  # learned, whatever came of it
    scene = "a red circle on the left and a blue square on the right"
    microwave.main([scene, str(ROOT / "baked" / "shared_prompts_scenes.pt"), "--clip-model", "scene", "--steps", "2",
                    "--seed", "0", "--out", str(tmp_path / "m.png")])
    said = "".join(capsys.readouterr())  # what it replays on stdout, what it takes from the bake on stderr
    assert f"for {scene!r}" in said and "--lr 0.48" in said  # at the bake's own rate
    with Image.open(tmp_path / "m.png") as image:
        assert scene in image.text["prompt"]


def test_auto_microwave_for_the_scene_model_replays_its_shared_bake_not_the_toy_bakes(tmp_path, capsys):
    import auto_microwave
    auto_microwave.main(["a red circle on the left and a blue square on the right", "--clip-model", "scene",
                         "--baked-dir", str(ROOT / "baked"), "--steps", "2", "--seed", "0", "--out", str(tmp_path / "a.png")])
    captured = capsys.readouterr()
    assert "replaying the shared bake" in captured.out and "shared_prompts_scenes.pt" in captured.out
    assert "made with another CLIP model (toy), not scene" in captured.err
