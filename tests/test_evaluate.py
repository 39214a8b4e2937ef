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
from conftest import EVALUATED as PROMPTS, ROOT, bake_args, render_args, run_evaluate
from staged_clip import baking, es, methods, render, report, scoring, stats, tuning
from staged_clip.settings import Settings

METHODS = [m.name for m in methods.methods_of(common.META_GRADS, "es")]  # every estimator's, auto from es
BASELINES = ["normal", "normal_tuned", "normal_drop", "normal_decay_tuned", "restart", "restart_tuned", "microwave_none"]
SWEPT = len(PROMPTS) * len(tuning.LRS) * len(methods.TUNED)  # the sweeps' images at --tune-starts 1


def test_evaluate_writes_a_table_json_and_a_grid_of_prompts_by_methods(tiny_ckpt, wide_ckpt, other_ckpt, capsys):
    result = run_evaluate(tiny_ckpt, f"{wide_ckpt},{other_ckpt}")
    out = capsys.readouterr().out
    judges = ["guide", wide_ckpt, other_ckpt]
    assert result["judges"] == judges and result["baselines"] == BASELINES
    for method in METHODS:
        assert set(result["summary"][method]) - {"bake_seconds", "high_frequency"} == set(judges)
        for judge in judges:
            entry = result["summary"][method][judge]
            values = [s[judge] for s in result["scores"] if s["method"] == method]
            assert len(values) == len(PROMPTS) * 2 and entry["mean"] == pytest.approx(sum(values) / len(values))
            keys = {f"{k}_vs_{b}" for b in BASELINES for k in ("win_rate", "interval", "mean_diff", "se", "median_diff")}
            assert keys <= set(entry)
            for base in BASELINES:  # each against each baseline: the pairs' own differences
                pairs = stats.paired(result["scores"], method, base, judge)
                assert len(pairs) == len(PROMPTS) * 2
                low, high = entry[f"interval_vs_{base}"]
                assert low <= entry[f"win_rate_vs_{base}"] <= high
                assert entry[f"mean_diff_vs_{base}"] == pytest.approx(sum(a - b for a, b in pairs) / len(pairs))
    assert set(result["summary"]) == set(METHODS)
    assert all(0 <= score["high_frequency"] <= 1 for score in result["scores"])  # each image's fine detail
    assert set(result["stage_distance"]) == set(common.META_GRADS)
    assert result["summary"]["microwave_es"]["bake_seconds"] > 0
    assert result["replay_cutn"] == 2 and result["bake_cutn"] == 1
    assert set(result["agreement"]) == {f"guide / {wide_ckpt}", f"guide / {other_ckpt}", f"{wide_ckpt} / {other_ckpt}"}
    table = Path("e.md").read_text()
    assert table in out and all(table.count(f"| {m} |") == len(judges) + 1 for m in METHODS)  # + what judges see
    assert "see of the guide's gain" in table and "| fine detail |" in table
    assert f"held-out judge {other_ckpt}" in table and "made at 16 px, cutn 2, 2 stages x 2 steps" in table and "learned at cutn 1" in table
    with Image.open("grid.png") as grid:  # under each image, each judge's distance
        step = report.CELL + report.GAP
        assert grid.size == (200 + step * len(METHODS), 24 + (step + report.LINE_H * 3) * len(PROMPTS))
    for text in PROMPTS:  # both bakes of every prompt, made with the settings asked for
        for mode in common.META_GRADS:
            baked = common.load_baked(result["bakes"][text][mode])
            assert baked["prompt"] == text and baked["config"]["meta_grad"] == mode
            assert baked["config"]["steps"] == 2 and baked["config"]["size"] == 16


def test_the_new_baselines_render_what_they_say(tiny_ckpt, wide_ckpt):
    result = run_evaluate(tiny_ckpt, wide_ckpt)
    assert result["normal_tuned"] == result["tuned"]["normal_tuned"] and set(result["tuned"]) == set(methods.TUNED)
    for tuned in result["tuned"].values():  # each swept apart: the rate its own sweep found nearest
        assert tuned["lr"] in tuning.LRS and tuned["lr"] == tuned["lrs"][tuned["guide"].index(min(tuned["guide"]))]
        assert tuned["prompts"] == PROMPTS and tuned["starts"] == 1
    assert result["tuned"]["normal_tuned"]["guide"] != result["tuned"]["restart_tuned"]["guide"]
    by = {m: [s[wide_ckpt] for s in result["scores"] if s["method"] == m] for m in BASELINES}
    assert len({tuple(v) for v in by.values()}) == len(by)  # each its own images
    for name, plain in (("normal_tuned", "normal"), ("restart_tuned", "restart")):
        if result["tuned"][name]["lr"] == 0.12:  # the reference rate chosen: the same run as the untuned one
            assert by[name] == by[plain]


def test_leave_one_out_never_uses_a_prompts_own_bake(tiny_ckpt, wide_ckpt):
    result = run_evaluate(tiny_ckpt, wide_ckpt)
    for text in PROMPTS:
        used = result["leave_one_out"][text]
        own = result["bakes"][text]
        assert len(used) == 2 and not set(own.values()) & set(used)
        others = {result["bakes"][t][result["auto_from"]] for t in PROMPTS if t != text}
        assert set(used) == others  # k = 2 of the two others: exactly the other prompts' bakes


def test_the_judges_see_the_same_images_for_every_method(tiny_ckpt, wide_ckpt, monkeypatch):
    calls = []
    real = scoring.embed

    def spy(model, images):
        calls.append((model.name, images.clone()))
        return real(model, images)

    monkeypatch.setattr(scoring, "embed", spy)
    run_evaluate(tiny_ckpt, wide_ckpt)
    assert len(calls) == SWEPT + 2 * len(PROMPTS) * len(METHODS)
    del calls[:SWEPT]  # the sweep's, first (its own test is below)
    for (guide, by_guide), (judge, by_judge) in zip(calls[::2], calls[1::2]):
        assert guide == tiny_ckpt and judge == wide_ckpt
        assert by_guide.shape[0] == 2 and torch.equal(by_guide, by_judge)
    shots = [images for _, images in calls[::2]]
    assert not torch.equal(shots[0], shots[1])  # each method's own images, not one set for all


def test_every_method_starts_from_the_same_images_and_random_cutouts(tiny_ckpt, wide_ckpt, monkeypatch):
    run_evaluate(tiny_ckpt, wide_ckpt)  # bake first, so that below only the evaluation renders
    seen = []
    real = render.rollout

    def spy(model, z, targets, settings, draw=None, **kwargs):
        cuts = draw(z.shape[0], settings.cutn, z.shape[-2:], model.size, z.device)  # what it would draw first
        seen.append((z.clone(), cuts["theta"], settings.steps, settings.cutn, settings.lr, settings.carry_moments))
        return real(model, z, targets, settings, draw=draw, **kwargs)

    monkeypatch.setattr(render, "rollout", spy)
    result = run_evaluate(tiny_ckpt, wide_ckpt, "--tune-lrs", "0.5,0.7")
    swept = len(PROMPTS) * 2 * len(methods.TUNED)  # a batch of each sweep's starts per prompt and rate
    n = len(METHODS)
    assert len(seen) == swept + len(PROMPTS) * n  # a batch of a prompt's starts per method
    assert sorted({s[4] for s in seen[:swept]}) == [0.5, 0.7]  # the sweep tries the rates asked for
    del seen[:swept]
    tuned, decay, restart = (result["tuned"][k]["lr"] for k in ("normal_tuned", "normal_decay_tuned", "restart_tuned"))
    groups = [seen[k:k + n] for k in range(0, len(seen), n)]  # one prompt each
    for group in groups:
        first = group[0]
        assert first[0].shape[0] == 2 and not torch.equal(first[0][0], first[0][1])  # its 2 starts, each its own
        assert not torch.equal(first[1][:2], first[1][2:])  # each start's own cutouts (2 a step)
        for z, cuts, steps, cutn, _, _ in group[1:]:
            assert torch.equal(z, first[0]) and torch.equal(cuts, first[1])
            assert steps * cutn > 0 and cutn == first[3] == 2
        # normal and normal_tuned: stages x steps; normal_drop and the decay: a step a stage; the rest: the bakes'
        assert [g[2] for g in group] == [2 * 2, 2 * 2, 1, 1, 2, 2] + [2] * (n - 6)
        # normal at the reference rate, the tuned ones at theirs; restarts restart Adam, the drop and decay do not
        assert [g[4] for g in group[:6]] == [0.12, tuned, 0.12, decay, 0.12, restart]
        assert {tuned, decay, restart} <= {0.5, 0.7}
        assert [g[5] for g in group[:6]] == [False, False, True, True, False, False]
    assert not torch.equal(groups[0][0][0], groups[1][0][0])  # another prompt, other starts


def test_a_batch_of_starts_makes_what_each_start_alone_makes(tiny, monkeypatch):
    from staged_clip import cutouts, scoring
    settings = Settings(size=16, steps=3, cutn=2, lr=0.3)
    targets = torch.nn.functional.normalize(torch.randn(2, tiny.dim), dim=-1)
    seeds = [scoring.start_seed(0, j) for j in range(3)]

    def rendered(some):
        draw = cutouts.draws_from([torch.Generator().manual_seed(seed) for seed in some])
        return render.rollout(tiny, scoring.start_images(some, 16, "cpu"), targets, settings, draw=draw)

    together = rendered(seeds)
    for j, seed in enumerate(seeds):
        assert torch.allclose(together[j:j + 1], rendered([seed]), atol=1e-4)


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


def test_ctrl_c_in_a_bake_says_what_is_saved_in_one_line(tiny_ckpt, wide_ckpt, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(es, "meta_step", interrupted)
    with pytest.raises(SystemExit) as info:
        run_evaluate(tiny_ckpt, wide_ckpt, "--meta-grads", "es")
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 130 and last.startswith("interrupted: ") and "run again to go on" in last


def test_one_prompt_no_judge_or_the_guide_as_judge_is_refused_in_one_line(tiny_ckpt, wide_ckpt, capsys):
    Path("one.txt").write_text("a red apple\n")
    with pytest.raises(SystemExit) as info:
        evaluate.main(["one.txt", "--clip-model", tiny_ckpt, "--score-model", wide_ckpt])
    assert "at least two" in str(info.value.code)
    for judges, says in [(f"{wide_ckpt},{tiny_ckpt}", "is the guide itself"), (f"{wide_ckpt},{wide_ckpt}", "distinct")]:
        with pytest.raises(SystemExit) as info:
            evaluate.main(["one.txt", "--clip-model", tiny_ckpt, "--score-model", judges])
        assert info.value.code == 2 and says in capsys.readouterr().err
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


def test_toy_is_judged_by_both_shipped_judges_by_default():
    args = evaluate.parse_args(["prompts_toy_test.txt", "--clip-model", "toy"])
    assert args.score_model == ["toy-scorer", "toy-judge"]


def test_the_test_prompts_chose_nothing():
    from toy import world
    test, chose = (common.read_prompts(str(ROOT / name)) for name in ("prompts_toy_test.txt", "prompts_toy.txt"))
    assert len(test) == len(set(test)) == 20 and not set(test) & set(chose)
    held = {f"{c} {s}" for c, s in world.HELD_OUT}
    assert not any(pair in text for text in test for pair in held)  # no pair the toy models never saw


def test_the_sweep_sees_neither_a_judge_nor_an_evaluation_start(tiny_ckpt, wide_ckpt, monkeypatch):
    seeds, scored, inside = {"sweep": [], "evaluation": []}, {"sweep": set(), "evaluation": set()}, [False]
    real_start, real_embed, real_sweep = scoring.start_image, scoring.embed, tuning.sweep

    def start(seed, size, device):
        seeds["sweep" if inside[0] else "evaluation"].append(seed)
        return real_start(seed, size, device)

    def embed(model, images):
        scored["sweep" if inside[0] else "evaluation"].add(model.name)
        return real_embed(model, images)

    def sweep(*args, **kwargs):
        inside[0] = True
        try:
            return real_sweep(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(scoring, "start_image", start)
    monkeypatch.setattr(scoring, "embed", embed)
    monkeypatch.setattr(tuning, "sweep", sweep)
    Path("tune.txt").write_text("a yellow kite\na grey stone\n")
    result = run_evaluate(tiny_ckpt, wide_ckpt, "--tune-prompts", "tune.txt", "--tune-starts", "2",
                          "--tune-lrs", "0.12,0.5")
    assert scored == {"sweep": {tiny_ckpt}, "evaluation": {tiny_ckpt, wide_ckpt}}  # no judge in the sweep
    assert len(seeds["sweep"]) == 2 * 2 * len(methods.TUNED) and len(set(seeds["sweep"])) == 2 * 2  # the same starts
    assert not set(seeds["sweep"]) & set(seeds["evaluation"])
    assert min(seeds["sweep"]) >= scoring.TUNE_SEED > max(seeds["evaluation"]) >= scoring.START_SEED
    assert all(t["seeds"] == seeds["sweep"][:4] for t in result["tuned"].values())
    assert result["normal_tuned"]["prompts"] == ["a yellow kite", "a grey stone"]
    assert result["normal_tuned"]["lrs"] == [0.12, 0.5] and len(result["normal_tuned"]["guide"]) == 2
    assert "2 other prompts, none of them scored here" in Path("e.md").read_text()


def test_the_hand_schedule_at_full_rate_is_plain_optimization(tiny, monkeypatch):
    settings = Settings(size=16, lr=0.12, cutn=2)
    target = torch.nn.functional.normalize(torch.randn(32), dim=0)
    start = scoring.start_image(7, 16, "cpu")
    runs = {}
    for by in (1.0, methods.DROP_BY):
        monkeypatch.setattr(methods, "DROP_BY", by)
        torch.manual_seed(0)
        runs[by] = render.rollout(tiny, start, *methods.plain_recipe("normal_drop", target, 2, 4, settings)[:2],
                                  lr_scale=methods.plain_recipe("normal_drop", target, 2, 4, settings)[2])
    torch.manual_seed(0)
    targets, plain, scale = methods.plain_recipe("normal", target, 2, 4, settings)
    assert plain.steps == 8 and scale is None
    normal = render.rollout(tiny, start, targets, plain)
    assert torch.allclose(runs[1.0], normal, atol=1e-5)  # 8 one-step stages, moments carried: one Adam run
    assert not torch.allclose(runs[methods.DROP_BY], normal, atol=1e-3)  # the last quarter slower
    _, drop, scale = methods.plain_recipe("normal_drop", target, 2, 4, settings)
    assert drop.carry_moments and drop.steps == 1 and scale.tolist() == pytest.approx([1] * 6 + [0.1] * 2)
    carried = settings.replace(carry_moments=True)  # as with --carry-moments: restart still restarts Adam
    targets, restart, scale = methods.plain_recipe("restart", target, 2, 4, carried)
    assert targets.shape == (2, 32) and restart.steps == 4 and not restart.carry_moments and scale is None


def test_the_tuned_schedules_run_the_rates_worked_by_hand(tiny, monkeypatch):
    """2 stages x 4 steps at a swept rate of 0.5: the decay falls linearly to 0 over the 8 steps,
    a step a stage with Adam's moments carried; restart_tuned restarts Adam each stage at 0.5."""
    settings = Settings(size=16, lr=0.12, cutn=1)
    target = torch.nn.functional.normalize(torch.randn(32), dim=0)
    rates, real = [], render.stage_lr
    monkeypatch.setattr(render, "stage_lr", lambda *a: rates.append(real(*a)) or rates[-1])
    start = scoring.start_image(7, 16, "cpu")
    found = {}
    for kind in ("normal_tuned", "normal_decay_tuned", "restart_tuned"):
        rates.clear()
        targets, renderer, scale = methods.plain_recipe(kind, target, 2, 4, settings, lr=0.5)
        render.rollout(tiny, start, targets, renderer, lr_scale=scale)
        found[kind] = (list(rates), renderer.steps, renderer.carry_moments)
    assert found["normal_tuned"] == ([0.5], 8, False)
    assert found["normal_decay_tuned"][0] == pytest.approx([0.5, 0.4375, 0.375, 0.3125, 0.25, 0.1875, 0.125, 0.0625])
    assert found["normal_decay_tuned"][1:] == (1, True)
    assert found["restart_tuned"] == ([0.5, 0.5], 4, False)
    untuned = methods.plain_recipe("restart", target, 2, 4, settings)[1]  # the reference rate, no lr given
    assert untuned.lr == 0.12 and untuned.steps == 4


def test_the_share_of_fine_detail_is_high_for_pixel_noise_and_low_for_shapes():
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checker = ((yy + xx) % 2).float().expand(1, 3, 16, 16)  # the finest pattern there is
    blocks = ((yy // 8 + xx // 8) % 2).float().expand(1, 3, 16, 16)  # two shapes a side
    noise = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    found = scoring.high_frequency(torch.cat([checker, blocks, noise, torch.full((1, 3, 16, 16), 0.3)]))
    assert found[0] == pytest.approx(1.0) and found[1] < 0.2 and found[-1] == 0  # a square wave: its odd harmonics
    assert 0.6 < float(found[2:-1].mean()) < 0.9  # white noise: 3/4 of its frequencies are fine
