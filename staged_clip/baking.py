"""The bake: a learner meta-optimizes a prompt's stages so the staged renderer's final image nears it;
the validation gate keeps the best; the stages are saved, and a preview is made of them."""

import time
from dataclasses import dataclass

import torch

from . import baked, distributed, gate, learners, output, prompts, render
from .errors import UserError
from .randomness import rng_aside
from .wandb_log import wandb_image


@dataclass(frozen=True)
class Baker:
    """What the bakes of one run share: the model, the style shift added to every target [D],
    wandb logging, and progress bars (off: a batch's log file; position: the bar's line)."""

    model: object  # a models.Clip
    shift: object
    wandb: object  # a wandb_log.WandbLog
    bars: bool = True
    position: int = 0


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


def bake_prompt(baker, prompt, settings, path, out):
    """Bake one prompt: meta-optimize its stages, save them to path and a preview to out.

    settings: a Settings (its seed is recorded); out: the preview's output.Output. With the
    validation gate, what is saved is the best that the gate kept. Under torchrun only the
    first process writes and logs. Ctrl-C saves what was learned so far, marked incomplete,
    and raises BakeInterrupted. Returns the meta-loss history.
    """
    return Bake(baker, prompt, settings, path).run(out)


class Bake:
    """One prompt's bake under way: its learner, its gate, its history and its wandb run."""

    def __init__(self, baker, prompt, settings, path):
        self.baker, self.prompt, self.settings, self.path = baker, prompt, settings, path
        self.began = time.time()
        self.primary = distributed.is_primary()
        self.learner = learners.learner_of(settings)(baker.model, prompt, baker.shift, settings)
        self.run_log, self.control = self.start_logging()
        self.every = self.learner.gate(settings)
        self.validation = gate.Gate(baker.model, prompt, baker.shift, settings) if self.every else None
        self.history = []

    def start_logging(self):
        """The wandb run (None when not logging), and the control image logged beside the bake's:
        plain optimization toward the prompt, the same total steps."""
        model, settings = self.baker.model, self.settings
        run = None
        if self.primary:
            run = self.baker.wandb.start(self.prompt.text[:64], {**settings.config(), "prompt": self.prompt.text,
                                                                 "clip_model": model.name})
        if run is None:
            return None, None
        with rng_aside(model.device):  # a seed bakes the same stages with or without logging
            control = render.rollout(model, render.random_start(settings.size, model.device),
                                     (self.prompt.embed + self.baker.shift)[None],
                                     settings.replace(steps=settings.steps * settings.stages))
        return run, control

    def run(self, out):
        """Every meta step, then the saved bake and its preview (see bake_prompt)."""
        from tqdm import tqdm
        bar = tqdm(range(self.settings.meta_steps), desc=self.prompt.text[:30], position=self.baker.position,
                   leave=self.baker.position == 0, dynamic_ncols=True, disable=not (self.primary and self.baker.bars))
        try:
            for step in bar:
                loss = self.step(step)
                bar.set_postfix(loss=f"{loss:.4f}")
        except KeyboardInterrupt:
            if self.history:
                self.save(complete=False)
            raise BakeInterrupted(self.path if self.history else None) from None
        except UserError as e:  # a NaN loss: the stages from before it are still worth keeping
            if self.history:
                self.save(complete=False)
                raise UserError(f"{e} (the {len(self.history)} meta step(s) before it are saved to {self.path}, "
                                f"marked incomplete)") from None
            raise
        finally:
            bar.close()
            if self.run_log is not None:
                self.run_log.finish()
        self.save(complete=True)
        if self.primary:
            self.preview(out)
        return self.history

    def step(self, step):
        """Meta step number `step`, its validation where one is due, and its wandb record; its loss."""
        loss, z = self.learner.step(step)
        self.history.append(loss)
        record = {"meta_loss": loss}
        last = step == self.settings.meta_steps - 1
        if self.validation is not None and ((step + 1) % self.every == 0 or last):
            stages, scale = self.learner.current()
            kept = self.validation.offer(step, stages, scale if scale is not None else torch.ones_like(stages[:, 0]),
                                   self.learner.settings)
            record.update(validation_loss=self.validation.history[-1]["loss"], kept=int(kept))
        if self.run_log is not None:
            if step % self.baker.wandb.every == 0 or last:
                record["baked"] = wandb_image(z, f"meta step {step}")
                record["control"] = wandb_image(self.control, "plain optimization")
            self.run_log.log(record, step=step)
        return loss

    def result(self):
        """What the bake has made: (stages, lr_scale or None), the gate's best where there is a gate."""
        if self.validation is None:
            return self.learner.current()
        stages, scale = self.validation.best
        return stages, (scale if self.learner.learns_lr(self.settings) else None)

    def save(self, complete):
        """Write the baked file (the first process only)."""
        if not self.primary:
            return
        stages, scale = self.result()
        model = self.baker.model
        baked.save_baked(self.path, {
            "prompt": self.prompt.text, "prompt_type": self.prompt.kind, "prompt_embed": self.prompt.embed,
            "clip_model": model.name, "clip_weights": model.weights_id, "stages": stages, "lr_scale": scale,
            "config": self.settings.config(), "history": self.history, "complete": complete,
            "validation": self.validation and self.validation.history, "seconds": time.time() - self.began})

    def preview(self, out):
        """Replay the saved bake from a fresh start into out's PNG."""
        model, settings = self.baker.model, self.settings
        stages, scale = self.result()
        start = render.random_start(settings.size, model.device)
        progress = output.Progress.of(out, settings, settings.stages, start)
        last = []  # the loss of the last step

        def report(stage, step, loss, z):
            last[:] = [loss]
            if progress is not None:
                progress.step(stage, step, z)

        try:
            z = render.rollout(model, start, prompts.shape_targets(stages, self.baker.shift), settings,
                               callback=report, lr_scale=scale)
        except KeyboardInterrupt:
            raise BakeInterrupted(self.path, complete=True) from None
        if progress is not None:
            progress.save()
        out.save(z, settings, model.device, prompt=self.prompt.text, baked_file=str(self.path),
                 meta_grad=settings.meta_grad, loss=last[0].item() if last else None)
