"""The validation gate: a bake keeps what it learns only where it replays better than the best so far.

Every few meta steps the current stages (and learning-rate multipliers) are replayed from
a few fixed validation starts, each with its own fixed cutouts, and compared start for
start with the best so far, which begins as the prompt itself with Adam at its base rate
(an original-style replay). So a bake never ends worse on its validation starts than
replaying the prompt, whatever its estimator did.
"""

import torch

from . import distributed, es, prompts

# validation start v has seed VALIDATION_SEED + v: above the seeds of training pairs
# (es.mix_seed, below 2**61), of bakes (below 2**62) and of evaluate.py's starts (2**62 on)
VALIDATION_SEED = 3 * 2**61


class Gate:
    """Keeps the best (stages [S, D], lr_scale [S]) of a bake by its replays from fixed starts."""

    def __init__(self, model, prompt, shift, settings):
        self.model, self.prompt, self.shift, self.settings = model, prompt, shift, settings
        self.history = []  # one dict per validation
        stages = prompt.embed.detach().expand(settings.stages, -1).clone()
        ones = torch.ones(settings.stages, device=model.device)
        self.best = (stages, ones)
        self.best_losses = self.losses(stages, ones)
        self.history.append({"step": None, "loss": self.best_losses.mean().item(), "kept": True})

    def losses(self, stages, lr_scale):
        """The final-image loss of a replay from each validation start: [V]."""
        model, settings = self.model, self.settings
        n = settings.validation_starts
        values = torch.full((n,), float("nan"), device=model.device)
        mine = []
        targets = prompts.shape_targets(stages, self.shift)  # [S, D]
        for chunk in distributed.chunks(n, settings.es_chunk):
            generators = [torch.Generator(device=model.device).manual_seed(VALIDATION_SEED + v) for v in chunk]
            values[chunk] = es.replay_losses(model, generators, targets, settings, self.prompt, lr_scale)[0]
            mine += chunk
        return distributed.gather(values, mine)

    def offer(self, step, stages, lr_scale, settings=None):
        """Replay a candidate; keep it as the best where its mean loss over the starts is lower.

        A candidate whose replay is not finite is never kept. settings: the bake's now, where
        they changed (an ES bake lowers es_chunk where memory runs out). Returns whether it was kept.
        """
        if settings is not None:
            self.settings = settings
        stages, lr_scale = stages.detach().clone(), lr_scale.detach().clone()
        found = self.losses(stages, lr_scale)
        kept = bool(torch.isfinite(found).all() and found.mean() < self.best_losses.mean())
        self.history.append({"step": step, "loss": found.mean().item(), "best": self.best_losses.mean().item(),
                             "wins": int((found < self.best_losses).sum()), "kept": kept})
        if kept:
            self.best, self.best_losses = (stages, lr_scale), found
        return kept
