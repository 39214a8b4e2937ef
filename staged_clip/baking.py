"""The bake: meta-optimize a prompt's stage embeddings so the staged renderer's final image nears it."""

import math
import time

import torch

from . import baked, distributed, es, gate, losses, output, prompts, render
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


class Reference:
    """The stages as the reference bakes them: random vectors moved by AdamW (--meta-grad unrolled or none)."""

    def __init__(self, model, prompt, shift, settings):
        self.model, self.prompt, self.shift, self.settings = model, prompt, shift, settings
        self.stages = torch.randn(settings.stages, model.dim, device=model.device).requires_grad_()
        self.optimizer = torch.optim.AdamW([self.stages], lr=settings.meta_lr)

    def step(self, step):
        return meta_step(self.model, self.stages, self.optimizer, self.prompt, self.shift, self.settings,
                         step / self.settings.meta_steps)

    def current(self):
        """(stages [S, D], learning-rate multipliers [S] or None)."""
        return self.stages.detach(), None


class Evolution:
    """Stage directions and learning-rate multipliers moved by ES from the prompt (--meta-grad es)."""

    def __init__(self, model, prompt, shift, settings):
        self.model, self.prompt, self.shift, self.settings = model, prompt, shift, settings
        self.search = es.Search(prompt.embed, settings.stages, settings.es_rank, settings.seed)
        self.optimizer = self.search.optimizer(settings)

    def step(self, step):
        return es.meta_step(self.model, self.search, self.optimizer, self.prompt, self.shift, self.settings, step,
                            step / self.settings.meta_steps)

    def current(self):
        return self.search.stages(), self.search.lr_scale() if self.settings.learn_lr else None


def bake_prompt(model, prompt, shift, settings, path, out, wandb, info, position=0):
    """Bake one prompt: meta-optimize its stages, save them to path and a preview to out.

    settings: a Settings (its seed is recorded); out: an output.Output; wandb: a
    wandb_log.WandbLog; info: the preview PNG's text chunks (output.run_info).
    With the validation gate (settings.gate_every()), what is saved is the best that the
    gate kept. Under torchrun only the first process writes and logs.
    Ctrl-C saves what was learned so far, marked incomplete, and raises BakeInterrupted.
    Returns the meta-loss history.
    """
    from tqdm import tqdm
    began = time.time()
    primary = distributed.is_primary()
    config = settings.config()
    learner = (Evolution if settings.meta_grad == "es" else Reference)(model, prompt, shift, settings)
    run = wandb.start(prompt.text[:64], {**config, "prompt": prompt.text, "clip_model": model.name}) if primary else None
    control = None
    if run is not None:  # plain optimization toward the prompt, same total steps
        with rng_aside(model.device):  # a seed bakes the same stages with or without logging
            control = render.rollout(model, render.random_start(settings.size, model.device),
                                     (prompt.embed + shift)[None],
                                     settings.replace(steps=settings.steps * settings.stages))
    every = settings.gate_every()
    validation = gate.Gate(model, prompt, shift, settings) if every else None
    history = []

    def result():
        """What the bake has made: (stages, lr_scale or None), the gate's best where there is a gate."""
        if validation is None:
            return learner.current()
        stages, scale = validation.best
        return stages, (scale if settings.meta_grad == "es" and settings.learn_lr else None)

    def save(complete):
        if not primary:
            return
        stages, scale = result()
        baked.save_baked(path, stages=stages, prompt=prompt, clip_model=model.name, config=config,
                         history=history, complete=complete, clip_weights=model.weights_id, lr_scale=scale,
                         validation=validation and validation.history, seconds=time.time() - began)

    bar = tqdm(range(settings.meta_steps), desc=prompt.text[:30], position=position, leave=position == 0,
               dynamic_ncols=True, disable=not primary)
    try:
        for step in bar:
            loss, z = learner.step(step)
            history.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}")
            record = {"meta_loss": loss}
            if validation is not None and ((step + 1) % every == 0 or step == settings.meta_steps - 1):
                stages, scale = learner.current()
                kept = validation.offer(step, stages, scale if scale is not None else torch.ones_like(stages[:, 0]))
                record.update(validation_loss=validation.history[-1]["loss"], kept=int(kept))
            if run is not None:
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
    if not primary:
        return history
    stages, scale = result()
    start = render.random_start(settings.size, model.device)
    progress = output.Progress.of(out, settings, settings.stages, start)
    try:
        z = render.rollout(model, start, prompts.shape_targets(stages, shift), settings, lr_scale=scale,
                           callback=progress and (lambda stage, step, loss, z: progress.step(stage, step, z)))
    except KeyboardInterrupt:
        raise BakeInterrupted(path, complete=True) from None
    if progress is not None:
        progress.save()
    output.save_image(out.path, z, out.save_size, {**info, "baked_file": str(path)})
    return history
