"""The settings of a run: one frozen dataclass from the parsed flags to the optimizer, and the
choices and defaults the command line offers.

Nothing here imports torch, so that a script's --help answers before torch loads.
"""

import dataclasses
from dataclasses import dataclass

ORIGINAL = '"Meta-Optimization of CLIP Guided RGB Tensors"'  # the original, whose numbers are the defaults
LR = 0.12  # the original's learning rate, of the image and of the stages
STYLE_TEXT = "#pixelart simplistic 8-bit sprite art"  # added to every target (the original's)
NEGATIVE_TEXT = "text, graffitti, words"  # subtracted from every target (the original's, spelling kept)
DEFAULT_CLIP_MODEL = "ViT-B/32"
SAVE_SIZE = 512  # side of a saved PNG (its longer side), nearest-neighbour upscaled
PRECISIONS = ("fp32", "fp16", "bf16")  # of CLIP's image tower
PARAMS = ("rgb", "pyramid", "fourier")  # what Adam optimizes (params.py)
META_GRADS = ("unrolled", "none", "es")  # the bake's estimators (learners.py)
TUNE_LRS = (0.06, 0.12, 0.24, 0.48, 0.96)  # normal_tuned's sweep (evaluate.py): the reference halved, doubled 3x
ORIGINAL_REPLAY_SIZE = 128  # auto_microwave.py's side for a bake that records none (the original's bare tensors)
FAR = 0.5  # auto_microwave.py: nearest bakes farther than this (spherical distance) give way to a shared bake
GATE_EVERY = 5  # meta steps between validations, by default, for an estimator that validates by default (es)

# each script's renderer defaults, the original's: image side, steps (per stage), cutouts;
# None: as the replayed bake's renderer (the original's for a file that does not say; for the
# size, the original auto_microwave.py's 128 px, ORIGINAL_REPLAY_SIZE)
SCRIPT_DEFAULTS = {
    "normal.py": dict(size=32, steps=250, cutn=8),
    "microwave.py": dict(size=64, steps=25, cutn=8, lr=None, inner_eps=None, carry_moments=None, param=None),
    "auto_microwave.py": dict(size=None, steps=25, cutn=8, lr=None, inner_eps=None, carry_moments=None, param=None),
    "bake.py": dict(size=128, steps=30, cutn=1),
}
# why a script's --steps default is what it is, said in its --help (docs/evaluation.md: the step-budget curve)
STEPS_WHY = {
    "microwave.py": ": the original's, and the best of 5, 10, 25 and 50 a stage for the shipped shared bake under "
                    "both held-out judges on prompts_toy.txt",
    "auto_microwave.py": ", as microwave.py's",
    "normal.py": " at --lr 0.12: the original's, for ViT-B/32 at 32 px; with the offline toy models at --size 64, "
                 "125 steps at --lr 0.96 read best under the held-out judges",
}
# fields that only change how fast a result comes (or its rounding), not which result: not
# compared when deciding whether two bakes are the same bake
SPEED_ONLY = ("checkpoint", "threads", "es_chunk")
# fields added since whose value in a file that lacks them is not today's default but how bakes were made
BEFORE = {"meta_views": 0}
# the renderer's settings that a replay takes from its bake, unless told otherwise
RENDERER_OF_BAKE = ("lr", "inner_eps", "carry_moments", "param", "pyramid_levels", "palette", "palette_weight",
                    "palette_hard")
NO_PALETTE = "none"  # --palette none: the 16-level look, also where a replayed bake has a palette
PALETTE_WEIGHT = 1.0  # the soft palette term's weight at the run's end (it rises from 0)
PALETTE_HARD = 0.25  # the share of the run's steps, at its end, through the hard palette lookup


def sides(shape):
    """An image's (height, width): shape is one side (a square) or (height, width)."""
    return (shape, shape) if isinstance(shape, int) else (int(shape[0]), int(shape[1]))


@dataclass(frozen=True)
class Settings:
    """What the renderer and the bake compute with; a baked file's config is these fields."""

    # the renderer
    size: int = SCRIPT_DEFAULTS["bake.py"]["size"]  # width of the optimized image tensor
    height: int = None  # its height (None: square, size)
    steps: int = SCRIPT_DEFAULTS["bake.py"]["steps"]  # Adam steps per stage
    stage_steps: tuple = None  # each stage's steps, where they differ (methods.split_steps); None: steps each
    lr: float = LR  # the image's learning rate
    cutn: int = SCRIPT_DEFAULTS["bake.py"]["cutn"]  # cutouts CLIP sees per step
    precision: str = "fp32"  # of CLIP's image tower
    style: bool = True  # shape every target with the style and negative texts
    style_text: str = STYLE_TEXT
    negative_text: str = NEGATIVE_TEXT
    inner_eps: float = 1e-8  # Adam's eps (the original's: torch's default)
    carry_moments: bool = False  # keep Adam's moments from stage to stage (the original restarts Adam)
    param: str = "rgb"  # what Adam optimizes: the pixels, a pyramid or a spectrum (params.py)
    pyramid_levels: int = None  # levels of a pyramid (None: every halving down to 4 px)
    palette: str = None  # the colours the image is made and saved in, "#rrggbb,..." (None: 16 levels a channel)
    palette_weight: float = PALETTE_WEIGHT  # of the soft term pulling pixels to their nearest colour
    palette_hard: float = PALETTE_HARD  # the share of the run, at its end, seen through the hard lookup
    # the bake
    stages: int = 10
    meta_steps: int = 100
    meta_lr: float = LR  # the stages' learning rate (unrolled, none)
    stage_reg: float = 1.0  # weight of the fading 'stay near the prompt' term
    meta_grad: str = "es"  # the estimator: a name of learners.LEARNERS
    batch: int = 1  # random starts rolled out together per meta step (unrolled, none)
    checkpoint: bool = False  # rerun each stage in the unrolled backward instead of keeping its graph
    # the ES estimator
    population: int = 4  # antithetic pairs per meta step
    sigma: float = 0.05  # perturbation of a stage's direction, radians
    lr_sigma: float = 0.3  # perturbation of a stage's log learning-rate multiplier
    es_lr: float = 0.2  # Adam's step, in units of the perturbation
    es_rank: int = 0  # dimensions of the subspace stage directions are searched in (0: all)
    learn_stages: bool = True  # learn the stage directions
    learn_lr: bool = True  # learn a learning-rate multiplier per stage
    style_sigma: float = 0.3  # perturbation of a stage's log style weight (knobs.py)
    part_sigma: float = 0.3  # perturbation of a stage's turn towards its part of the prompt (knobs.py)
    learn_style: bool = False  # learn a weight of the style shift per stage
    learn_part: bool = False  # learn how far each stage turns towards a part of the prompt
    object_sigma: float = 0.3  # perturbation of a stage's turn towards the prompt's first object (knobs.py)
    layout_sigma: float = 0.3  # perturbation of a stage's turn towards the prompt's colourless layout
    learn_object: bool = False  # learn how far each stage turns towards the prompt's first object
    learn_layout: bool = False  # learn how far each stage turns towards the prompt without its colours
    meta_views: int = 8  # views of the final image as saved that the meta-loss sees (0: the inner cutouts)
    init_from: str = None  # the shared bake a prompt's bake starts from (its knobs)
    es_chunk: int = 0  # pairs rolled out in one batch (0: a process's whole share)
    # the validation gate
    validate_every: int = None  # meta steps between validations (0: off; None: the estimator's default)
    validation_starts: int = 8  # fixed starts each validation replays from
    # the run
    seed: int = 0  # the run's seed (a bake's own, in a batch)
    threads: int = 0  # CPU threads used (0: not set, torch's choice)

    @property
    def shape(self):
        """The image's (height, width)."""
        return (self.height or self.size, self.size)

    @property
    def size_text(self):
        """The image's size as a line says it: "64 px", or "96x48 px" where not square."""
        height, width = self.shape
        return f"{width} px" if height == width else f"{width}x{height} px"

    def replace(self, **changes):
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def config(self):
        """The dict a baked file records (stage_steps only where set: a bake's stages run steps each)."""
        found = dataclasses.asdict(self)
        if found["stage_steps"] is None:
            del found["stage_steps"]
        return found

    def of_stage(self, stage):
        """The settings stage `stage` (from 0) runs with: its own steps where stage_steps gives them."""
        return self if self.stage_steps is None else self.replace(steps=self.stage_steps[stage])

    @classmethod
    def from_config(cls, config):
        """The settings a baked file's config records; fields it lacks (added since) at their defaults."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{**BEFORE, **{k: v for k, v in config.items() if k in names}})


def replayed(given, config):
    """The renderer's settings for replaying a bake: each of RENDERER_OF_BAKE as given, or where
    given is None, as the bake's config recorded it (the original's, and rgb, for files without).

    A pyramid's levels follow the parametrization: the bake's, unless given, for the bake's
    pyramid. E.g. replayed({"lr": None, "param": None, ...}, {"lr": 0.2}) has lr 0.2, param rgb.
    """
    default = Settings()
    found = {name: config.get(name, getattr(default, name)) if given.get(name) is None else given[name]
             for name in RENDERER_OF_BAKE}
    if given.get("param") is not None and given.get("pyramid_levels") is None:
        found["pyramid_levels"] = None  # another parametrization than the bake's: its own default
    return found
