"""The validation gate: a bake keeps what it learns only where it replays better than the best so far.

Every few meta steps the current stages and knobs (learning-rate multipliers, ...) are
replayed from a few fixed validation starts, each with its own fixed cutouts, and compared
start for start with the best so far, which begins as the prompt itself with Adam at its
base rate (an original-style replay), or where the bake starts from a shared bake, as that
bake. A shared bake validates on held-out prompts of its list. So a bake never ends worse on its validation starts than
replaying the prompt, whatever its estimator did.
"""

import torch

from . import distributed, es, knobs

# validation start v has seed VALIDATION_SEED + v: above the seeds of training pairs
# (es.mix_seed, below 2**61), of bakes (below 2**62) and of evaluate.py's starts (2**62 on)
VALIDATION_SEED = 3 * 2**61


class Gate:
    """Keeps the best (stages [S, D] or None, raw knobs [S, K]) of a bake by its replays from fixed
    starts. tasks: a tasks.Tasks (start v replays toward its validation prompt v); start: where
    the bake starts (None: the prompt itself at the base rate, every knob neutral)."""

    def __init__(self, model, tasks, shift, settings, start=None):
        self.model, self.tasks, self.shift, self.settings = model, tasks, shift, settings
        self.history = []  # one dict per validation
        if start is None:
            stages = None if tasks.shared else tasks.prompt.embed.detach().expand(settings.stages, -1).clone()
            start = stages, torch.zeros(settings.stages, len(knobs.KNOBS), device=model.device)
        self.best = start
        self.best_losses = self.losses(*start)
        self.history.append({"step": None, "loss": self.best_losses.mean().item(), "kept": True})

    def losses(self, stages, raw):
        """The final-image loss of a replay from each validation start: [V]."""
        model, settings = self.model, self.settings
        n = settings.validation_starts
        values = torch.full((n,), float("nan"), device=model.device)
        mine = []
        for chunk in distributed.chunks(n, settings.es_chunk):
            prompt, parts = self.tasks.batch(self.tasks.of_starts(chunk))
            targets = knobs.batch_targets(stages, prompt.embed, self.shift, raw, parts)
            generators = [torch.Generator(device=model.device).manual_seed(VALIDATION_SEED + v) for v in chunk]
            values[chunk] = es.replay_losses(model, generators, targets, settings, prompt, knobs.lr_scale(raw))[0]
            mine += chunk
        return distributed.gather(values, mine)

    def offer(self, step, stages, raw, settings=None):
        """Replay a candidate; keep it as the best where its mean loss over the starts is lower.

        A candidate whose replay is not finite is never kept. settings: the bake's now, where
        they changed (an ES bake lowers es_chunk where memory runs out). Returns whether it was kept.
        """
        if settings is not None:
            self.settings = settings
        stages = None if stages is None else stages.detach().clone()
        raw = raw.detach().clone()
        found = self.losses(stages, raw)
        kept = bool(torch.isfinite(found).all() and found.mean() < self.best_losses.mean())
        self.history.append({"step": step, "loss": found.mean().item(), "best": self.best_losses.mean().item(),
                             "wins": int((found < self.best_losses).sum()), "kept": kept})
        if kept:
            self.best, self.best_losses = (stages, raw), found
        return kept
