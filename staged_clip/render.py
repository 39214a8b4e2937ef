"""The renderer: an image tensor optimized by Adam through the stages, a fresh optimizer each.

Two ways through a stage: the fast one (torch's fused AdamW, the compiled loss) for
making images, and one written as plain tensor maths that autograd can differentiate,
so that the bake's loss on the final image reaches the stages (differentiable_rollout).
"""

import torch

from . import cutouts, losses, output, palettes, params, randomness, starts
from .errors import Interrupted, log, signal_of
from .settings import sides


def random_start(shape, device, batch=1):
    """A fresh image tensor drawn from a standard normal: [batch, 3, H, W] (shape: a side, or (H, W))."""
    return torch.randn(batch, 3, *sides(shape), device=device)


def starts_from(generators, shape, device):
    """Start images [n, 3, H, W], each from its own generator (see cutouts.draws_from)."""
    return torch.cat([torch.randn(1, 3, *sides(shape), device=device, generator=g) for g in generators])


def use_compile(model):
    """Compile the plain renderer's loss with torch.compile (eager again if that fails)."""
    import logging  # on a machine without CUDA, torch's C++ builder warns that it found none
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    model.compiled_loss = torch.compile(losses.image_loss_with, dynamic=False)


def compiler_errors():
    """What torch.compile raises when it cannot compile (its dynamo and inductor errors, which wrap a
    backend's): the errors that make the renderer fall back to eager. Anything else, a wrong
    shape or a device error, is the program's and is raised."""
    import torch._dynamo  # noqa: F401 - loaded by torch.compile anyway; its exc module names its errors
    return (torch._dynamo.exc.TorchDynamoException,)


def loss_and_grad(model, z, target, cutn, draw=None, decode=None, palette=None):
    """The loss of a leaf z and its gradient, through the compiled loss when there is one.

    draw: what draws the cutouts' random choices (cutouts.draw_cutouts's arguments;
    default: draw_cutouts from the global generator). decode: what makes the image from z
    (a parametrization's; None: z is the image). palette: the palette's part in this step's
    loss (palettes.Schedule.at), or None.
    """
    image = z if decode is None else decode(z)
    draws = (draw or cutouts.draw_cutouts)(image.shape[0], cutn, image.shape[-2:], model.size, image.device)
    scale = model.loss_scale
    if model.compiled_loss is not None:
        try:
            loss = model.compiled_loss(model, image, target, cutn, draws, palette)
            return loss, torch.autograd.grad(loss * scale, z)[0] / scale
        except compiler_errors() as e:  # the compiler's own failure (no C++ compiler, an unsupported op)
            log(f"--compile failed ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}); "
                f"running eager")
            model.compiled_loss = None
    loss = losses.image_loss_with(model, image, target, cutn, draws, palette)
    return loss, torch.autograd.grad(loss * scale, z)[0] / scale


class Aim:
    """What a stage optimizes z toward: the model's loss toward a target, with cutn cutouts a step
    whose random choices come from draw (see loss_and_grad), of the image decode makes of z
    (a parametrization's; None: z is the image), in a palette where palette (a
    palettes.Schedule) is given: this stage's number among the schedule's."""

    def __init__(self, model, target, cutn, draw=None, decode=None, palette=None, stage=0):
        self.model, self.target, self.cutn, self.draw, self.decode = model, target, cutn, draw, decode
        self.palette, self.stage = palette, stage

    def palette_at(self, step):
        """The palette's part in the loss at this step of the stage (from 1), or None."""
        return None if self.palette is None else self.palette.at(self.stage, step)

    def loss_and_grad(self, z, step=1):
        """The loss of a leaf z and its gradient, by the fast path (the compiled loss where there is one)."""
        return loss_and_grad(self.model, z, self.target, self.cutn, self.draw, self.decode, self.palette_at(step))

    def grad(self, z, create_graph, step=1):
        """The loss of z and its gradient by plain autograd; with create_graph, differentiable again."""
        image = z if self.decode is None else self.decode(z)
        loss = losses.image_loss(self.model, image, self.target, self.cutn, palette=self.palette_at(step))
        (grad,) = torch.autograd.grad(loss * self.model.loss_scale, z, create_graph=create_graph)
        return loss, grad / self.model.loss_scale

    def image(self, z):
        """The image of z, detached: z itself, or what decode makes of it."""
        if self.decode is None:
            return z.detach()
        with torch.no_grad():
            return self.decode(z.detach())


def adamw_step(z, grad, state, lr, eps=1e-8, betas=(0.9, 0.999), weight_decay=1e-2):
    """One AdamW step written as plain tensor maths, so autograd can go through it.

    The same update as torch.optim.AdamW with its defaults: decoupled weight decay, then
    the bias-corrected Adam step. state: Adam's moments and this step's number, (m, v, t).
    lr may be a tensor that broadcasts against z (each image its own rate).
    Returns (z, (m, v, t)).
    """
    m, v, t = state
    b1, b2 = betas
    z = z * (1 - lr * weight_decay)
    m = m * b1 + grad * (1 - b1)
    v = v * b2 + grad * grad * (1 - b2)
    # clamp: sqrt has an infinite derivative at 0, which would poison the meta-gradient
    denom = (v / (1 - b2**t)).clamp_min(1e-30).sqrt() + eps
    return z - (lr / (1 - b1**t)) * m / denom, (m, v, t)


def fast_adamw(params, lr, eps=1e-8):
    """torch's AdamW with its defaults (but eps), fused on CUDA, foreach elsewhere: one launch a step."""
    if params[0].device.type == "cuda":
        return torch.optim.AdamW(params, lr=lr, eps=eps, fused=True)
    return torch.optim.AdamW(params, lr=lr, eps=eps, foreach=True)


def per_image(lr):
    """A learning rate as adamw_step broadcasts it: a number, or [B] made [B, 1, 1, 1]."""
    return lr.view(-1, 1, 1, 1) if torch.is_tensor(lr) else lr


def stage_plain(aim, z, settings, lr, report=None, moments=None):
    """One stage of the renderer, nothing kept for a meta-gradient; returns (z, Adam's moments).

    lr: one number, or a tensor [B] (each image its own). With one number and no moments
    to carry, a fresh torch AdamW (fused or foreach), the original's renderer; otherwise
    Adam as tensor maths, from moments (m, v, steps so far) where given, and its moments
    at the end are returned (None from the fast path). report(step, loss, image) after
    every step, with detached tensors.
    """
    z = z.detach().clone().requires_grad_()
    if moments is None and not settings.carry_moments and not torch.is_tensor(lr):
        optimizer = fast_adamw([z], lr, settings.inner_eps)
        for t in range(1, settings.steps + 1):
            with torch.enable_grad():  # the inner loop needs gradients even under a caller's no_grad
                loss, z.grad = aim.loss_and_grad(z, t)
            optimizer.step()
            if report is not None:
                report(t, loss.detach(), aim.image(z))
        return z.detach(), None
    m, v, done = moments or (torch.zeros_like(z), torch.zeros_like(z), 0)
    for t in range(1, settings.steps + 1):
        with torch.enable_grad():
            loss, grad = aim.loss_and_grad(z, t)
        with torch.no_grad():
            z, (m, v, _) = adamw_step(z, grad, (m, v, done + t), per_image(lr), settings.inner_eps)
        z.requires_grad_()
        if report is not None:
            report(t, loss.detach(), aim.image(z))
    return z.detach(), (m, v, done + settings.steps)


def stage_unrolled(aim, z, settings, lr, create_graph, report=None, moments=None):
    """One stage with AdamW as plain tensor maths; with create_graph it stays differentiable.

    Returns (z, Adam's moments (m, v, steps so far) at the end). report: as stage_plain's.
    """
    m, v, done = moments or (torch.zeros_like(z), torch.zeros_like(z), 0)
    for t in range(1, settings.steps + 1):
        with torch.enable_grad():
            if not create_graph:
                z = z.detach().requires_grad_()
            loss, grad = aim.grad(z, create_graph, t)
        with torch.set_grad_enabled(create_graph):
            z, (m, v, _) = adamw_step(z, grad, (m, v, done + t), per_image(lr), settings.inner_eps)
        if report is not None:
            report(t, loss.detach(), aim.image(z))
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


def stage_reporter(callback, stage):
    """callback(stage, step, loss, image) as a stage reports it: report(step, loss, image)."""
    return None if callback is None else (lambda step, loss, image: callback(stage, step, loss, image))


def rollout(model, z, targets, settings, callback=None, lr_scale=None, draw=None):
    """Optimize images z [B, 3, H, W] through the stages, one target [D] (or [B, D]) each, by the
    fast path: torch's fused (or foreach) AdamW and the compiled loss where the model has one.

    settings: steps per stage (or each stage's, settings.stage_steps), learning rate, cutouts,
    Adam's eps, whether its moments carry over (else a fresh AdamW every stage, as the original
    makes), and the parametrization (params.py: Adam runs on its tensor, encoded from z; its
    image comes back). lr_scale multiplies each stage's learning rate: [S] or [S, B] (each image
    its own); None: 1. draw: what draws the cutouts' random choices (see loss_and_grad).
    callback(stage, step, loss, image) after every step, with detached tensors.
    """
    param = params.of(settings, z.shape[-2:], z.device)
    if param is not None:
        z = param.encode(z)
    palette = palettes.Schedule.of(settings, len(targets), z.device)
    moments = None
    for i, target in enumerate(targets.detach()):
        aim = Aim(model, target, settings.cutn, draw, param and param.decode, palette, i)
        z, moments = stage_plain(aim, z, settings.of_stage(i), stage_lr(settings, lr_scale, i),
                                 stage_reporter(callback, i), moments if settings.carry_moments else None)
    return z if param is None else param.decode(z)


def differentiable_rollout(model, z, targets, settings, callback=None, renormalize=False, lr_scale=None):
    """rollout, differentiable: a loss on the returned images reaches the targets (and what they
    were made from) through every Adam step, written as tensor maths.

    renormalize: the gradient flowing back into each stage from the next is divided by its
    norm, image by image. The exact meta-gradient grows about 100-fold per stage going
    backwards (each fresh Adam's first steps are nearly sign steps, whose derivative is huge
    where a pixel's gradient is near zero) and overflows float32 within ten stages;
    renormalized, each stage's gradient keeps its exact direction, only its length changes.
    settings.checkpoint: keep only each stage's input and rerun the stage in the backward
    (the same random draws), so that memory holds one stage's graph.
    """
    param = params.of(settings, z.shape[-2:], z.device)
    z = z if param is None else param.encode(z)
    decode = param and param.decode
    palette = palettes.Schedule.of(settings, len(targets), z.device)
    if not z.requires_grad:
        z = z.detach().requires_grad_()
    moments = None
    for i, target in enumerate(targets):
        lr, report = stage_lr(settings, lr_scale, i), stage_reporter(callback, i)
        if renormalize and i > 0:
            z = Renormalize.apply(z)
        if settings.checkpoint:
            def run(z_in, target_in, graph, report, lr=lr, i=i):
                return stage_unrolled(Aim(model, target_in, settings.cutn, None, decode, palette, i), z_in, settings,
                                      lr, graph, report)[0]
            z = CheckpointedStage.apply(z, target, run, report)
        else:
            z, moments = stage_unrolled(Aim(model, target, settings.cutn, None, decode, palette, i), z, settings, lr, True,
                                        report, moments if settings.carry_moments else None)
    return z if param is None else param.decode(z)


def render(model, targets, settings, out, desc, lr_scale=None, start=None):
    """Run the staged renderer with a progress bar (out: an output.Output; lr_scale: a bake's
    learned per-stage multipliers of the learning rate, or None; start: a starts.Start, the
    images' seeds and start image, by default one random start from the global generator).

    Returns (the final images [len(start.seeds), 3, H, W], the loss of the last step, summed
    over them, and None). Ctrl-C (or SIGTERM) stops it early: it returns the images so far, so
    that the script still saves something, and as the third item an errors.Interrupted saying
    at which step, for the script to record and raise once saved (runs.Run.save does both).
    """
    from tqdm import tqdm
    z, draw = (start or starts.Start((settings.seed,))).images(settings.shape, model.device)
    latest = [z, None, 0]  # the images, the loss and the steps done so far
    total = len(targets) * settings.steps
    bar = tqdm(total=total, desc=desc, dynamic_ncols=True)
    progress = output.Progress.of(out, settings, len(targets), latest[0])

    def report(stage, step, loss, z):
        latest[:] = z, loss, stage * settings.steps + step
        bar.update(1)
        if step % 10 == 0 or step == settings.steps:  # .item() waits for the device: not every step
            bar.set_postfix(stage=f"{stage + 1}/{len(targets)}", loss=f"{loss.item():.4f}")
        if progress is not None:
            progress.step(stage, step, z)

    def last_loss():
        return None if latest[1] is None else latest[1].item()

    try:
        z = rollout(model, latest[0], targets, settings, callback=report, lr_scale=lr_scale, draw=draw)
        return z, last_loss(), None
    except KeyboardInterrupt as e:
        log("interrupted: saving the image so far")
        return latest[0].detach(), last_loss(), Interrupted(f"step {latest[2]} of {total}", signal_of(e))
    finally:
        bar.close()
        if progress is not None:
            progress.save()
