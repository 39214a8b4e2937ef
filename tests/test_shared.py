"""Shared bakes (learned over a prompt list), prompts' bakes started from one, the knobs, and the
meta-objective's views of the image as saved."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import auto_microwave
import bake
import common
import microwave
from conftest import ROOT, bake_args, render_args
from staged_clip import baking, es, knobs, losses, models, output, tasks, wandb_log
from staged_clip.settings import Settings

TWO = ["a red apple", "a green pear"]
SHARED = ["--meta-grad", "es", "--population", "2", "--validate-every", "1", "--validation-starts", "2",
          "--learn-style", "--learn-part", "--learn-object", "--learn-layout", "--cutn", "2", "--meta-views", "3"]


def shared_bake(ckpt, *extra, name="shared_p"):
    Path("p.txt").write_text("\n".join(TWO) + "\n")
    bake.main(["--prompts", "p.txt", *bake_args(ckpt, *SHARED, *extra), "--out", f"{name}.png", "--name", name])
    return common.load_baked(f"baked/{name}.pt")


def test_a_shared_bake_learns_knobs_over_the_list_and_replays_for_any_prompt(tiny_ckpt, capsys):
    found = shared_bake(tiny_ckpt, "--seed", "4")
    assert "a shared bake of 2 prompts" in capsys.readouterr().out
    assert found["kind"] == "shared" and sorted(found["prompts"] + found["held_out"]) == sorted(TWO)
    assert len(found["held_out"]) == 1  # one prompt validates, the other is learned from
    assert not found["stages"].any()  # no directions of its own
    for knob in knobs.KNOBS:  # every learned knob is written, one value a stage
        assert found[knob.key].shape == (2,)
    assert found["config"]["meta_views"] == 3 and found["validation"][0]["step"] is None
    assert Path("shared_p.png").is_file()
    microwave.main(["a blue plum", "baked/shared_p.pt", *render_args(tiny_ckpt), "--out", "m.png"])
    assert Path("m.png").is_file() and "for 'a blue plum'" in capsys.readouterr().out


def test_the_same_seed_makes_the_same_shared_bake_and_another_seed_another(tiny_ckpt):
    a = shared_bake(tiny_ckpt, "--seed", "5", name="a")
    b = shared_bake(tiny_ckpt, "--seed", "5", name="b")
    c = shared_bake(tiny_ckpt, "--seed", "6", name="c")
    for knob in knobs.KNOBS:
        assert torch.equal(a[knob.key], b[knob.key])
    assert a["history"] == b["history"] and a["validation"] == b["validation"]
    assert a["history"] != c["history"]


def test_a_shared_bake_without_a_prompt_or_with_one_prompt_is_refused_in_one_line(tiny_ckpt, capsys):
    shared_bake(tiny_ckpt, "--seed", "0")
    with pytest.raises(SystemExit) as stop:
        microwave.main(["baked/shared_p.pt", *render_args(tiny_ckpt), "--out", "m.png"])
    message = str(stop.value.code)
    assert "shared bake" in message and "give the prompt" in message
    assert len(message.splitlines()) == 1 and not Path("m.png").exists()
    Path("one.txt").write_text("a red apple\n")
    with pytest.raises(SystemExit) as stop:
        bake.main(["--prompts", "one.txt", *bake_args(tiny_ckpt, *SHARED), "--out", "o.png"])
    assert "at least two prompts" in str(stop.value.code) and not Path("o.png").exists()


def test_a_prompts_bake_starts_exactly_at_the_shared_bakes_values(tiny_ckpt, tiny):
    shared = shared_bake(tiny_ckpt, "--seed", "1", "--stages", "3", "--steps", "3", "--lr", "0.3")
    settings = baking.starting_from(Settings(stages=10, steps=30, size=16, cutn=2, validation_starts=2,
                                                    population=2, seed=0), shared)
    assert (settings.stages, settings.steps, settings.lr) == (3, 3, 0.3)  # the shared bake's renderer
    assert settings.init_from == "baked/shared_p.pt"
    prompt = common.load_prompt(tiny, "a blue plum")
    baker = common.Baker(tiny, common.style_shift(tiny), wandb_log.WandbLog("disabled"), init=shared)
    started = baking.Bake(baker, tasks.Tasks.single(tiny, prompt, 3), settings, Path("x.pt"), shared)
    stages, raw = started.learner.current()
    assert torch.allclose(stages, prompt.embed.expand(3, -1), atol=1e-6)
    assert torch.equal(raw, knobs.raw_of(shared, 3))
    assert torch.allclose(knobs.values(raw)["lr_scale"], shared["lr_scale"])
    gate_stages, gate_raw = started.validation.best  # the gate's first best is the shared bake itself
    assert torch.equal(gate_raw, raw) and torch.allclose(gate_stages, stages, atol=1e-6)


def test_init_from_bakes_on_top_and_refuses_a_prompts_bake(tiny_ckpt, capsys):
    shared_bake(tiny_ckpt, "--seed", "2", "--stages", "3")
    bake.main(["a blue plum", *bake_args(tiny_ckpt, "--meta-grad", "es", "--population", "2", "--cutn", "2",
                                         "--validation-starts", "2", "--init-from", "baked/shared_p.pt"),
               "--out", "b.png"])
    found = common.load_baked("baked/a_blue_plum.pt")
    assert found["config"]["init_from"] == "baked/shared_p.pt" and found["stages"].shape[0] == 3
    assert "learned at" not in capsys.readouterr().err  # the same size: nothing to say
    bake.main(["a red plum", *bake_args(tiny_ckpt, "--meta-grad", "es", "--population", "2", "--cutn", "2",
                                        "--validation-starts", "2", "--init-from", "baked/shared_p.pt",
                                        "--size", "12"), "--out", "r.png"])
    assert "baked/shared_p.pt was learned at 16 px, this bake is at 12 px (--size 16 to match)" in \
        capsys.readouterr().err
    assert common.load_baked("baked/a_red_plum.pt")["config"]["size"] == 12  # kept
    assert found.get("kind") is None and found["lr_scale"] is not None
    with pytest.raises(SystemExit) as stop:
        bake.main(["a pear", *bake_args(tiny_ckpt, "--init-from", "baked/a_blue_plum.pt"), "--out", "c.png"])
    assert "takes a shared bake" in str(stop.value.code) and not Path("c.png").exists()


def test_auto_microwave_replays_the_shared_bake_when_the_nearest_bakes_are_far(tiny_ckpt, capsys):
    shared_bake(tiny_ckpt, "--seed", "0")
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--meta-grad", "es", "--population", "2", "--cutn", "2",
                                         "--validation-starts", "2"), "--out", "r.png"])
    capsys.readouterr()
    auto_microwave.main(["a red apple", *render_args(tiny_ckpt), "--out", "near.png", "--k", "1"])
    assert "nearest baked prompts" in capsys.readouterr().out  # its own bake, at distance 0
    auto_microwave.main(["a green pear", *render_args(tiny_ckpt), "--out", "far.png", "--k", "1", "--far", "0"])
    assert "replaying the shared bake baked/shared_p.pt" in capsys.readouterr().out
    assert Path("far.png").is_file()


# --- the meta-objective

def test_meta_views_see_the_saved_image_and_are_shared_by_each_pair(tiny, monkeypatch):
    seen = []
    real = losses.bake_loss

    def spy(model, z, prompt, cutn, draws=None, look=None):
        seen.append((z.detach().clone(), cutn, draws, look))
        return real(model, z, prompt, cutn, draws, look)

    monkeypatch.setattr(losses, "bake_loss", spy)
    prompt = common.load_prompt(tiny, "a red apple")
    settings = Settings(stages=2, size=16, steps=2, cutn=2, meta_views=5, population=3, seed=1)
    search = es.Search(prompt.embed, 2, seed=1)
    eps_c, eps_k = search.perturbations(3, 1, 0, settings)
    es.population_losses(tiny, search, eps_c, eps_k, tasks.Tasks.single(tiny, prompt, 2), common.style_shift(tiny),
                         settings, 0)
    (z, views, draws, look), = seen
    assert views == 5 and look is output.quantize  # 5 views of the image as saved, not the 2 inner cutouts
    for key, value in draws.items():
        per_image = value.reshape(6, -1)  # [+ x 3, - x 3]
        assert torch.equal(per_image[:3], per_image[3:])  # + and - of a pair: the same views
        assert key == "gray" or not torch.equal(per_image[0], per_image[1])  # pairs: their own
    settings0 = settings.replace(meta_views=0)
    seen.clear()
    es.population_losses(tiny, search, eps_c, eps_k, tasks.Tasks.single(tiny, prompt, 2), common.style_shift(tiny),
                         settings0, 0)
    assert seen[0][1] == 2 and seen[0][3] is None  # 0: the inner cutouts, unquantized (older bakes)


def test_files_without_meta_views_count_as_made_without_them():
    assert Settings.from_config({}).meta_views == 0
    assert Settings().meta_views > 0


def test_a_bake_never_loads_a_judge(tiny_ckpt, monkeypatch):
    loaded, opened = [], []
    real_load, real_torch_load = models.load_clip, torch.load
    monkeypatch.setattr(models, "load_clip", lambda name, *a, **k: loaded.append(name) or real_load(name, *a, **k))
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: opened.append(str(f)) or real_torch_load(f, *a, **k))
    shared_bake(tiny_ckpt, "--seed", "0")
    bake.main(["a blue plum", *bake_args(tiny_ckpt, "--meta-grad", "es", "--population", "2", "--cutn", "2",
                                         "--validation-starts", "2", "--init-from", "baked/shared_p.pt"),
               "--out", "b.png"])
    assert loaded and set(loaded) == {tiny_ckpt}  # the guide alone
    judges = [str(ROOT / "models" / f"{name}.pt") for name in ("toy-scorer", "toy-judge")]
    assert not [path for path in opened if path in judges or "scorer" in path or "judge" in path]


def test_knobs_make_the_targets_they_say():
    stages = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    parts = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    shift = torch.randn(8)
    raw = torch.zeros(3, len(knobs.KNOBS))
    assert torch.allclose(knobs.targets(stages, shift, raw, parts), stages + shift)  # neutral: as before knobs
    raw[:, knobs.STYLE] = torch.tensor([0.0, 1.0, -1.0]).log1p().nan_to_num(neginf=-30)  # x1, x2, x0
    raw[:, knobs.PART] = torch.tensor([1.5, 0.0, -1.0])  # clamped: all of the part, none, none
    found = knobs.targets(stages, shift, raw, parts)
    assert torch.allclose(found[0], parts[0] + shift, atol=1e-6)
    assert torch.allclose(found[1], stages[1] + 2 * shift, atol=1e-6)
    assert torch.allclose(found[2], stages[2], atol=1e-6)
    assert knobs.prefix_parts("a red circle on the left", 3) == ["a red", "a red circle on", "a red circle on the left"]
    assert knobs.prefix_parts("a | b:0.5", 3) is None and knobs.lr_scale(torch.zeros(3, 3)) is None


# --- processes

def test_two_processes_make_the_same_shared_bake_as_one(tiny_ckpt):
    Path("p.txt").write_text("\n".join(TWO) + "\n")
    flags = ["--prompts", "p.txt", *bake_args(tiny_ckpt, *SHARED, "--population", "4", "--es-chunk", "2",
                                              "--seed", "3", "--threads", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(ROOT / "bake.py"), *flags, "--name", "one", "--out", "one.png"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(ROOT / "bake.py"), *flags, "--name", "two", "--out", "two.png"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr
    a, b = common.load_baked("baked/one.pt"), common.load_baked("baked/two.pt")
    for knob in knobs.KNOBS:
        assert torch.equal(a[knob.key], b[knob.key])
    assert a["history"] == b["history"] and a["validation"] == b["validation"]


def test_evaluate_with_a_shared_bake_replays_it_and_compares_every_method_with_it(tiny_ckpt, wide_ckpt, capsys):
    import json

    import evaluate
    shared_bake(tiny_ckpt, "--seed", "0")
    Path("e.txt").write_text("a blue plum\na yellow lemon\n")
    evaluate.main(["e.txt", "--clip-model", tiny_ckpt, "--score-model", wide_ckpt, "--device", "cpu", "--seeds", "2",
                   "--size", "16", "--steps", "2", "--stages", "2", "--meta-steps", "2", "--seed", "0",
                   "--meta-grads", "es", "--population", "2", "--validation-starts", "2", "--tune-starts", "1",
                   "--tune-lrs", "0.12,0.24", "--replay-cutn", "2", "--cutn", "2", "--shared", "baked/shared_p.pt",
                   "--baked-dir", "bakes", "--out", "grid.png", "--json", "e.json", "--table", "e.md"])
    result = json.loads(Path("e.json").read_text())
    assert "shared" in result["methods"] and "shared" in result["baselines"] and result["shared"] == "baked/shared_p.pt"
    for method in result["methods"]:
        for judge in ("guide", wide_ckpt):
            entry = result["summary"][method][judge]
            assert "win_rate_vs_shared" in entry and "mean_diff_vs_shared" in entry
    for path in result["bakes"].values():  # each prompt's bake started from the shared one
        assert common.load_baked(path["es"])["config"]["init_from"] == "baked/shared_p.pt"
    assert Path("bakes/es+shared_p").is_dir()
    with pytest.raises(SystemExit) as stop:
        evaluate.main(["e.txt", "--clip-model", tiny_ckpt, "--score-model", wide_ckpt, "--shared", path["es"],
                       "--json", "x.json"])
    assert "a bake of one prompt" in str(stop.value.code) and not Path("x.json").exists()
