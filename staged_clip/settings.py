"""The settings of the renderer and the bake: one dataclass, from the parsed flags to the optimizer."""

import dataclasses
from dataclasses import dataclass

from .prompts import NEGATIVE_TEXT, STYLE_TEXT

LR = 0.12  # the reference's learning rate, of the image and of the stages
# each script's renderer defaults, the reference's: image side, steps (per stage), cutouts
SCRIPT_DEFAULTS = {
    "normal.py": dict(size=32, steps=250, cutn=8),
    # None: as the replayed bake's renderer
    "microwave.py": dict(size=64, steps=25, cutn=8, lr=None, inner_eps=None, carry_moments=None, param=None),
    "auto_microwave.py": dict(size=128, steps=25, cutn=8, lr=None, inner_eps=None, carry_moments=None, param=None),
    "bake.py": dict(size=128, steps=30, cutn=1),
}
META_GRADS = ("unrolled", "none", "es")
# fields that only change how fast a result comes (or its rounding), not which result: not
# compared when deciding whether two bakes are the same bake
SPEED_ONLY = ("checkpoint", "threads", "es_chunk")
# renderer settings that a replay takes from its bake, unless told otherwise
RENDERER_OF_BAKE = ("lr", "inner_eps", "carry_moments")
# fields that play a part only in an ES bake, or only where the gate validates
ES_ONLY = ("population", "sigma", "lr_sigma", "es_lr", "es_rank", "learn_stages", "learn_lr")
GATE_ONLY = ("validation_starts",)
PYRAMID_ONLY = ("pyramid_levels",)
GATE_EVERY = 5  # meta steps between validations, by default, for an ES bake


@dataclass
class Settings:
    """What the renderer and the bake compute with; a baked file's config is these fields.

    Renderer: image side, Adam steps per stage, the image's learning rate, cutouts per
    step, the style shaping of targets, the image tower's precision, Adam's eps
    (inner_eps; the reference's 1e-8) and whether Adam's moments carry over from stage to
    stage (carry_moments; the reference restarts Adam every stage), and the image's
    parametrization (param: rgb, pyramid or fourier, see params.py; pyramid_levels: None
    for every level down to 4 px). Bake: the number of
    stages, meta steps and their learning rate, the weight of the fading 'stay near the
    prompt' term, the meta-gradient ("unrolled", "none" or "es"), random starts per meta
    step (unrolled, none), per-stage gradient checkpointing. ES: antithetic pairs per meta
    step, the perturbation's size for stage directions (radians) and for log learning-rate
    multipliers, Adam's step on them, the search's rank (0: every direction), what it
    learns, pairs per batch. The validation gate: every validate_every meta steps (0: off;
    None: GATE_EVERY for es, off otherwise) the bake is replayed from validation_starts
    fixed starts and kept only where it beats the best so far. seed: the run's seed (a
    bake's own in a batch). threads: CPU threads (speed only; None leaves torch's choice).
    """

    size: int = SCRIPT_DEFAULTS["bake.py"]["size"]
    steps: int = SCRIPT_DEFAULTS["bake.py"]["steps"]
    lr: float = LR
    cutn: int = SCRIPT_DEFAULTS["bake.py"]["cutn"]
    stages: int = 10
    meta_steps: int = 100
    meta_lr: float = LR
    stage_reg: float = 1.0
    meta_grad: str = "es"
    batch: int = 1
    checkpoint: bool = False
    precision: str = "fp32"
    seed: int = None
    style: bool = True
    style_text: str = STYLE_TEXT
    negative_text: str = NEGATIVE_TEXT
    threads: int = None
    inner_eps: float = 1e-8
    carry_moments: bool = False
    population: int = 4
    sigma: float = 0.05
    lr_sigma: float = 0.3
    es_lr: float = 0.2
    es_rank: int = 0
    learn_stages: bool = True
    learn_lr: bool = True
    es_chunk: int = 0
    validate_every: int = None
    validation_starts: int = 8
    param: str = "rgb"
    pyramid_levels: int = None

    @classmethod
    def from_args(cls, args, **changes):
        """The settings a script's parsed flags ask for (flags it lacks keep their defaults)."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in vars(args).items() if k in names}, **changes})

    def replace(self, **changes):
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def gate_every(self):
        """Meta steps between validations (0: no gate): validate_every, else the estimator's default."""
        if self.validate_every is not None:
            return self.validate_every
        return GATE_EVERY if self.meta_grad == "es" else 0

    def replaying(self, config):
        """These settings for replaying a bake: the image's learning rate, Adam's eps and moments
        and the parametrization (with its levels), where not given (None), as the bake's config
        recorded them (the reference's, and rgb, for files without)."""
        defaults = Settings()
        changes = {name: config.get(name, getattr(defaults, name)) if getattr(self, name) is None
                   else getattr(self, name) for name in RENDERER_OF_BAKE}
        if self.param is None:  # the bake's parametrization (and its levels, unless given)
            changes.update(param=config.get("param", "rgb"),
                           pyramid_levels=self.pyramid_levels or config.get("pyramid_levels"))
        return self.replace(**changes)

    def config(self):
        """The dict a baked file records."""
        return dataclasses.asdict(self)

    def same_bake(self, config):
        """Whether a baked file's config was made with these settings (its seed and speed-only fields aside).

        Older files lack fields added since: those count as made at their defaults. Fields
        that play no part in the bake (ES's, for another estimator; the gate's, where it is
        off) do not count.
        """
        other = Settings(**{f.name: config.get(f.name, getattr(Settings(), f.name)) for f in dataclasses.fields(self)})
        skip = {"seed", *SPEED_ONLY, "validate_every"}
        if self.meta_grad != "es":
            skip.update(ES_ONLY)
        if not self.gate_every():
            skip.update(GATE_ONLY)
        if self.param != "pyramid":
            skip.update(PYRAMID_ONLY)
        return other.gate_every() == self.gate_every() and all(
            getattr(other, f.name) == getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip)
