"""The renderer: an image tensor optimized by Adam through the stages, a fresh optimizer each.

Two ways through a stage: the fast one (torch's fused AdamW, the compiled loss) for
making images, and one written as plain tensor maths that autograd can differentiate,
so that the bake's loss on the final image reaches the stages (create_graph).
"""

import torch

from . import cutouts, losses, output, params, randomness
from .errors import log


def random_start(size, device, batch=1):
    """A fresh image tensor drawn from a standard normal: [batch, 3, size, size]."""
    return torch.randn(batch, 3, size, size, device=device)


def starts_from(generators, size, device):
    """Start images [n, 3, size, size], each from its own generator (see cutouts.draws_from)."""
    return torch.cat([torch.randn(1, 3, size, size, device=device, generator=g) for g in generators])


def use_compile(model):
    """Compile the plain renderer's loss with torch.compile (eager again if that fails)."""
    import logging  # on a machine without CUDA, torch's C++ builder warns that it found none
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    model.compiled_loss = torch.compile(losses.image_loss_with, dynamic=False)


def loss_and_grad(model, z, target, cutn, draw=None, decode=None):
    """The loss of a leaf z and its gradient, through the compiled loss when there is one.

    draw: what draws the cutouts' random choices (cutouts.draw_cutouts's arguments;
    default: draw_cutouts from the global generator). decode: what makes the image from z
    (a parametrization's; None: z is the image).
    """
    image = z if decode is None else decode(z)
    draws = (draw or cutouts.draw_cutouts)(image.shape[0], cutn, image.shape[-1], model.size, image.device)
    scale = model.loss_scale
    if model.compiled_loss is not None:
        try:
            loss = model.compiled_loss(model, image, target, cutn, draws)
            return loss, torch.autograd.grad(loss * scale, z)[0] / scale
        except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, say so once
            if isinstance(e, (KeyboardInterrupt, torch.OutOfMemoryError)):
                raise
            log(f"--compile failed ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}); "
                f"running eager")
            model.compiled_loss = None
    loss = losses.image_loss_with(model, image, target, cutn, draws)
    return loss, torch.autograd.grad(loss * scale, z)[0] / scale


def adamw_step(z, grad, m, v, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
    """One AdamW step written as plain tensor maths, so autograd can go through it.

    The same update as torch.optim.AdamW with its defaults: decoupled weight decay, then
    the bias-corrected Adam step. lr may be a tensor that broadcasts against z (each
    image its own rate). Returns (z, m, v).
    """
    b1, b2 = betas
    z = z * (1 - lr * weight_decay)
    m = m * b1 + grad * (1 - b1)
    v = v * b2 + grad * grad * (1 - b2)
    # clamp: sqrt has an infinite derivative at 0, which would poison the meta-gradient
    denom = (v / (1 - b2**t)).clamp_min(1e-30).sqrt() + eps
    return z - (lr / (1 - b1**t)) * m / denom, m, v


def fast_adamw(params, lr, eps=1e-8):
    """torch's AdamW with its defaults (but eps), fused on CUDA, foreach elsewhere: one launch a step."""
    if params[0].device.type == "cuda":
        return torch.optim.AdamW(params, lr=lr, eps=eps, fused=True)
    return torch.optim.AdamW(params, lr=lr, eps=eps, foreach=True)


def per_image(lr):
    """A learning rate as adamw_step broadcasts it: a number, or [B] made [B, 1, 1, 1]."""
    return lr.view(-1, 1, 1, 1) if torch.is_tensor(lr) else lr


def shown(z, decode):
    """The image of z, detached: z itself, or what decode makes of it."""
    if decode is None:
        return z.detach()
    with torch.no_grad():
        return decode(z.detach())


def stage_plain(model, z, target, settings, lr, stage=0, callback=None, moments=None, draw=None, decode=None):
    """One stage of the renderer, nothing kept for a meta-gradient; returns (z, Adam's moments).

    lr: one number, or a tensor [B] (each image its own). With one number and no moments
    to carry, a fresh torch AdamW (fused or foreach), the reference's renderer; otherwise
    Adam as tensor maths, from moments (m, v, steps so far) where given, and its moments
    at the end are returned (None from the fast path). decode: the parametrization's, where
    z holds its parameters rather than pixels (callback still sees images).
    """
    z = z.detach().clone().requires_grad_()
    if moments is None and not settings.carry_moments and not torch.is_tensor(lr):
        optimizer = fast_adamw([z], lr, settings.inner_eps)
        for t in range(1, settings.steps + 1):
            with torch.enable_grad():  # the inner loop needs gradients even under a caller's no_grad
                loss, z.grad = loss_and_grad(model, z, target, settings.cutn, draw, decode)
            optimizer.step()
            if callback is not None:
                callback(stage, t, loss.detach(), shown(z, decode))
        return z.detach(), None
    m, v, done = moments or (torch.zeros_like(z), torch.zeros_like(z), 0)
    for t in range(1, settings.steps + 1):
        with torch.enable_grad():
            loss, grad = loss_and_grad(model, z, target, settings.cutn, draw, decode)
        with torch.no_grad():
            z, m, v = adamw_step(z, grad, m, v, done + t, per_image(lr), eps=settings.inner_eps)
        z.requires_grad_()
        if callback is not None:
            callback(stage, t, loss.detach(), shown(z, decode))
    return z.detach(), (m, v, done + settings.steps)


def stage_unrolled(model, z, target, settings, lr, create_graph, stage=0, callback=None, moments=None,
                   decode=None):
    """One stage with AdamW as plain tensor maths; with create_graph it stays differentiable.

    Returns (z, Adam's moments (m, v, steps so far) at the end). decode: as stage_plain's.
    """
    m, v, done = moments or (torch.zeros_like(z), torch.zeros_like(z), 0)
    for t in range(1, settings.steps + 1):
        with torch.enable_grad():
            if not create_graph:
                z = z.detach().requires_grad_()
            loss = losses.image_loss(model, z if decode is None else decode(z), target, settings.cutn)
            (grad,) = torch.autograd.grad(loss * model.loss_scale, z, create_graph=create_graph)
            grad = grad / model.loss_scale
        with torch.set_grad_enabled(create_graph):
            z, m, v = adamw_step(z, grad, m, v, done + t, per_image(lr), eps=settings.inner_eps)
        if callback is not None:
            callback(stage, t, loss.detach(), shown(z, decode))
    if not create_graph:
        z, m, v = z.detach(), m.detach(), v.detach()
    return z, (m, v, done + settings.steps)


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


def stage_lr(settings, lr_scale, stage):
    """The learning rate of a stage: settings.lr times lr_scale's entry for it ([S] or [S, B]; None: 1).

    A per-stage multiplier stays one number, so the fast path (torch's AdamW) runs.
    """
    if lr_scale is None:
        return settings.lr
    scale = lr_scale[stage]
    return settings.lr * (float(scale) if scale.dim() == 0 else scale)


def rollout(model, z, targets, settings, create_graph=False, callback=None, renormalize=False, lr_scale=None,
            draw=None, decode=None):
    """Optimize images z [B, 3, H, W] through the stages, one target [D] (or [B, D]) each.

    settings gives the steps per stage, the learning rate, the cutouts, Adam's eps and
    whether its moments carry over. Unless they do, a fresh AdamW starts every stage (the
    reference makes a new optimizer per stage); z carries over. lr_scale multiplies each
    stage's learning rate: [S] (learned per stage) or [S, B] (each image its own); None: 1.
    draw: what draws the cutouts' random choices (see loss_and_grad; the plain path only).
    With create_graph the whole optimization stays differentiable, so a loss on the
    returned z reaches the targets (and what they were made from). callback(stage, step,
    loss, z) is called after every step with detached tensors. Without create_graph the
    fast path runs where it can: torch's fused (or foreach) AdamW and the compiled loss
    when the model has one.

    renormalize (with create_graph): the gradient flowing back into each stage from the
    next is divided by its norm, image by image. The exact meta-gradient grows about
    100-fold per stage going backwards (each fresh Adam's first steps are nearly sign
    steps, whose derivative is huge where a pixel's gradient is near zero) and overflows
    float32 within ten stages; renormalized, every stage's gradient keeps its exact
    direction, only its length changes.

    settings.checkpoint (with create_graph): keep only each stage's input and rerun the
    stage during the backward (the same random draws), so memory holds one stage's graph.

    settings.param (params.py): what Adam optimizes. For rgb, the pixels; otherwise z is
    encoded into the parametrization's tensor (whose image is z), the stages optimize that,
    and its image is returned (decode: set by that inner call; callers leave it None).
    """
    param = params.of(settings, z.shape[-1], z.device) if decode is None else None
    if param is not None:  # decode: the parametrization's, once z is its tensor (this call's own, below)
        return param.decode(rollout(model, param.encode(z), targets, settings, create_graph, callback, renormalize,
                                    lr_scale, draw, param.decode))
    moments = None
    if not create_graph:
        targets = targets.detach()
        for i, target in enumerate(targets):
            z, moments = stage_plain(model, z, target, settings, stage_lr(settings, lr_scale, i), i, callback,
                                     moments if settings.carry_moments else None, draw, decode)
        return z
    if not z.requires_grad:
        z = z.detach().requires_grad_()
    for i, target in enumerate(targets):
        lr = stage_lr(settings, lr_scale, i)
        if renormalize and i > 0:
            z = Renormalize.apply(z)
        if settings.checkpoint:
            def run(z_in, target_in, graph, report, i=i, lr=lr):
                return stage_unrolled(model, z_in, target_in, settings, lr, graph, i, report, decode=decode)[0]
            z = CheckpointedStage.apply(z, target, run, callback)
        else:
            z, moments = stage_unrolled(model, z, target, settings, lr, True, i, callback,
                                        moments if settings.carry_moments else None, decode)
    return z


def render(model, targets, settings, out, desc, lr_scale=None):
    """Run the staged renderer from a fresh start with a progress bar (out: an output.Output;
    lr_scale: a bake's learned per-stage multipliers of the learning rate, or None).

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
        return rollout(model, latest[0], targets, settings, callback=report, lr_scale=lr_scale)
    except KeyboardInterrupt:
        log("interrupted: saving the image so far")
        return latest[0].detach()
    finally:
        bar.close()
        if progress is not None:
            progress.save()
