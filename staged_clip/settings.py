"""The settings of the renderer and the bake: one dataclass, from the parsed flags to the optimizer."""

import dataclasses
from dataclasses import dataclass

from .prompts import NEGATIVE_TEXT, STYLE_TEXT

LR = 0.12  # the reference's learning rate, of the image and of the stages
# each script's renderer defaults, the reference's: image side, steps (per stage), cutouts
SCRIPT_DEFAULTS = {
    "normal.py": dict(size=32, steps=250, cutn=8),
    "microwave.py": dict(size=64, steps=25, cutn=8),
    "auto_microwave.py": dict(size=128, steps=25, cutn=8),
    "bake.py": dict(size=128, steps=30, cutn=1),
}
META_GRADS = ("unrolled", "none")
# fields that only change how fast a result comes, not which result: not compared when
# deciding whether two bakes are the same bake
SPEED_ONLY = ("checkpoint", "threads")


@dataclass
class Settings:
    """What the renderer and the bake compute with; a baked file's config is these fields.

    Renderer: image side, Adam steps per stage, the image's learning rate, cutouts per
    step, the style shaping of targets, the image tower's precision. Bake: the number of
    stages, meta steps and their learning rate, the weight of the fading 'stay near the
    prompt' term, the meta-gradient, random starts per meta step, per-stage gradient
    checkpointing. seed: the run's seed (a bake's own in a batch). threads: CPU threads
    (speed only; None leaves torch's choice).
    """

    size: int = SCRIPT_DEFAULTS["bake.py"]["size"]
    steps: int = SCRIPT_DEFAULTS["bake.py"]["steps"]
    lr: float = LR
    cutn: int = SCRIPT_DEFAULTS["bake.py"]["cutn"]
    stages: int = 10
    meta_steps: int = 100
    meta_lr: float = LR
    stage_reg: float = 1.0
    meta_grad: str = "unrolled"
    batch: int = 1
    checkpoint: bool = False
    precision: str = "fp32"
    seed: int = None
    style: bool = True
    style_text: str = STYLE_TEXT
    negative_text: str = NEGATIVE_TEXT
    threads: int = None

    @classmethod
    def from_args(cls, args, **changes):
        """The settings a script's parsed flags ask for (flags it lacks keep their defaults)."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in vars(args).items() if k in names}, **changes})

    def replace(self, **changes):
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def config(self):
        """The dict a baked file records."""
        return dataclasses.asdict(self)

    def same_bake(self, config):
        """Whether a baked file's config was made with these settings (its seed and speed-only fields aside).

        Older files lack fields added since: those count as made at their defaults.
        """
        defaults = Settings()
        return all(config.get(f.name, getattr(defaults, f.name)) == getattr(self, f.name)
                   for f in dataclasses.fields(self) if f.name not in ("seed", *SPEED_ONLY))
