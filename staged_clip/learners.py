"""The bake's estimators, one class each, chosen once by name (--meta-grad) from LEARNERS.

A learner holds what a bake learns (for one prompt, or for es over a prompt list: a shared
bake) and moves it by one meta step at a time; the bake (baking.py) asks it, not its name, what differs: whether it validates by
default, whether it learns step sizes, which settings play a part in it, and whether
torchrun's processes share its work.
"""

import math

import torch

from . import es, knobs, losses, prompts, render
from .errors import UserError, log
from .models import math_attention
from .settings import GATE_EVERY


def meta_step(model, stages, optimizer, prompt, shift, settings, progress, differentiate):
    """One meta step of stage embeddings: roll out from fresh starts, score the final images, update.

    settings: size, steps, lr and cutn of the rollout; stage_reg; batch (random starts rolled
    out together; the meta-gradient is the mean of theirs); checkpoint (rerun each stage in
    the backward instead of keeping it). differentiate: back-propagate the final images' loss
    through the rollout (unrolled); without, only the regularizer moves the stages (none).
    progress: the share of the bake done, which fades the stage regularizer.
    Returns (meta loss as a float, final z [batch, 3, size, size]).
    """
    batch = settings.batch
    z = render.random_start(settings.shape, model.device, batch)
    with math_attention():
        targets = prompts.shape_targets(stages, shift)
        if differentiate:
            z = render.differentiable_rollout(model, z, targets, settings, renormalize=True)
        else:
            z = render.rollout(model, z, targets, settings)
        with torch.set_grad_enabled(differentiate):
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


class Learner:
    """What a bake learns, and how one meta step moves it: tasks (a tasks.Tasks) is what it
    aims at; init, raw knobs [S, K] to start from (a shared bake's; None: neutral)."""

    name = None  # its --meta-grad
    gate_every = 0  # meta steps between validations where --validate-every is not given (0: no gate)
    # the Settings fields that only its bakes use, which another estimator's bake ignores when it
    # compares bakes (unrolled and none declare none: their meta_lr and batch were always compared)
    fields = ()
    shares_processes = False  # whether torchrun's processes share one bake's work
    learns_shared = False  # whether it can learn a shared bake (over a prompt list)
    learns_knobs = False  # whether it learns the knobs settings ask for (knobs.py)

    def __init__(self, model, tasks, shift, settings, init=None):
        self.model, self.tasks, self.shift, self.settings = model, tasks, shift, settings

    def step(self, step):
        """Meta step number `step`: (meta loss, a final image of it)."""
        raise NotImplementedError

    def current(self):
        """What is learned so far: (stages [S, D], or None for a shared bake; raw knobs [S, K])."""
        raise NotImplementedError

    @classmethod
    def gate(cls, settings):
        """Meta steps between validations (0: no gate): --validate-every, else its default."""
        return cls.gate_every if settings.validate_every is None else settings.validate_every


class Unrolled(Learner):
    """Random stage vectors moved by AdamW along the exact meta-gradient through the rollout."""

    name = "unrolled"
    differentiate = True

    def __init__(self, model, tasks, shift, settings, init=None):
        super().__init__(model, tasks, shift, settings, init)
        self.stages = torch.randn(settings.stages, model.dim, device=model.device).requires_grad_()
        self.optimizer = torch.optim.AdamW([self.stages], lr=settings.meta_lr)
        self.knobs = torch.zeros(settings.stages, len(knobs.KNOBS), device=model.device) if init is None else init

    def step(self, step):
        return meta_step(self.model, self.stages, self.optimizer, self.tasks.prompt, self.shift, self.settings,
                         step / self.settings.meta_steps, self.differentiate)

    def current(self):
        return self.stages.detach(), self.knobs


class Original(Unrolled):
    """The original's bake: random stage vectors that only the fading 'stay near the prompt' term moves."""

    name = "none"
    differentiate = False


class Evolution(Learner):
    """Stage directions and learning-rate multipliers moved by ES from the prompt (es.py)."""

    name = "es"
    gate_every = GATE_EVERY
    fields = ("population", "sigma", "lr_sigma", "es_lr", "es_rank", "learn_stages", "learn_lr", "style_sigma",
              "part_sigma", "learn_style", "learn_part", "object_sigma", "layout_sigma", "learn_object",
              "learn_layout", "meta_views", "init_from")
    shares_processes = True
    learns_shared = True
    learns_knobs = True

    def __init__(self, model, tasks, shift, settings, init=None):
        super().__init__(model, tasks, shift, settings, init)
        embed = None if tasks.shared else tasks.prompt.embed
        self.search = es.Search(embed, settings.stages, settings.es_rank, settings.seed, raw=init)
        self.optimizer = self.search.optimizer(settings)

    def step(self, step):
        loss, z, self.settings = es.meta_step(self.model, self.search, self.optimizer, self.tasks, self.shift,
                                              self.settings, step, step / self.settings.meta_steps)
        return loss, z

    def current(self):
        return self.search.stages(), self.search.knobs


LEARNERS = {learner.name: learner for learner in (Unrolled, Original, Evolution)}


def learner_of(settings):
    """The Learner class settings.meta_grad names."""
    return LEARNERS[settings.meta_grad]
