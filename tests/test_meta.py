"""The meta-gradient: the unrolled bake moves the stages by the image loss; 'none' cannot."""

import types

import pytest
import torch
import torch.nn.functional as F

import common
from conftest import tiny_clip_model
from staged_clip import learners, losses, models, prompts, render
from staged_clip.settings import Settings

CFG = Settings(size=8, steps=2, lr=0.12, cutn=1, stage_reg=0.0)
RUN = Settings(steps=3, lr=0.12, cutn=1)  # a rollout of 3 steps a stage


def one_meta_step(model, meta_grad, seed=0, stages=None):
    torch.manual_seed(seed)
    stages = torch.randn(3, model.dim) if stages is None else stages
    stages = stages.clone().requires_grad_()
    before = stages.detach().clone()
    opt = torch.optim.AdamW([stages], lr=0.12)
    prompt = common.load_prompt(model, "a red apple")
    shift = common.style_shift(model)
    loss, z = learners.meta_step(model, stages, opt, prompt, shift, CFG, 0.0, meta_grad == "unrolled")
    return before, stages, loss, z


def test_unrolled_moves_every_stage_direction_without_the_regularizer(tiny):
    before, stages, loss, z = one_meta_step(tiny, "unrolled")
    assert stages.grad is not None and (stages.grad.norm(dim=1) > 0).all()
    cosine = F.cosine_similarity(before, stages.detach(), dim=1)
    assert (cosine < 1 - 1e-4).all()
    assert z.shape == (1, 3, 8, 8) and loss > 0


def test_none_gives_the_stages_no_image_gradient(tiny):
    before, stages, loss, _ = one_meta_step(tiny, "none")
    assert stages.grad is None
    assert torch.equal(before, stages.detach())
    assert loss > 0


def test_none_still_moves_stages_by_the_regularizer(tiny):
    torch.manual_seed(1)
    stages = torch.randn(3, tiny.dim).requires_grad_()
    before = stages.detach().clone()
    opt = torch.optim.AdamW([stages], lr=0.12)
    prompt = common.load_prompt(tiny, "a red apple")
    cfg = CFG.replace(stage_reg=1.0, meta_grad="none")
    learners.meta_step(tiny, stages, opt, prompt, common.style_shift(tiny), cfg, 0.0, differentiate=False)
    closer = losses.spherical_distance(stages.detach(), prompt.embed)
    # the fade (1 - i / S) pulls the first stage hardest toward the prompt
    assert (closer < losses.spherical_distance(before, prompt.embed)).all()


def test_unrolled_gradient_matches_finite_differences(monkeypatch):
    """The differentiable inner loop gives the true derivative of the final-image loss."""
    monkeypatch.setattr(prompts, "embed_images", lambda model, images: F.normalize(
        model.model.encode_image((images - model.mean) / model.std), dim=-1))  # keep float64
    model = models.Clip(tiny_clip_model(), "tiny", torch.device("cpu"))
    model.model.double()  # float64 so that central differences are exact enough
    for module in model.model.modules():  # clip's LayerNorm computes in float32 whatever its input
        if isinstance(module, torch.nn.LayerNorm):
            module.forward = types.MethodType(torch.nn.LayerNorm.forward, module)
    model.mean, model.std = model.mean.double(), model.std.double()
    prompt = common.load_prompt(model, "a red apple")
    shift = common.style_shift(model)
    torch.manual_seed(0)
    z0 = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    stages = torch.randn(2, model.dim, dtype=torch.float64)
    direction = torch.randn_like(stages)

    def final_loss(s, create_graph):
        torch.manual_seed(0)  # the same cutout choices every call
        with models.math_attention():
            roll = render.differentiable_rollout if create_graph else render.rollout
            z = roll(model, z0.clone(), prompts.shape_targets(s, shift), RUN)
            return losses.bake_loss(model, z, prompt, 1)

    s = stages.clone().requires_grad_()
    final_loss(s, True).backward()
    analytic = (s.grad * direction).sum().item()
    eps = 1e-6
    numeric = (final_loss(stages + eps * direction, False).item()
               - final_loss(stages - eps * direction, False).item()) / (2 * eps)
    assert abs(analytic) > 1e-6
    assert analytic == pytest.approx(numeric, rel=1e-4)


def test_rollout_with_and_without_graph_agree(tiny):
    torch.manual_seed(0)
    z0 = torch.randn(1, 3, 8, 8)
    targets = torch.nn.functional.normalize(torch.randn(2, tiny.dim), dim=-1)
    results = []
    for create_graph in (False, True):
        torch.manual_seed(5)
        with models.math_attention():
            roll = render.differentiable_rollout if create_graph else render.rollout
            results.append(roll(tiny, z0, targets, RUN.replace(cutn=4)).detach())
    assert torch.allclose(results[0], results[1], atol=1e-5)
    assert not torch.allclose(results[0], z0)


def test_renormalized_meta_gradient_keeps_each_stage_direction(tiny):
    """Renormalizing across stage boundaries rescales each stage's gradient, nothing more."""
    prompt = common.load_prompt(tiny, "a red apple")
    torch.manual_seed(0)
    z0 = torch.randn(1, 3, 8, 8)
    stages = torch.randn(4, tiny.dim)
    grads = []
    for renormalize in (False, True):
        s = stages.clone().requires_grad_()
        torch.manual_seed(0)
        with models.math_attention():
            z = render.differentiable_rollout(tiny, z0.clone(), prompts.shape_targets(s, common.style_shift(tiny)),
                                              RUN, renormalize=renormalize)
            losses.bake_loss(tiny, z, prompt, 1).backward()
        grads.append(s.grad)
    exact, renormalized = grads
    assert torch.allclose(F.cosine_similarity(exact, renormalized, dim=1), torch.ones(4), atol=1e-4)
    assert torch.allclose(exact[-1], renormalized[-1])  # nothing after the last stage to rescale
    assert not torch.allclose(exact[0].norm(), renormalized[0].norm(), rtol=1e-3)


def test_an_overflowed_stage_gradient_skips_only_that_stage(tiny, capsys):
    torch.manual_seed(0)
    stages = torch.randn(3, tiny.dim).requires_grad_()
    stages.register_hook(lambda g: torch.cat([torch.full_like(g[:1], float("inf")), g[1:]]))
    before = stages.detach().clone()
    opt = torch.optim.AdamW([stages], lr=0.12)
    prompt = common.load_prompt(tiny, "a red apple")
    learners.meta_step(tiny, stages, opt, prompt, common.style_shift(tiny), CFG, 0.0, differentiate=True)
    assert stages.detach()[1:].isfinite().all() and not torch.allclose(stages.detach()[1:], before[1:])
    assert torch.allclose(stages.detach()[0], before[0] * (1 - 0.12 * 0.01))  # weight decay only
    assert "stage(s) [1]" in capsys.readouterr().err
