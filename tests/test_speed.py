"""The fast paths compute what the plain maths computes: batches, fused Adam, checkpoints, compile."""

import json
from pathlib import Path
import weakref

import pytest
import torch
import torch.nn.functional as F

import auto_microwave
import bake
import bench
import common
import microwave
import normal
from conftest import bake_args, render_args
from staged_clip import benchmark, learners, losses, models, prompts, render
from staged_clip.settings import Settings

CFG = Settings(size=8, steps=2, lr=0.12, cutn=4, stage_reg=0.5, meta_grad="unrolled")


def targets_for(model, n, seed=1):
    torch.manual_seed(seed)
    return F.normalize(torch.randn(n, model.dim), dim=-1)


def plain_loop(model, z, targets, steps, lr, cutn):
    """The renderer as the reference writes it: torch's own AdamW, one step at a time."""
    found = []
    for target in targets:
        z = z.detach().clone().requires_grad_()
        optimizer = torch.optim.AdamW([z], lr=lr, foreach=False)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = losses.image_loss(model, z, target, cutn)
            loss.backward()
            optimizer.step()
            found.append(loss.item())
    return z.detach(), found


def test_the_fast_renderer_matches_a_plain_loop(tiny):
    z0 = torch.randn(1, 3, 16, 16)
    targets = targets_for(tiny, 2)
    torch.manual_seed(3)
    expected, expected_losses = plain_loop(tiny, z0, targets, 4, 0.12, 4)
    torch.manual_seed(3)
    found = []
    z = render.rollout(tiny, z0, targets, Settings(steps=4, lr=0.12, cutn=4), callback=lambda s, t, loss, z: found.append(loss.item()))
    assert found == pytest.approx(expected_losses, rel=1e-5)
    assert torch.allclose(z, expected, atol=1e-5)
    assert not torch.allclose(z, z0, atol=1e-2)


def test_a_batch_of_two_starts_equals_two_single_rollouts(tiny):
    """At CLIP's own input side with one cutout no randomness enters, so they must agree."""
    side = tiny.size
    z0 = torch.randn(2, 3, side, side)
    targets = targets_for(tiny, 2)
    together = render.rollout(tiny, z0, targets, Settings(steps=3, lr=0.12, cutn=1))
    alone = torch.cat([render.rollout(tiny, z0[i:i + 1], targets, Settings(steps=3, lr=0.12, cutn=1)) for i in range(2)])
    # float rounding differs between a batch and one image, and Adam's first, nearly sign,
    # steps magnify it where a pixel's gradient is near zero: a few pixels differ by 1e-4
    assert (together - alone).abs().mean() < 1e-6 and torch.allclose(together, alone, atol=1e-3)
    assert not torch.allclose(together[0], together[1], atol=1e-2)


def meta_gradient(model, starts, cfg, stages):
    """stages.grad after one meta step whose random starts are `starts`."""
    s = stages.clone().requires_grad_()
    optimizer = torch.optim.AdamW([s], lr=0.12)
    prompt = common.load_prompt(model, "a red apple")
    original = render.random_start
    render.random_start = lambda size, device, batch=1: starts.clone()
    try:
        loss, z = learners.meta_step(model, s, optimizer, prompt, common.style_shift(model), cfg, 0.25,
                                     differentiate=True)
    finally:
        render.random_start = original
    assert z.shape[0] == starts.shape[0]
    return s.grad.clone(), loss


def test_a_batched_meta_gradient_is_the_mean_of_the_single_ones(tiny):
    side = tiny.size
    starts = torch.randn(2, 3, side, side)
    stages = targets_for(tiny, 3)
    cfg = CFG.replace(size=side, cutn=1)
    together, loss = meta_gradient(tiny, starts, cfg.replace(batch=2), stages)
    singles = [meta_gradient(tiny, starts[i:i + 1], cfg, stages) for i in range(2)]
    mean = (singles[0][0] + singles[1][0]) / 2
    # equal up to float rounding, which Adam's first steps magnify (see the test above)
    assert ((together - mean).norm(dim=1) < 1e-3 * mean.norm(dim=1)).all()
    assert loss == pytest.approx((singles[0][1] + singles[1][1]) / 2, rel=1e-5)
    assert not torch.allclose(singles[0][0], singles[1][0], rtol=1e-2)  # the starts differ


def test_checkpointed_and_plain_meta_gradients_agree(tiny):
    """With cutouts drawn at random: the rerun in the backward must draw the same ones."""
    starts = torch.randn(2, 3, 8, 8)
    stages = targets_for(tiny, 3)
    grads = []
    for checkpoint in (False, True):
        torch.manual_seed(11)
        grads.append(meta_gradient(tiny, starts, CFG.replace(batch=2, checkpoint=checkpoint), stages)[0])
    plain, checkpointed = grads
    assert (plain.norm(dim=1) > 0).all()
    assert ((plain - checkpointed).norm(dim=1) < 1e-4 * plain.norm(dim=1)).all()


def test_checkpointing_keeps_less_for_the_backward(tiny):
    """What autograd holds between the forward and the backward of a 4-stage rollout."""
    def held(checkpoint):
        saved = []

        def pack(t):
            saved.append(weakref.ref(t))
            return t

        stages = targets_for(tiny, 4).requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), models.math_attention():
            z = render.differentiable_rollout(tiny, torch.randn(1, 3, 16, 16), stages,
                                              Settings(steps=3, lr=0.12, cutn=2, checkpoint=checkpoint))
        alive = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                 for t in (ref() for ref in saved) if t is not None}
        return sum(alive.values()), z

    plain, z_plain = held(False)
    checkpointed, z_checkpointed = held(True)
    assert checkpointed * 10 < plain


@pytest.fixture(scope="module")
def compiled_tiny(tiny_ckpt):
    model = models.load_clip(tiny_ckpt, "cpu")
    render.use_compile(model)
    return model


def test_the_compiled_loss_gives_the_eager_losses(tiny, compiled_tiny):
    z0 = torch.randn(1, 3, 16, 16)
    targets = targets_for(tiny, 2)
    runs = []
    for model in (tiny, compiled_tiny):
        torch.manual_seed(4)
        found = []
        z = render.rollout(model, z0, targets, Settings(steps=3, lr=0.12, cutn=4), callback=lambda s, t, loss, z: found.append(loss.item()))
        runs.append((z, found))
    assert compiled_tiny.compiled_loss is not None  # it compiled, and was not dropped for eager
    assert runs[1][1] == pytest.approx(runs[0][1], rel=1e-5)
    assert torch.allclose(runs[0][0], runs[1][0], atol=1e-5)


def broken_compile(error):
    """A torch.compile whose compiled function raises error when called."""
    def compile(fn, **kwargs):
        def run(*args):
            raise error
        return run
    return compile


def test_a_compile_failure_falls_back_to_eager_with_a_note(tiny_ckpt, monkeypatch, capsys):
    import torch._dynamo
    failure = torch._dynamo.exc.TorchRuntimeError("no compiler here")  # a compiler's own error
    monkeypatch.setattr(torch, "compile", broken_compile(failure))
    normal.main(["a red apple", *render_args(tiny_ckpt, "--compile", "--seed", "1", "--out", "c.png")])
    normal.main(["a red apple", *render_args(tiny_ckpt, "--seed", "1", "--out", "e.png")])
    err = capsys.readouterr().err
    assert err.count("--compile failed (TorchRuntimeError: no compiler here); running eager") == 1
    assert open("c.png", "rb").read() != b"" and _pixels("c.png") == _pixels("e.png")


@pytest.mark.parametrize("error", [RuntimeError("Expected all tensors to be on the same device"),
                                   ValueError("shapes [2, 3] and [4] do not match")])
def test_an_error_that_is_not_the_compilers_is_raised_not_hidden(tiny_ckpt, monkeypatch, capsys, error):
    monkeypatch.setattr(torch, "compile", broken_compile(error))
    with pytest.raises(type(error), match=str(error).split()[0]):
        normal.main(["a red apple", *render_args(tiny_ckpt, "--compile", "--seed", "1", "--out", "c.png")])
    assert "running eager" not in capsys.readouterr().err


def _pixels(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.convert("RGB").tobytes()


def test_the_patch_embedding_is_the_convolution_and_keeps_the_state_dict(tiny_ckpt):
    raw = torch.load(tiny_ckpt, weights_only=True)
    model = models.load_clip(tiny_ckpt, "cpu")
    patch = model.model.visual.conv1
    assert isinstance(patch, models.PatchEmbedding)  # the tiny ViT's 16-px patches
    images = torch.rand(3, 3, model.size, model.size, requires_grad=True)
    conv = F.conv2d(images, raw["visual.conv1.weight"], stride=16)
    ours = patch(images)
    assert ours.shape == conv.shape and torch.allclose(ours, conv, atol=1e-5)
    direction = torch.randn_like(conv)
    grad_conv, = torch.autograd.grad((conv * direction).sum(), images)
    grad_ours, = torch.autograd.grad((ours * direction).sum(), images)
    assert torch.allclose(grad_ours, grad_conv, atol=1e-5)
    assert set(model.model.state_dict()) == set(raw)  # the same keys: fingerprints and files unchanged


def test_lower_precision_on_a_cpu_runs_attention_on_the_math_kernel(tiny_ckpt, monkeypatch):
    model = models.load_clip(tiny_ckpt, "cpu")
    model.set_precision("bf16")
    used = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: used.append(
        torch.backends.cuda.flash_sdp_enabled()) or real(*a, **k))
    prompts.embed_images(model, torch.rand(1, 3, model.size, model.size))
    assert used and not any(used)  # the fused kernels are off while the tower runs


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lower_precision_runs_the_tower_in_it_and_stays_close(tiny_ckpt, precision):
    model = models.load_clip(tiny_ckpt, "cpu")
    images = torch.rand(2, 3, model.size, model.size)
    exact = prompts.embed_images(model, images)
    model.set_precision(precision)
    seen = []
    hook = model.tower.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    low = prompts.embed_images(model, images)
    hook.remove()
    assert seen == [models.DTYPES[precision]] and low.dtype == torch.float32
    assert F.cosine_similarity(exact, low).min() > 0.99


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["tiny", "toy"])  # a ViT and a ModifiedResNet
def test_weights_stored_at_the_lower_precision_give_exactly_what_autocast_gives(tiny_ckpt, name, precision):
    model = models.load_clip(tiny_ckpt if name == "tiny" else name, "cpu")
    weights_id, texts = model.weights_id, prompts.embed_texts(model, ["a red circle"])
    model.set_precision(precision)
    dtype = models.DTYPES[precision]
    assert model.tower is not model.model.visual
    for module in model.tower.modules():
        for param in module.parameters(recurse=False):
            assert param.dtype == (torch.float32 if isinstance(module, models.NORMS) else dtype)
            assert not param.requires_grad
    assert all(p.dtype == torch.float32 for p in model.model.parameters())  # the model itself is untouched
    images = torch.rand(3, 3, model.size, model.size, requires_grad=True)
    ours = prompts.embed_images(model, images)
    model.tower = model.model.visual  # the fp32 weights, cast by autocast on every call
    theirs = prompts.embed_images(model, images)
    assert torch.equal(ours, theirs)
    assert torch.equal(*(torch.autograd.grad(e.square().sum(), images)[0] for e in (ours, theirs)))
    model.set_precision(precision)
    low = model.tower
    model.set_precision("fp32")
    assert model.tower is model.model.visual
    model.set_precision(precision)
    assert model.tower is low  # the copy is kept, not made again
    assert models.Clip.weights_id.func(model) == weights_id  # computed afresh: fingerprints are unchanged
    assert torch.equal(prompts.embed_texts(model, ["a red circle"]), texts)


@pytest.mark.parametrize("flags, noted", [({"avx2"}, True), ({"avx2", "avx512_bf16"}, False), (None, False)])
def test_bf16_on_a_cpu_without_bf16_instructions_gets_a_note(tiny_ckpt, monkeypatch, capsys, flags, noted):
    monkeypatch.setattr(models, "cpu_flags", lambda: flags)
    model = models.load_clip(tiny_ckpt, "cpu")
    model.set_precision("fp32")
    model.set_precision("bf16")
    model.set_precision("fp32")
    model.set_precision("bf16")
    lines = [line for line in capsys.readouterr().err.splitlines() if "bf16 instructions" in line]
    assert len(lines) == noted  # once, and only where the flags say it is missing
    assert not noted or lines[0].startswith("note:") and "--precision fp32" in lines[0]
    assert model.precision == "bf16"  # a note, not a refusal


def test_cpu_flags_reads_the_flags_line(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 avx512_bf16\n\n")
    real = models.Path
    monkeypatch.setattr(models, "Path", lambda p: real(info) if p == "/proc/cpuinfo" else real(p))
    assert models.cpu_flags() == {"fpu", "sse", "avx2", "avx512_bf16"}
    info.write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # an ARM CPU's listing: unknown
    assert models.cpu_flags() is None


def test_a_precision_the_device_lacks_is_one_line(tiny_ckpt, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise RuntimeError("User specified an unsupported autocast device_type 'cpu'\nmore")

    monkeypatch.setattr(torch, "autocast", refuse)
    with pytest.raises(SystemExit) as info:
        normal.main(["a red apple", *render_args(tiny_ckpt, "--precision", "bf16")])
    message = info.value.code
    assert len(message.splitlines()) == 1 and "--precision bf16 is not supported on cpu" in message
    assert "use --precision fp32" in message


def test_bake_with_a_batch_and_checkpoints_records_them(tiny_ckpt, capsys):
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--batch", "2", "--checkpoint", "--out", "b.png")])
    baked = common.load_baked("baked/a_red_apple.pt")
    assert baked["config"]["batch"] == 2 and baked["config"]["checkpoint"] is True
    assert len(baked["history"]) == 2 and baked["complete"]


def test_every_script_takes_random_vit_b_32(tmp_path, capsys):
    model = ["--clip-model", "random:ViT-B/32", "--device", "cpu", "--size", "8", "--steps", "1",
             "--cutn", "1", "--save-size", "8"]
    bake.main(["a red apple", *model, "--stages", "1", "--meta-steps", "1", "--wandb", "disabled",
               "--out", "b.png"])
    microwave.main(["baked/a_red_apple.pt", *model, "--out", "m.png"])
    auto_microwave.main(["a green apple", *model, "--k", "1", "--out", "a.png"])
    normal.main(["a red apple", *model, "--out", "n.png"])
    assert common.load_baked("baked/a_red_apple.pt")["stages"].shape == (1, 512)
    assert all((tmp_path / name).is_file() for name in ["b.png", "m.png", "a.png", "n.png"])


def test_bench_prints_its_table_and_writes_json(tiny_ckpt, capsys):
    bench.main(["--clip-model", tiny_ckpt, "--device", "cpu", "--repeat", "1", "--warmup", "1",
                "--stages", "2", "--steps", "2", "--batch", "2", "--reference-design", "--json", "b.json"])
    out = capsys.readouterr().out
    result = json.load(open("b.json"))
    whats = [r["what"] for r in result["rows"]]
    for script in ["normal.py", "microwave.py", "auto_microwave.py", "bake.py"]:
        row = next(r for r in result["rows"] if f"inner step, {script}" in r["what"])
        assert row["ms"] > 0 and row["reference_ms"] > 0 and "faster" in row["note"]
    assert any(w.startswith("unrolled inner step") for w in whats)
    meta = next(r for r in result["rows"] if r["what"].startswith("meta step, 2 x 2"))
    projected = next(r for r in result["rows"] if r["what"].startswith("bake, 100 meta steps"))
    assert "projected" in projected["what"]  # 2 x 2 steps stand for 10 x 30: 75 times as many
    assert projected["ms"] == pytest.approx(meta["ms"] * 75 * 100)
    assert any("batch 2" in w and w.startswith("inner step, 128 px") for w in whats)
    assert result["device_type"] == "cpu" and "inner step, bake.py" in out


def test_a_step_time_is_the_median_not_the_mean():
    import time

    def run(steps, tick):
        for i in range(steps):
            time.sleep(0.3 if i == 0 else 0.01)  # one slow step (a compile, a hiccup)
            tick()

    seconds = benchmark.median_step(benchmark.Clock(torch.device("cpu")), run, 5)
    assert 0.009 < seconds < 0.1


def test_fp16_scales_the_loss_so_small_gradients_survive(tiny_ckpt):
    model = models.load_clip(tiny_ckpt, "cpu")
    z = torch.randn(1, 3, 16, 16, requires_grad=True)
    target = targets_for(model, 1)[0]
    torch.manual_seed(0)
    exact = render.loss_and_grad(model, z, target, 2)[1]
    model.set_precision("fp16")
    assert model.loss_scale > 1
    torch.manual_seed(0)
    low = render.loss_and_grad(model, z, target, 2)[1]
    assert F.cosine_similarity(exact.flatten(), low.flatten(), dim=0) > 0.99
    assert low.norm() == pytest.approx(exact.norm().item(), rel=0.05)  # divided back: the same size


def test_timing_the_reference_design_leaves_clip_frozen(tiny):
    assert benchmark.time_reference_step(tiny, benchmark.Clock(tiny.device), 16, 4, repeat=1, warmup=1) > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny.model.parameters())


def test_the_reference_design_runs_at_its_own_precision_and_ours_is_kept(tiny):
    tiny.set_precision("bf16")
    seen, convs = [], []
    hook = tiny.model.visual.transformer.resblocks[0].mlp.c_fc.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype) or convs.append(type(tiny.model.visual.conv1)))
    try:
        benchmark.time_reference_step(tiny, benchmark.Clock(tiny.device), 16, 2, repeat=1, warmup=1, precision="fp32")
        assert set(seen) == {torch.float32} and tiny.precision == "bf16"
        seen.clear()
        benchmark.time_reference_step(tiny, benchmark.Clock(tiny.device), 16, 2, repeat=1, warmup=1)
        assert set(seen) == {torch.bfloat16}  # by default, the same as ours
        assert set(convs) == {torch.nn.Conv2d}  # the reference's own patch convolution
        assert isinstance(tiny.model.visual.conv1, models.PatchEmbedding)  # ours is back
    finally:
        hook.remove()
        tiny.set_precision("fp32")


def test_bench_refuses_a_json_path_it_cannot_write_before_any_work(capsys):
    Path("a_file").write_text("")
    for bad, expect in [("a_file/b.json", "a_file is a file"), (".", "is a folder")]:
        with pytest.raises(SystemExit) as info:
            bench.main(["--clip-model", "random:ViT-B/32", "--json", bad])
        assert "--json" in info.value.code and expect in info.value.code
