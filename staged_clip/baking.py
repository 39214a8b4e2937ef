"""The bake: meta-optimize a prompt's stage embeddings so the staged renderer's final image nears it."""

import math

import torch

from . import baked, losses, output, prompts, render
from .errors import UserError, log
from .models import math_attention
from .randomness import rng_aside
from .wandb_log import wandb_image


def meta_step(model, stages, optimizer, prompt, shift, settings, progress):
    """One meta step: roll out the stages from fresh starts, score the final images, update.

    settings: size, steps, lr and cutn of the rollout; stage_reg; meta_grad ("unrolled"
    or "none"); batch (random starts rolled out together; the meta-gradient is the mean
    of theirs); checkpoint (rerun each stage in the backward instead of keeping it).
    progress: the share of the bake done, which fades the stage regularizer.
    Returns (meta loss as a float, final z [batch, 3, size, size]).
    """
    batch = settings.batch
    z = render.random_start(settings.size, model.device, batch)
    unrolled = settings.meta_grad == "unrolled"
    with math_attention():
        targets = prompts.shape_targets(stages, shift)
        z = render.rollout(model, z, targets, settings, create_graph=unrolled, renormalize=True)
        with torch.set_grad_enabled(unrolled):
            image_losses = losses.bake_loss(model, z, prompt, settings.cutn)  # [batch]
        regularizer = 0.0
        if settings.stage_reg:
            regularizer = settings.stage_reg * losses.stage_regularizer(stages, prompt.embed, progress)
        loss = image_losses.mean() + regularizer
        optimizer.zero_grad(set_to_none=True)
        # Summed, each start's gradient reaches its stage boundaries exactly as if it were
        # rolled out alone (renormalize works image by image); the mean is taken after.
        total = image_losses.sum() + batch * regularizer
        if total.requires_grad:
            (total * model.loss_scale).backward()
            if batch > 1 or model.loss_scale != 1:
                stages.grad.div_(batch * model.loss_scale)
    value = loss.item()
    if not math.isfinite(value):
        raise UserError("the meta loss became NaN: lower --meta-lr or --lr")
    if stages.grad is not None:
        overflowed = ~stages.grad.isfinite().all(1)
        if overflowed.any():  # a stage whose gradient overflowed sits this step out
            stages.grad[overflowed] = 0
            log(f"meta-gradient overflowed for stage(s) {(overflowed.nonzero()[:, 0] + 1).tolist()}: "
                f"not updated this step (fewer --steps per stage avoids it)")
    optimizer.step()
    return value, z.detach()


class BakeInterrupted(Exception):
    """Ctrl-C during a bake; .path is the file saved (None before any step), .complete its state,
    .rest what else to tell the user (set by whoever bakes a list)."""

    def __init__(self, path, complete=False):
        super().__init__(path)
        self.path, self.complete, self.rest = path, complete, ""

    def message(self):
        """What to tell the user."""
        if self.complete:
            saved = f"the bake is complete and saved to {self.path}; its preview image was not written"
        elif self.path:
            saved = f"the stages learned so far are saved to {self.path} (marked incomplete)"
        else:
            saved = "no meta step had finished, so nothing was saved"
        return f"interrupted: {saved}{self.rest}"


def bake_prompt(model, prompt, shift, settings, path, out, wandb, info, position=0):
    """Bake one prompt: meta-optimize its stages, save them to path and a preview to out.

    settings: a Settings (its seed is recorded); out: an output.Output; wandb: a
    wandb_log.WandbLog; info: the preview PNG's text chunks (output.run_info).
    Ctrl-C saves the stages learned so far, marked incomplete, and raises BakeInterrupted.
    Returns the meta-loss history.
    """
    from tqdm import tqdm
    config = settings.config()
    stages = torch.randn(settings.stages, model.dim, device=model.device).requires_grad_()
    optimizer = torch.optim.AdamW([stages], lr=settings.meta_lr)
    run = wandb.start(prompt.text[:64], {**config, "prompt": prompt.text, "clip_model": model.name})
    control = None
    if run is not None:  # plain optimization toward the prompt, same total steps
        with rng_aside(model.device):  # a seed bakes the same stages with or without logging
            control = render.rollout(model, render.random_start(settings.size, model.device),
                                     (prompt.embed + shift)[None],
                                     settings.replace(steps=settings.steps * settings.stages))
    history = []

    def save(complete):
        baked.save_baked(path, stages=stages, prompt=prompt, clip_model=model.name, config=config,
                         history=history, complete=complete, clip_weights=model.weights_id)

    bar = tqdm(range(settings.meta_steps), desc=prompt.text[:30], position=position, leave=position == 0,
               dynamic_ncols=True)
    try:
        for step in bar:
            loss, z = meta_step(model, stages, optimizer, prompt, shift, settings, step / settings.meta_steps)
            history.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}")
            if run is not None:
                record = {"meta_loss": loss}
                if step % wandb.every == 0 or step == settings.meta_steps - 1:
                    record["baked"] = wandb_image(z, f"meta step {step}")
                    record["control"] = wandb_image(control, "plain optimization")
                run.log(record, step=step)
    except KeyboardInterrupt:
        if history:
            save(complete=False)
        raise BakeInterrupted(path if history else None) from None
    except UserError as e:  # a NaN loss: the stages from before it are still worth keeping
        if history:
            save(complete=False)
            raise UserError(f"{e} (the {len(history)} meta step(s) before it are saved to {path}, "
                            f"marked incomplete)") from None
        raise
    finally:
        bar.close()
        if run is not None:
            run.finish()
    save(complete=True)
    start = render.random_start(settings.size, model.device)
    progress = output.Progress.of(out, settings, settings.stages, start)
    try:
        z = render.rollout(model, start, prompts.shape_targets(stages, shift), settings,
                           callback=progress and (lambda stage, step, loss, z: progress.step(stage, step, z)))
    except KeyboardInterrupt:
        raise BakeInterrupted(path, complete=True) from None
    if progress is not None:
        progress.save()
    output.save_image(out.path, z, out.save_size, {**info, "baked_file": str(path)})
    return history
