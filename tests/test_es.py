"""The ES bake: its estimator, shared randomness, the validation gate, learned step sizes,
processes, and the smoother renderer's settings."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import bake
import batch_bake
import common
import microwave
from conftest import ROOT, bake_args, reference_rollout, render_args
from staged_clip import baked, distributed, es, gate, knobs, losses, prompts, render, settings, stats, tasks
from staged_clip.settings import Settings

ES = ["--meta-grad", "es", "--population", "2"]


# --- the estimator

@pytest.fixture
def smooth_renderer(monkeypatch):
    """A stand-in renderer whose final loss is a known smooth function of the targets and rates:
    each image's loss is w . target_s summed over stages, plus a quadratic in log lr_scale."""
    torch.manual_seed(3)
    w = torch.randn(4, 32)  # [S, D]
    best_log_lr = torch.tensor([0.3, -0.2, 0.1, 0.0])

    def loss_of(targets, log_lr):  # targets [S, B, D], log_lr [S, B] -> [B]
        return (w[:, None] * targets).sum((0, 2)) + ((log_lr - best_log_lr[:, None]) ** 2).sum(0)

    def rollout(model, z, targets, settings, lr_scale=None, draw=None, **kwargs):
        log_lr = lr_scale.log() if lr_scale is not None else torch.zeros(targets.shape[:2])
        return loss_of(targets, log_lr).view(-1, 1, 1, 1).expand_as(z).clone()

    monkeypatch.setattr(render, "rollout", rollout)
    monkeypatch.setattr(losses, "bake_loss", lambda model, z, prompt, cutn, draws=None, look=None: z.mean((1, 2, 3)))
    return loss_of


def test_the_es_estimate_follows_the_true_gradient_of_a_smooth_loss(tiny, smooth_renderer):
    prompt = common.load_prompt(tiny, "a red apple")
    shift = torch.zeros(tiny.dim)
    settings = Settings(stages=4, size=8, steps=1, population=3000, sigma=0.01, lr_sigma=0.01, seed=0)
    search = es.Search(prompt.embed, settings.stages, rank=6, seed=0)
    search.coef += 0.1 * torch.randn_like(search.coef)
    search.log_lr += 0.2 * torch.randn_like(search.log_lr)
    eps_c, eps_k = search.perturbations(settings.population, 0, 0, settings)
    values, _, _ = es.population_losses(tiny, search, eps_c, eps_k, tasks.Tasks.single(tiny, prompt, 4), shift,
                                        settings, 0)
    grad_c, grad_k, used = es.estimate(values[:, 0] - values[:, 1], eps_c, eps_k, settings)
    grad_l = grad_k[:, knobs.LR]
    coef, log_lr = search.coef.clone().requires_grad_(), search.log_lr.clone().requires_grad_()
    targets = prompts.shape_targets(search.stages(coef), shift)[:, None]  # [S, 1, D]
    smooth_renderer(targets, log_lr[:, None]).sum().backward()
    assert used == settings.population
    assert F.cosine_similarity(grad_c.flatten(), coef.grad.flatten(), dim=0) > 0.9
    assert F.cosine_similarity(grad_l, log_lr.grad, dim=0) > 0.9
    assert grad_c.norm() == pytest.approx(coef.grad.norm().item(), rel=0.25)  # the right size, too


def test_non_finite_pairs_are_dropped_and_outliers_clipped():
    settings = Settings(sigma=0.5, lr_sigma=1.0)
    eps_c, eps_k = torch.ones(4, 2, 3), torch.ones(4, 2, len(knobs.KNOBS))
    grad_c, grad_k, used = es.estimate(torch.tensor([1.0, 1.0, float("nan"), 100.0]), eps_c, eps_k, settings)
    assert used == 3
    assert torch.allclose(grad_k[:, knobs.LR], torch.full((2,), (1 + 1 + 3) / 3 / 2))  # 100 clipped to 3 x the median
    assert es.estimate(torch.tensor([float("nan")] * 2), eps_c[:2], eps_k[:2], settings) is None


def test_each_pair_shares_its_start_and_cutouts_and_pairs_differ(tiny, monkeypatch):
    seen = []
    real = render.rollout

    def spy(model, z, targets, settings, lr_scale=None, draw=None, **kwargs):
        seen.append((z.clone(), draw(len(z), settings.cutn, z.shape[-1], model.size, z.device), targets.clone()))
        return real(model, z, targets, settings, lr_scale=lr_scale, draw=draw, **kwargs)

    monkeypatch.setattr(render, "rollout", spy)
    prompt = common.load_prompt(tiny, "a red apple")
    settings = Settings(stages=2, size=16, steps=2, cutn=4, population=3, seed=1)
    search = es.Search(prompt.embed, 2, seed=1)
    eps_c, eps_k = search.perturbations(3, 1, 0, settings)
    values, _, _ = es.population_losses(tiny, search, eps_c, eps_k, tasks.Tasks.single(tiny, prompt, 2),
                                        common.style_shift(tiny), settings, 0)
    (z, draws, targets), = seen
    assert torch.equal(z[:3], z[3:]) and not torch.equal(z[0], z[1])  # + and - share a start; pairs differ
    for key, value in draws.items():
        per_image = value.reshape(6, -1)  # [2n images, ...] (theta, noise and gray of 4 cutouts each)
        assert torch.equal(per_image[:3], per_image[3:])
        assert key == "gray" or not torch.equal(per_image[0], per_image[1])
    assert not torch.equal(targets[:, :3], targets[:, 3:])  # the perturbations do differ
    assert torch.isfinite(values).all() and values.shape == (3, 2)


def test_a_pair_does_not_depend_on_what_shares_its_batch(tiny):
    """Pair j's losses come from its own seed alone: chunked or whole, the same numbers."""
    prompt = common.load_prompt(tiny, "a red apple")
    settings = Settings(stages=2, size=16, steps=2, cutn=2, population=4, seed=2)
    search = es.Search(prompt.embed, 2, seed=2)
    eps_c, eps_k = search.perturbations(4, 2, 5, settings)
    shift, aims = common.style_shift(tiny), tasks.Tasks.single(tiny, prompt, 2)
    whole, _, _ = es.population_losses(tiny, search, eps_c, eps_k, aims, shift, settings, 5)
    single, _, _ = es.population_losses(tiny, search, eps_c, eps_k, aims, shift, settings.replace(es_chunk=1), 5)
    assert torch.allclose(whole, single, atol=1e-3)  # the same draws; only rounding may differ


def test_chunks_deal_out_every_pair_once():
    assert distributed.chunks(5, 2) == [[0, 1], [2, 3], [4]]  # one process: all of them
    assert distributed.chunks(5, 0) == [[0, 1, 2, 3, 4]]


# --- the gate

def test_the_gate_never_keeps_a_candidate_worse_on_its_validation_starts(tiny):
    prompt = common.load_prompt(tiny, "a red apple")
    settings = Settings(stages=2, size=16, steps=2, cutn=2, validation_starts=3)
    validation = gate.Gate(tiny, tasks.Tasks.single(tiny, prompt, 2), common.style_shift(tiny), settings)
    best = validation.best_losses.clone()
    assert torch.equal(validation.losses(*validation.best), best)  # fixed starts and cutouts: the same replay
    torch.manual_seed(0)
    for step in range(6):
        stages = F.normalize(prompt.embed + 0.5 * torch.randn(2, tiny.dim), dim=-1)
        raw = torch.zeros(2, len(knobs.KNOBS))
        raw[:, knobs.LR] = 0.5 * torch.randn(2)
        found = validation.losses(stages, raw)
        kept = validation.offer(step, stages, raw)
        assert kept == bool(found.mean() < best.mean())
        if kept:
            best = found
            assert torch.equal(validation.best[0], stages)
        assert torch.equal(validation.best_losses, best)
    assert not validation.offer(6, *validation.best)  # a tie is not better
    assert [h["kept"] for h in validation.history].count(True) >= 1  # the prompt itself, at least


def test_an_es_bake_runs_records_its_validation_and_repeats_with_its_seed(tiny_ckpt, capsys):
    for name in ("one", "two"):
        bake.main(["a red apple", *bake_args(tiny_ckpt, *ES, "--seed", "4", "--name", name, "--validate-every", "1",
                                             "--out", f"{name}.png")])
    one, two = common.load_baked("baked/one.pt"), common.load_baked("baked/two.pt")
    assert torch.equal(one["stages"], two["stages"]) and torch.equal(one["lr_scale"], two["lr_scale"])
    assert one["history"] == two["history"] and one["config"]["meta_grad"] == "es"
    assert [h["step"] for h in one["validation"]] == [None, 0, 1] and one["seconds"] > 0
    assert one["stages"].shape == (2, 32) and one["lr_scale"].shape == (2,)
    assert torch.allclose(one["stages"].norm(dim=1), torch.ones(2))


def test_an_es_bake_starts_on_the_prompt_and_a_gated_one_ends_no_worse(tiny_ckpt):
    bake.main(["a red apple", *bake_args(tiny_ckpt, *ES, "--seed", "1", "--validate-every", "1", "--out", "b.png")])
    found = common.load_baked("baked/a_red_apple.pt")
    losses_ = [h["loss"] for h in found["validation"] if h["kept"]]
    assert losses_ == sorted(losses_, reverse=True)  # each kept one better than the one before
    if len(losses_) == 1:  # nothing beat the prompt: the prompt itself is saved, at the base rate
        prompt = found["prompt_embed"]
        assert torch.allclose(found["stages"], prompt.expand(2, -1), atol=1e-6)
        assert torch.equal(found["lr_scale"], torch.ones(2))


def test_batch_bake_bakes_with_es(tiny_ckpt):
    Path("list.txt").write_text("a red apple\na blue car\n")
    batch_bake.main(["list.txt", *bake_args(tiny_ckpt, *ES, "--baked-dir", "bk", "--seed", "0")])
    for name in ("a_red_apple", "a_blue_car"):
        assert common.load_baked(f"bk/{name}.pt")["config"]["meta_grad"] == "es"


# --- learned step sizes

def test_learned_step_sizes_survive_a_round_trip_and_change_the_replay(tiny_ckpt, tiny):
    stages = F.normalize(torch.randn(3, 32), dim=-1)
    for name, scale in [("base.pt", None), ("ones.pt", torch.ones(3)), ("fast.pt", torch.tensor([3.0, 0.5, 2.0]))]:
        baked.save_baked(name, {"prompt": "a red apple", "prompt_type": "text", "prompt_embed": stages[0],
                                "clip_model": tiny_ckpt, "stages": stages, "config": {}, "history": [],
                                "complete": True, "lr_scale": scale})
    assert common.load_baked("base.pt")["lr_scale"] is None
    assert torch.equal(common.load_baked("fast.pt")["lr_scale"], torch.tensor([3.0, 0.5, 2.0]))
    pixels = {}
    for name in ("base.pt", "ones.pt", "fast.pt"):
        microwave.main([name, *render_args(tiny_ckpt, "--seed", "3", "--out", name + ".png")])
        with Image.open(name + ".png") as im:
            pixels[name] = im.tobytes()
    assert pixels["base.pt"] == pixels["ones.pt"]  # a file without multipliers replays at the base rate
    assert pixels["fast.pt"] != pixels["base.pt"]


def test_bad_learned_step_sizes_are_refused(tmp_path):
    stages = torch.randn(2, 8)
    for bad in (torch.tensor([1.0, -1.0]), torch.tensor([1.0, float("inf")]), torch.ones(3)):
        baked.save_baked(tmp_path / "b.pt", {"prompt": "x", "prompt_type": "text", "prompt_embed": stages[0],
                                             "clip_model": "m", "stages": stages, "config": {}, "history": [],
                                             "complete": True, "lr_scale": bad})
        with pytest.raises(common.UserError, match="lr_scale"):
            common.load_baked(tmp_path / "b.pt")


def test_auto_microwave_composes_step_sizes_like_paths():
    paths = F.normalize(torch.randn(2, 3, 8), dim=-1)
    scales = torch.tensor([[1.0, 2.0, 4.0], [4.0, 2.0, 1.0]])
    raw = torch.zeros(2, 3, len(knobs.KNOBS))
    raw[..., knobs.LR], raw[..., knobs.PART] = scales.log(), torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]])
    path, mixed = baked.compose_path(paths, "mean", raw)
    assert torch.allclose(mixed[:, knobs.LR].exp(), torch.tensor([2.0, 2.0, 2.0]))  # the geometric mean
    assert torch.allclose(mixed[:, knobs.PART], torch.full((3,), 0.5))
    torch.manual_seed(0)
    path, mixed = baked.compose_path(paths, "splice", raw)
    for i in range(3):
        j = next(j for j in range(2) if torch.allclose(path[i], paths[j, i]))
        assert torch.equal(mixed[i], raw[j, i])  # each stage's knobs from the path its direction came from


# --- the renderer's settings

def test_the_default_inner_eps_is_the_reference_renderer_exactly(tiny):
    z0 = torch.randn(1, 3, 16, 16)
    targets = F.normalize(torch.randn(2, tiny.dim), dim=-1)
    runs = []
    for renderer in (Settings(steps=3, cutn=2), Settings(steps=3, cutn=2, inner_eps=1e-8)):
        torch.manual_seed(1)
        runs.append(render.rollout(tiny, z0, targets, renderer))
    torch.manual_seed(1)
    z = reference_rollout(tiny, z0, targets, steps=3, cutn=2)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], z)
    torch.manual_seed(1)
    assert not torch.allclose(render.rollout(tiny, z0, targets, Settings(steps=3, cutn=2, inner_eps=1e-2)),
                              runs[0], atol=1e-3)


def test_carried_moments_are_one_adam_through_every_stage(tiny):
    z0 = torch.randn(1, 3, 16, 16)
    targets = F.normalize(torch.randn(3, tiny.dim), dim=-1)
    torch.manual_seed(2)
    carried = render.rollout(tiny, z0, targets, Settings(steps=2, cutn=2, carry_moments=True,
                                                                inner_eps=1e-3))
    torch.manual_seed(2)
    z = z0.clone().requires_grad_()
    optimizer = torch.optim.AdamW([z], lr=0.12, eps=1e-3)  # one optimizer; only the target changes
    for target in targets:
        for _ in range(2):
            loss, z.grad = render.loss_and_grad(tiny, z, target, 2)
            optimizer.step()
    assert torch.allclose(carried, z.detach(), atol=1e-5)
    torch.manual_seed(2)
    fresh = render.rollout(tiny, z0, targets, Settings(steps=2, cutn=2, inner_eps=1e-3))
    assert not torch.allclose(carried, fresh, atol=1e-3)


def test_checkpoint_with_carried_moments_is_one_line(tiny_ckpt, capsys):
    with pytest.raises(SystemExit) as info:
        bake.main(["a red apple", *bake_args(tiny_ckpt, "--checkpoint", "--carry-moments")])
    assert "--carry-moments" in info.value.code and "\n" not in info.value.code


def test_a_replay_takes_its_bakes_renderer_unless_told(tiny_ckpt):
    base = {"inner_eps": None, "carry_moments": None}
    assert settings.replayed(base, {})["inner_eps"] == 1e-8 and settings.replayed(base, {})["carry_moments"] is False
    assert settings.replayed(base, {"inner_eps": 1e-3, "carry_moments": True})["inner_eps"] == 1e-3  # older files
    told = {"inner_eps": 1e-4, "carry_moments": False}
    assert settings.replayed(told, {"inner_eps": 1e-3, "carry_moments": True}).items() >= told.items()


# --- evaluation's figures

def test_wilson_interval_known_answer():
    low, high = stats.interval(27, 36)
    assert low == pytest.approx(0.59, abs=0.01) and high == pytest.approx(0.86, abs=0.01)
    assert stats.interval(0, 10)[0] == 0.0 and stats.interval(10, 10)[1] == 1.0


def test_a_paired_difference_and_its_standard_error_by_hand():
    scores = [{"prompt": p, "start": j, "method": m, "guide": g, "judge": d}
              for p, j, m, g, d in [("a", 0, "x", 0.5, 0.5), ("a", 0, "y", 0.7, 0.6), ("a", 1, "x", 0.4, 0.4),
                                    ("a", 1, "y", 0.3, 0.4), ("b", 0, "x", 0.6, 0.2), ("b", 0, "y", 0.9, 0.1)]]
    # x - y on the three paired starts: -0.2, +0.1, -0.3 (guide); mean -0.4/3, sample sd
    # sqrt(((-0.2 + 0.4/3)^2 + (0.1 + 0.4/3)^2 + (-0.3 + 0.4/3)^2) / 2) = 0.20817, se = sd / sqrt(3)
    mean, se, median = stats.difference(stats.paired(scores, "x", "y", "guide"))
    assert mean == pytest.approx(-0.13333, abs=1e-5) and se == pytest.approx(0.120185, abs=1e-5)
    assert median == pytest.approx(-0.2)
    entry = stats.summarize(scores, ["x", "y"], ["y"], ["guide", "judge"])["x"]
    assert entry["guide"]["win_rate_vs_y"] == pytest.approx(2 / 3) and entry["guide"]["se_vs_y"] == pytest.approx(se)
    assert entry["judge"]["win_rate_vs_y"] == pytest.approx(1.5 / 3)  # one win, one tie (half), one loss
    assert entry["judge"]["median_diff_vs_y"] == pytest.approx(0.0) and entry["judge"]["mean_diff_vs_y"] == pytest.approx(0.0)
    # the judges order the pair alike on start (a, 0) only: the tie on (a, 1) leaves it out
    assert stats.agreement(scores, ["guide", "judge"]) == {"guide / judge": 0.5}
    assert stats.difference([(0.3, 0.1)]) == pytest.approx((0.2, 0.0, 0.2))


def test_the_chaos_probe_writes_its_table(tiny_ckpt, wide_ckpt, capsys):
    Path("p.txt").write_text("a red apple\n")
    import evaluate
    evaluate.main(["p.txt", "--clip-model", tiny_ckpt, "--score-model", wide_ckpt, "--chaos", "--size", "16",
                   "--stages", "2", "--steps", "2", "--pairs", "2", "--sigmas", "0,0.1", "--json", "c.json",
                   "--table", "c.md"])
    import json
    result = json.loads(Path("c.json").read_text())
    row, = result["rows"]
    assert row["differences"]["0.0"] == 0.0  # the same stages, start and cutouts: the same loss
    assert row["differences"]["0.1"] > 0 and row["spread"] > 0 and row["pixel_gradient"] > 0
    assert -1 <= row["unrolled_agreement"] <= 1 and "| a red apple |" in Path("c.md").read_text()


# --- processes

def test_two_processes_bake_the_same_stages_as_one(tiny_ckpt, tmp_path):
    flags = [*bake_args(tiny_ckpt, "--meta-grad", "es", "--population", "4", "--es-chunk", "2", "--seed", "3",
                        "--validate-every", "1", "--validation-starts", "2", "--threads", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(ROOT / "bake.py"), "a red apple", *flags, "--name", "one",
                          "--out", "one.png"], capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(ROOT / "bake.py"), "a red apple", *flags, "--name", "two", "--out", "two.png"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr
    a, b = common.load_baked("baked/one.pt"), common.load_baked("baked/two.pt")
    assert torch.equal(a["stages"], b["stages"]) and torch.equal(a["lr_scale"], b["lr_scale"])
    assert a["history"] == b["history"] and a["validation"] == b["validation"]
    assert sorted(p.name for p in Path("baked").iterdir()) == ["one.pt", "two.pt"]  # only rank 0 wrote


def same(settings, config):
    return not baked.differences(settings, config)


def test_a_setting_that_plays_no_part_does_not_make_another_bake():
    unrolled = Settings(meta_grad="unrolled")
    assert same(unrolled, Settings(meta_grad="unrolled", population=9, validation_starts=3).config())
    assert baked.differences(unrolled, Settings(meta_grad="unrolled", steps=7).config()) == [("steps", 7, 30)]
    gated = Settings(meta_grad="unrolled", validate_every=2)
    assert not same(gated, unrolled.config())  # the gate on makes another bake
    assert not same(gated, Settings(meta_grad="unrolled", validate_every=2, validation_starts=3).config())
    es_ = Settings(meta_grad="es")
    assert not same(es_, Settings(meta_grad="es", population=9).config())
    assert same(es_, Settings(meta_grad="es", validate_every=5).config())  # the default, said aloud
    assert same(es_, Settings(meta_grad="es", es_chunk=1, threads=1).config())  # speed only

