"""evaluate.py end to end on a tiny configuration, its leave-one-out, and --save-progress."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import auto_microwave
import bake
import common
import evaluate
import microwave
import normal
from conftest import bake_args, render_args
from staged_clip import baking, es, evaluation, methods, render, report, stats

PROMPTS = ["a red apple", "a green pear", "a blue car"]
METHODS = [m.name for m in methods.methods_of(common.META_GRADS, "es")]  # every estimator's, auto from es


def run_evaluate(tiny_ckpt, wide_ckpt, *extra):
    Path("p.txt").write_text("\n".join(PROMPTS) + "\n")
    evaluate.main(["p.txt", "--clip-model", tiny_ckpt, "--score-model", wide_ckpt, "--device", "cpu",
                   "--seeds", "2", "--size", "16", "--steps", "2", "--stages", "2", "--meta-steps", "2",
                   "--seed", "0", "--population", "2", "--validation-starts", "2", "--out", "grid.png",
                   "--json", "e.json", "--table", "e.md", *extra])
    return json.loads(Path("e.json").read_text())


def test_evaluate_writes_a_table_json_and_a_grid_of_prompts_by_methods(tiny_ckpt, wide_ckpt, capsys):
    result = run_evaluate(tiny_ckpt, wide_ckpt)
    out = capsys.readouterr().out
    for method in METHODS:
        for scorer in stats.JUDGES:
            entry = result["summary"][method][scorer]
            values = [s[scorer] for s in result["scores"] if s["method"] == method]
            assert len(values) == len(PROMPTS) * 2 and entry["mean"] == pytest.approx(sum(values) / len(values))
            assert 0 <= entry["win_rate_vs_normal"] <= 1
    assert set(result["summary"]) == set(METHODS)
    assert set(result["stage_distance"]) == set(common.META_GRADS)
    for method in METHODS[1:]:  # every bake method against normal and the original-style bake
        for scorer in stats.JUDGES:
            entry = result["summary"][method][scorer]
            low, high = entry["interval_vs_normal"]
            assert low <= entry["win_rate_vs_normal"] <= high
            assert method == "microwave_none" or "win_rate_vs_microwave_none" in entry
    assert result["summary"]["microwave_es"]["bake_seconds"] > 0
    table = Path("e.md").read_text()
    assert table in out and all(f"| {m} |" in table for m in METHODS)
    with Image.open("grid.png") as grid:
        step = report.CELL + report.GAP
        assert grid.size == (200 + step * len(METHODS), 24 + step * len(PROMPTS))
    for text in PROMPTS:  # both bakes of every prompt, made with the settings asked for
        for mode in common.META_GRADS:
            baked = common.load_baked(result["bakes"][text][mode])
            assert baked["prompt"] == text and baked["config"]["meta_grad"] == mode
            assert baked["config"]["steps"] == 2 and baked["config"]["size"] == 16


def test_leave_one_out_never_uses_a_prompts_own_bake(tiny_ckpt, wide_ckpt):
    result = run_evaluate(tiny_ckpt, wide_ckpt)
    for text in PROMPTS:
        used = result["leave_one_out"][text]
        own = result["bakes"][text]
        assert len(used) == 2 and not set(own.values()) & set(used)
        others = {result["bakes"][t][result["auto_from"]] for t in PROMPTS if t != text}
        assert set(used) == others  # k = 2 of the two others: exactly the other prompts' bakes


def test_the_scorers_see_the_same_images_for_every_method(tiny_ckpt, wide_ckpt, monkeypatch):
    calls = []
    real = evaluation.score

    def spy(model, images, prompt_embed):
        calls.append((model.name, images.clone()))
        return real(model, images, prompt_embed)

    monkeypatch.setattr(evaluation, "score", spy)
    run_evaluate(tiny_ckpt, wide_ckpt)
    assert len(calls) == 2 * len(PROMPTS) * len(METHODS)
    for (guide, by_guide), (scorer, by_scorer) in zip(calls[::2], calls[1::2]):
        assert guide == tiny_ckpt and scorer == wide_ckpt
        assert by_guide.shape[0] == 2 and torch.equal(by_guide, by_scorer)
    shots = [images for _, images in calls[::2]]
    assert not torch.equal(shots[0], shots[1])  # each method's own images, not one set for all


def test_every_method_starts_from_the_same_image_and_random_state(tiny_ckpt, wide_ckpt, monkeypatch):
    run_evaluate(tiny_ckpt, wide_ckpt)  # bake first, so that below only the evaluation renders
    seen = []
    real = render.rollout

    def spy(model, z, targets, settings, **kwargs):
        seen.append((z.clone(), torch.get_rng_state(), settings.steps, settings.cutn))
        return real(model, z, targets, settings, **kwargs)

    monkeypatch.setattr(render, "rollout", spy)
    run_evaluate(tiny_ckpt, wide_ckpt)
    n = len(METHODS)
    assert len(seen) == len(PROMPTS) * 2 * n
    groups = [seen[k:k + n] for k in range(0, len(seen), n)]  # one (prompt, start) each
    for group in groups:
        first = group[0]
        for z, rng, steps, cutn in group[1:]:
            assert torch.equal(z, first[0]) and torch.equal(rng, first[1])
            assert steps * cutn > 0 and cutn == first[3]
        assert group[0][2] == 2 * 2 and all(g[2] == 2 for g in group[1:])  # normal: stages x steps
    assert not torch.equal(groups[0][0][0], groups[1][0][0])  # another start, another image


def test_matching_bakes_are_reused(tiny_ckpt, wide_ckpt, monkeypatch, capsys):
    first = run_evaluate(tiny_ckpt, wide_ckpt)

    def no_bake(*args, **kwargs):
        raise AssertionError("baked again")

    monkeypatch.setattr(baking, "bake_prompt", no_bake)
    second = run_evaluate(tiny_ckpt, wide_ckpt)
    assert capsys.readouterr().out.count("reusing") == len(common.META_GRADS) * len(PROMPTS)
    assert second["scores"] == first["scores"]  # the same starts and cutouts: the same images
    with pytest.raises(AssertionError, match="baked again"):  # another seed: other bakes
        run_evaluate(tiny_ckpt, wide_ckpt, "--seed", "5")


def test_ctrl_c_in_a_bake_says_what_is_saved_in_one_line(tiny_ckpt, wide_ckpt, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(es, "meta_step", interrupted)
    with pytest.raises(SystemExit) as info:
        run_evaluate(tiny_ckpt, wide_ckpt, "--meta-grads", "es")
    assert str(info.value.code).startswith("interrupted: ") and "run again to go on" in info.value.code


def test_one_prompt_or_no_scorer_is_refused_in_one_line(tiny_ckpt, capsys):
    Path("one.txt").write_text("a red apple\n")
    with pytest.raises(SystemExit) as info:
        evaluate.main(["one.txt", "--clip-model", tiny_ckpt, "--score-model", tiny_ckpt])
    assert "at least two" in str(info.value.code)
    with pytest.raises(SystemExit) as info:
        evaluate.main(["one.txt", "--clip-model", tiny_ckpt])
    assert info.value.code == 2 and "--score-model is needed" in capsys.readouterr().err


def gif_frames(path):
    with Image.open(path) as gif:
        return gif.n_frames


def test_save_progress_writes_frames_and_a_gif(tiny_ckpt, capsys):
    normal.main(["a red apple", *render_args(tiny_ckpt, "--steps", "20", "--save-progress", "--out", "n.png")])
    assert len(list(Path("n_progress").glob("*.png"))) == 11 and gif_frames("n_progress.gif") == 11
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--stages", "3", "--save-progress", "--out", "b.png")])
    assert len(list(Path("b_progress").glob("*.png"))) == 4  # the start, then after each stage
    microwave.main(["baked/a_red_apple.pt", *render_args(tiny_ckpt, "--steps", "4", "--save-progress", "2",
                                                         "--out", "m.png")])
    assert gif_frames("m_progress.gif") == 1 + 3 * 4 // 2  # the start, then every 2 of 12 steps
    auto_microwave.main(["a red pear", *render_args(tiny_ckpt, "--k", "1", "--save-progress", "--out", "a.png")])
    assert gif_frames("a_progress.gif") == 1 + 3  # the start, then after each of the 3 stages
    with Image.open("n_progress/0000.png") as first, Image.open("n_progress/0010.png") as last:
        assert first.tobytes() != last.tobytes()
    with Image.open("n_progress/0010.png") as last, Image.open("n.png") as final:
        assert last.tobytes() == final.convert("RGB").tobytes()  # the last frame is the saved image
