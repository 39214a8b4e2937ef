"""The bake: a learner meta-optimizes a prompt's stages so the staged renderer's final image nears it;
the validation gate keeps the best; the stages are saved, and a preview is made of them."""

import signal
import time
from dataclasses import dataclass

import torch

from . import baked, distributed, gate, knobs, learners, output, render, tasks
from .errors import Interrupted, UserError, log, signal_of
from .settings import Settings
from .randomness import rng_aside, seed_everything
from .wandb_log import wandb_image


@dataclass(frozen=True)
class Baker:
    """What the bakes of one run share: the model, the style shift added to every target [D],
    wandb logging, progress bars (off: a batch's log file; position: the bar's line), and the
    shared bake each prompt's bake starts from (a load_baked dict; None: none)."""

    model: object  # a models.Clip
    shift: object
    wandb: object  # a wandb_log.WandbLog
    bars: bool = True
    position: int = 0
    init: object = None


# what a prompt's bake takes from the shared bake it starts from: the knobs are per stage of its
# renderer and multiply its learning rate
FROM_SHARED = ("stages", "steps", "lr", "inner_eps", "carry_moments", "param", "pyramid_levels")


def starting_from(settings, shared):
    """The settings of a prompt's bake that starts from shared (a load_baked dict): its renderer as
    the shared bake's (saying what that changes), and init_from naming it."""
    if not knobs.is_shared(shared):
        raise UserError(f"{shared['path']} is a bake of one prompt: --init-from takes a shared bake, made by "
                        f"bake.py --prompts FILE")
    theirs = Settings.from_config(shared["config"])
    changed = [f"{name} {getattr(theirs, name)} (not {getattr(settings, name)})" for name in FROM_SHARED
               if getattr(theirs, name) != getattr(settings, name)]
    if changed:
        log(f"note: as {shared['path']} was baked: " + ", ".join(changed))
    if theirs.shape != settings.shape:  # kept: a bake may be of another size than what it starts from
        log(f"note: {shared['path']} was learned at {theirs.size_text}, this bake is at {settings.size_text} "
            f"(--size {theirs.size}{f' {theirs.height}' if theirs.height else ''} to match)")
    return settings.replace(**{name: getattr(theirs, name) for name in FROM_SHARED}, init_from=shared["path"])


class BakeInterrupted(Interrupted):
    """Ctrl-C (or SIGTERM: signum) during a bake; .path is the file saved (None before any step),
    .complete its state, .rest what else to tell the user (set by whoever bakes a list)."""

    def __init__(self, path, complete=False, signum=signal.SIGINT):
        super().__init__(str(path), signum)
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


def join_processes(device, settings):
    """Join torchrun's processes, if this is one of several (distributed.join), so that they make one
    bake: every process takes the first's seed and reseeds with it. Returns (rank, count, settings)."""
    rank, count = distributed.join(device)
    if count > 1:
        settings = settings.replace(seed=distributed.shared_seed(settings.seed))
        seed_everything(settings.seed, announce=False)
        if not learners.learner_of(settings).shares_processes and rank == 0:
            log(f"note: --meta-grad {settings.meta_grad} does not share a bake among processes; the {count} "
                f"processes all bake alike and the first writes")
    return rank, count, settings


def bake_prompt(baker, prompt, settings, path, out):
    """Bake one prompt: meta-optimize its stages, save them to path and a preview to out.

    settings: a Settings (its seed is recorded; see starting_from where baker.init is a shared
    bake, whose knobs the bake and its gate start from); out: the preview's output.Output. With the validation gate, what is saved is the best that the gate kept.
    Under torchrun only the first process writes and logs. Ctrl-C saves what was learned
    so far, marked incomplete, and raises BakeInterrupted. Returns the meta-loss history.
    """
    return Bake(baker, tasks.Tasks.single(baker.model, prompt, settings.stages), settings, path, baker.init).run(out)


def bake_shared(baker, texts, settings, path, out, source):
    """A shared bake: one set of knobs learned over the prompts texts (from the file source), each
    ES pair drawn on one of them, validated on held-out ones; saved to path, its preview (the
    first held-out prompt) to out. Otherwise as bake_prompt."""
    if not learners.learner_of(settings).learns_shared:
        raise UserError(f"--meta-grad {settings.meta_grad} cannot learn a shared bake: use --meta-grad es")
    return Bake(baker, tasks.Tasks.of_list(baker.model, texts, settings.stages, settings.seed), settings, path,
                source=source).run(out)


class Bake:
    """One bake under way: its learner, its gate, its history and its wandb run."""

    def __init__(self, baker, aims, settings, path, init=None, source=None):
        self.baker, self.tasks, self.settings, self.path = baker, aims, settings, path
        # whose image the preview and wandb show: the prompt's, or a shared bake's first held-out prompt
        self.prompt = aims.validation[0].prompt
        self.title = f"shared: {source}" if aims.shared else self.prompt.text
        self.began = time.time()
        self.primary = distributed.is_primary()
        raw = None if init is None else knobs.raw_of(init, settings.stages, baker.model.device)
        self.learner = learners.learner_of(settings)(baker.model, aims, baker.shift, settings, raw)
        self.run_log, self.control = self.start_logging()
        self.every = self.learner.gate(settings)
        # the gate's first best: the prompt itself (a shared bake: each prompt), at the knobs it starts from
        start = None if raw is None else (None if aims.shared else aims.prompt.embed.expand(settings.stages, -1), raw)
        self.validation = gate.Gate(baker.model, aims, baker.shift, settings, start) if self.every else None
        self.history = []

    def start_logging(self):
        """The wandb run (None when not logging), and the control image logged beside the bake's:
        plain optimization toward the prompt, the same total steps."""
        model, settings = self.baker.model, self.settings
        run = None
        if self.primary:
            run = self.baker.wandb.start(self.title[:64], {**settings.config(), "prompt": self.title,
                                                           "clip_model": model.name})
        if run is None:
            return None, None
        with rng_aside(model.device):  # a seed bakes the same stages with or without logging
            control = render.rollout(model, render.random_start(settings.shape, model.device),
                                     (self.prompt.embed + self.baker.shift)[None],
                                     settings.replace(steps=settings.steps * settings.stages))
        return run, control

    def run(self, out):
        """Every meta step, then the saved bake and its preview (see bake_prompt)."""
        from tqdm import tqdm
        bar = tqdm(range(self.settings.meta_steps), desc=self.title[:30], position=self.baker.position,
                   leave=self.baker.position == 0, dynamic_ncols=True, disable=not (self.primary and self.baker.bars))
        try:
            for step in bar:
                loss = self.step(step)
                bar.set_postfix(loss=f"{loss:.4f}")
        except KeyboardInterrupt as e:
            if self.history:
                self.save(complete=False)
            raise BakeInterrupted(self.path if self.history else None, signum=signal_of(e)) from None
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
            kept = self.validation.offer(step, *self.learner.current(), self.learner.settings)
            record.update(validation_loss=self.validation.history[-1]["loss"], kept=int(kept))
        if self.run_log is not None:
            if step % self.baker.wandb.every == 0 or last:
                palette = self.settings.palette
                record["baked"] = wandb_image(z, f"meta step {step}", palette)
                record["control"] = wandb_image(self.control, "plain optimization", palette)
            self.run_log.log(record, step=step)
        return loss

    def result(self):
        """What the bake has made: (stages [S, D] or None for a shared bake, raw knobs [S, K]), the
        gate's best where there is a gate."""
        return self.learner.current() if self.validation is None else self.validation.best

    def save(self, complete):
        """Write the baked file (the first process only)."""
        if not self.primary:
            return
        stages, raw = self.result()
        model, settings = self.baker.model, self.settings
        found, learned = knobs.values(raw), knobs.learned(settings)
        # a knob is written where it was learned or is not neutral
        kept = {knob.key: found[knob.key] if (self.learner.learns_knobs and learned[k]) or raw[:, k].any() else None
                for k, knob in enumerate(knobs.KNOBS)}
        contents = {"prompt": self.prompt.text, "prompt_type": self.prompt.kind, "prompt_embed": self.prompt.embed}
        if self.tasks.shared:
            stages = torch.zeros(settings.stages, model.dim)
            contents = {"prompt": self.title, "prompt_type": "text", "kind": "shared",
                        "prompts": [t.prompt.text for t in self.tasks.training],
                        "held_out": [t.prompt.text for t in self.tasks.validation]}
        baked.save_baked(self.path, {
            **contents, "clip_model": model.name, "clip_weights": model.weights_id, "stages": stages, **kept,
            "config": settings.config(), "history": self.history, "complete": complete,
            "validation": self.validation and self.validation.history, "seconds": time.time() - self.began})

    def preview(self, out):
        """Replay the saved bake from a fresh start into out's PNG (a shared bake's: for its first
        held-out prompt)."""
        model, settings = self.baker.model, self.settings
        stages, raw = self.result()
        task = self.tasks.validation[0]
        directions = task.prompt.embed.expand(settings.stages, -1) if stages is None else stages
        start = render.random_start(settings.shape, model.device)
        progress = output.Progress.of(out, settings, settings.stages, start)
        last = []  # the loss of the last step

        def report(stage, step, loss, z):
            last[:] = [loss]
            if progress is not None:
                progress.step(stage, step, z)

        try:
            z = render.rollout(model, start, knobs.targets(directions, self.baker.shift, raw, task.parts), settings,
                               callback=report, lr_scale=knobs.lr_scale(raw))
        except KeyboardInterrupt as e:
            raise BakeInterrupted(self.path, complete=True, signum=signal_of(e)) from None
        if progress is not None:
            progress.save()
        out.save(z, settings, model.device, prompt=self.prompt.text, baked_file=str(self.path),
                 meta_grad=settings.meta_grad, loss=last[0].item() if last else None)
