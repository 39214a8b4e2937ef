"""The renderer: an image tensor optimized by Adam through the stages, a fresh optimizer each.

Two ways through a stage: the fast one (torch's fused AdamW, the compiled loss) for
making images, and one written as plain tensor maths that autograd can differentiate,
so that the bake's loss on the final image reaches the stages (create_graph).
"""

import torch

from . import cutouts, losses, output, randomness
from .errors import log


def random_start(size, device, batch=1):
    """A fresh image tensor drawn from a standard normal: [batch, 3, size, size]."""
    return torch.randn(batch, 3, size, size, device=device)


def use_compile(model):
    """Compile the plain renderer's loss with torch.compile (eager again if that fails)."""
    import logging  # on a machine without CUDA, torch's C++ builder warns that it found none
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    model.compiled_loss = torch.compile(losses.image_loss_with, dynamic=False)


def loss_and_grad(model, z, target, cutn):
    """The loss of a leaf z and its gradient, through the compiled loss when there is one."""
    draws = cutouts.draw_cutouts(z.shape[0], cutn, z.shape[-1], model.size, z.device)
    scale = model.loss_scale
    if model.compiled_loss is not None:
        try:
            loss = model.compiled_loss(model, z, target, cutn, draws)
            return loss, torch.autograd.grad(loss * scale, z)[0] / scale
        except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, say so once
            if isinstance(e, (KeyboardInterrupt, torch.OutOfMemoryError)):
                raise
            log(f"--compile failed ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}); "
                f"running eager")
            model.compiled_loss = None
    loss = losses.image_loss_with(model, z, target, cutn, draws)
    return loss, torch.autograd.grad(loss * scale, z)[0] / scale


def adamw_step(z, grad, m, v, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
    """One AdamW step written as plain tensor maths, so autograd can go through it.

    The same update as torch.optim.AdamW with its defaults: decoupled weight decay, then
    the bias-corrected Adam step. Returns (z, m, v).
    """
    b1, b2 = betas
    z = z * (1 - lr * weight_decay)
    m = m * b1 + grad * (1 - b1)
    v = v * b2 + grad * grad * (1 - b2)
    # clamp: sqrt has an infinite derivative at 0, which would poison the meta-gradient
    denom = (v / (1 - b2**t)).clamp_min(1e-30).sqrt() + eps
    return z - (lr / (1 - b1**t)) * m / denom, m, v


def fast_adamw(params, lr):
    """torch's AdamW with its defaults, fused on CUDA, foreach elsewhere: one launch a step."""
    if params[0].device.type == "cuda":
        return torch.optim.AdamW(params, lr=lr, fused=True)
    return torch.optim.AdamW(params, lr=lr, foreach=True)


def stage_plain(model, z, target, settings, stage, callback):
    """One stage of the renderer, nothing kept for a meta-gradient: a fresh fast AdamW on z."""
    z = z.detach().clone().requires_grad_()
    optimizer = fast_adamw([z], settings.lr)
    for t in range(1, settings.steps + 1):
        with torch.enable_grad():  # the inner loop needs gradients even under a caller's no_grad
            loss, z.grad = loss_and_grad(model, z, target, settings.cutn)
        optimizer.step()
        if callback is not None:
            callback(stage, t, loss.detach(), z.detach())
    return z.detach()


def stage_unrolled(model, z, target, settings, create_graph, stage=0, callback=None):
    """One stage with AdamW as plain tensor maths; with create_graph it stays differentiable."""
    m = torch.zeros_like(z)
    v = torch.zeros_like(z)
    for t in range(1, settings.steps + 1):
        with torch.enable_grad():
            if not create_graph:
                z = z.detach().requires_grad_()
            loss = losses.image_loss(model, z, target, settings.cutn)
            (grad,) = torch.autograd.grad(loss * model.loss_scale, z, create_graph=create_graph)
            grad = grad / model.loss_scale
        with torch.set_grad_enabled(create_graph):
            z, m, v = adamw_step(z, grad, m, v, t, settings.lr)
        if callback is not None:
            callback(stage, t, loss.detach(), z.detach())
    return z if create_graph else z.detach()


class Renormalize(torch.autograd.Function):
    """The identity, whose backward divides each image's incoming gradient by its norm."""

    @staticmethod
    def forward(ctx, z):
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        norm = grad.flatten(1).norm(dim=1).view(-1, *[1] * (grad.dim() - 1))  # per image
        return grad / torch.where(norm > 0, norm, torch.ones_like(norm))


class CheckpointedStage(torch.autograd.Function):
    """A differentiable stage that keeps only its input: the backward runs it again.

    The forward runs the stage without a graph; the backward restores the random state
    the forward started from, reruns the stage with its graph and back-propagates through
    it. Memory: one stage's graph at a time instead of every stage's.
    """

    @staticmethod
    def forward(ctx, z, target, run, callback):
        ctx.run = run
        ctx.rng = randomness.rng_state(z.device)
        ctx.save_for_backward(z, target)
        return run(z, target, False, callback)

    @staticmethod
    def backward(ctx, grad):
        z, target = ctx.saved_tensors
        with torch.random.fork_rng(devices=randomness.cuda_devices(z.device)), torch.enable_grad():
            randomness.set_rng_state(z.device, ctx.rng)
            z_in, target_in = z.detach().requires_grad_(), target.detach().requires_grad_()
            out = ctx.run(z_in, target_in, True, None)
            grad_z, grad_target = torch.autograd.grad(out, (z_in, target_in), grad)
        return grad_z, grad_target, None, None


def rollout(model, z, targets, settings, create_graph=False, callback=None, renormalize=False):
    """Optimize images z [B, 3, H, W] through the stages, one target [D] (or [B, D]) each.

    settings gives the steps per stage, the learning rate and the cutouts. A fresh AdamW
    starts every stage (the reference makes a new optimizer per stage); z carries over.
    With create_graph the whole optimization stays differentiable, so a loss on the
    returned z reaches the targets (and what they were made from). callback(stage, step,
    loss, z) is called after every step with detached tensors. Without create_graph the
    fast path runs: torch's fused (or foreach) AdamW and the compiled loss when the model
    has one.

    renormalize (with create_graph): the gradient flowing back into each stage from the
    next is divided by its norm, image by image. The exact meta-gradient grows about
    100-fold per stage going backwards (each fresh Adam's first steps are nearly sign
    steps, whose derivative is huge where a pixel's gradient is near zero) and overflows
    float32 within ten stages; renormalized, every stage's gradient keeps its exact
    direction, only its length changes.

    settings.checkpoint (with create_graph): keep only each stage's input and rerun the
    stage during the backward (the same random draws), so memory holds one stage's graph.
    """
    if not create_graph:
        targets = targets.detach()
        for i, target in enumerate(targets):
            z = stage_plain(model, z, target, settings, i, callback)
        return z
    if not z.requires_grad:
        z = z.detach().requires_grad_()
    for i, target in enumerate(targets):
        if renormalize and i > 0:
            z = Renormalize.apply(z)
        if settings.checkpoint:
            def run(z_in, target_in, graph, report, i=i):
                return stage_unrolled(model, z_in, target_in, settings, graph, i, report)
            z = CheckpointedStage.apply(z, target, run, callback)
        else:
            z = stage_unrolled(model, z, target, settings, True, i, callback)
    return z


def render(model, targets, settings, out, desc):
    """Run the staged renderer from a fresh start with a progress bar (out: an output.Output).

    Ctrl-C stops it and returns the image so far, so the script still saves something.
    """
    from tqdm import tqdm
    latest = [random_start(settings.size, model.device)]
    bar = tqdm(total=len(targets) * settings.steps, desc=desc, dynamic_ncols=True)
    progress = output.Progress.of(out, settings, len(targets), latest[0])

    def report(stage, step, loss, z):
        latest[0] = z
        bar.update(1)
        if step % 10 == 0 or step == settings.steps:  # .item() waits for the device: not every step
            bar.set_postfix(stage=f"{stage + 1}/{len(targets)}", loss=f"{loss.item():.4f}")
        if progress is not None:
            progress.step(stage, step, z)

    try:
        return rollout(model, latest[0], targets, settings, callback=report)
    except KeyboardInterrupt:
        log("interrupted: saving the image so far")
        return latest[0].detach()
    finally:
        bar.close()
        if progress is not None:
            progress.save()
