"""What a bake aims at: one prompt, or for a shared bake a prompt list, split into the prompts its
pairs are drawn on and the held-out prompts its gate validates on."""

import random
from dataclasses import dataclass

import torch

from . import knobs, prompts
from .es import mix_seed
from .errors import UserError

VALIDATION_SHARE = 0.2  # of a shared bake's prompts, held out for its gate (at least one)


@dataclass(frozen=True)
class Task:
    """One prompt a rollout aims at: its prompts.Prompt and its parts' embeddings [S, P, D] (knobs.part_embeds)."""

    prompt: object
    parts: object


def task_of(model, prompt, stages):
    """The Task of a prompts.Prompt for a bake of `stages` stages."""
    parts = knobs.part_embeds(model, prompt, stages) if prompt.kind == "text" else None
    return Task(prompt, knobs.no_parts(prompt.embed, stages) if parts is None else parts)


@dataclass(frozen=True)
class Tasks:
    """The tasks of a bake: those its ES pairs are drawn on, those its gate validates on, and
    whether it is shared (learned over a list: no stage directions of its own)."""

    training: list
    validation: list
    shared: bool = False

    @classmethod
    def single(cls, model, prompt, stages):
        """One prompt's bake: it trains and validates on its own prompt."""
        task = task_of(model, prompt, stages)
        return cls([task], [task])

    @classmethod
    def of_list(cls, model, texts, stages, seed):
        """A shared bake over texts: a share of them (VALIDATION_SHARE, at least one), drawn by
        seed, held out for the gate; the rest for the pairs. Text prompts only."""
        if len(texts) < 2:
            raise UserError("a shared bake (--prompts) needs at least two prompts: one to learn from, one to "
                            "validate on")
        images = [t for t in texts if prompts.is_image_path(t)]
        if images:
            raise UserError(f"a shared bake takes text prompts only, not images such as {images[0]!r}: bake an "
                            f"image prompt with bake.py IMAGE")
        held = set(random.Random(seed).sample(range(len(texts)), max(1, round(VALIDATION_SHARE * len(texts)))))
        tasks = [task_of(model, prompts.load_prompt(model, t), stages) for t in texts]
        return cls([t for i, t in enumerate(tasks) if i not in held], [t for i, t in enumerate(tasks) if i in held],
                   shared=True)

    @property
    def prompt(self):
        """The prompt of a single prompt's bake."""
        assert not self.shared
        return self.training[0].prompt

    def of_pairs(self, seed, step, pairs):
        """The training task of each pair of meta step `step`: drawn from its own seed, so the same
        in every process and whatever else shares its batch."""
        return [self.training[mix_seed(seed, step, j, "prompt") % len(self.training)] for j in pairs]

    def of_starts(self, starts):
        """The validation task of each validation start: the held-out prompts in turn."""
        return [self.validation[v % len(self.validation)] for v in starts]

    @staticmethod
    def batch(tasks, repeat=1):
        """Tasks as one batch, repeated `repeat` times: (a prompts.Prompt whose embed is [n, D] and image
        [n, 3, R, R] or None, parts [n, S, P, D])."""
        first = tasks[0].prompt
        embeds = torch.stack([t.prompt.embed for t in tasks] * repeat)
        image = None if first.image is None else torch.cat([t.prompt.image for t in tasks] * repeat)
        return prompts.Prompt(first.text, first.kind, embeds, image), torch.stack([t.parts for t in tasks] * repeat)
