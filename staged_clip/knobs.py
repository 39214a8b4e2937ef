"""The per-stage renderer knobs a bake may learn beside its stage directions, and how a stage's
target and learning rate are made of them.

Each knob is one number a stage, searched by ES as a raw value whose neutral is 0:
  lr:    the stage's learning rate is the base rate x exp(raw) (file: lr_scale);
  style: the style shift added to the stage's target is scaled by exp(raw) (file: style_scale);
  part:  the stage's direction is turned towards a part of the prompt by clamp(raw, 0, 1)
         (file: part_weight). Stage i of S takes the first ceil((i + 1) n / S) words of an
         n-word prompt, so early stages aim at its beginning ("a red" of "a red circle on the
         left": the colour), later ones at more of it, the last at all of it;
  object: the same towards the first object the prompt names (structure.parts: "a red circle
         on the left" of "a red circle on the left and a blue square on the right"; a prompt
         naming one thing is its own) (file: object_weight);
  layout: the same towards the prompt without its colour words (structure.layout: "a circle
         on the left and a square on the right") (file: layout_weight).
The three turns apply in that order, each from where the last left the direction; at weight 0
a turn changes nothing, and at 1 the stage aims at that part alone.
A shared bake (learned over a prompt list) is its knobs alone: each stage's direction is the
prompt's own, whatever the prompt.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import prompts, structure
from .errors import UserError


@dataclass(frozen=True)
class Knob:
    """One knob: its name, its key in a baked file, the Settings fields of its perturbation's
    size and of whether it is learned, and whether its value is exp(raw) (else clamp(raw, 0, 1))."""

    name: str
    key: str
    sigma: str
    learn: str
    exponential: bool

    def value(self, raw):
        return raw.exp() if self.exponential else raw.clamp(0, 1)

    def raw(self, value):
        return value.log() if self.exponential else value


KNOBS = (Knob("lr", "lr_scale", "lr_sigma", "learn_lr", True),
         Knob("style", "style_scale", "style_sigma", "learn_style", True),
         Knob("part", "part_weight", "part_sigma", "learn_part", False),
         Knob("object", "object_weight", "object_sigma", "learn_object", False),
         Knob("layout", "layout_weight", "layout_sigma", "learn_layout", False))
LR, STYLE, PART, OBJECT, LAYOUT = range(len(KNOBS))  # columns of a raw tensor [..., S, K]
TURNS = (PART, OBJECT, LAYOUT)  # the knobs that turn a stage towards a part: parts' columns [..., S, P, D]


def learned(settings):
    """Which knobs settings learn: [K] booleans."""
    return [bool(getattr(settings, knob.learn)) for knob in KNOBS]


def sigmas(settings, device=None):
    """Each knob's perturbation size: [K]."""
    return torch.tensor([getattr(settings, knob.sigma) for knob in KNOBS], device=device)


def values(raw):
    """{file key: values [..., S]} of raw knobs [..., S, K]."""
    return {knob.key: knob.value(raw[..., k]) for k, knob in enumerate(KNOBS)}


def raw_of(bake, stages, device=None):
    """The raw knobs [S, K] a baked file records (neutral where it records none)."""
    raw = torch.zeros(stages, len(KNOBS), device=device)
    for k, knob in enumerate(KNOBS):
        if bake.get(knob.key) is not None:
            raw[:, k] = knob.raw(bake[knob.key].to(device).float())
    return raw


def lr_scale(raw):
    """The learning-rate multipliers [..., S] of raw knobs, or None where they are all 1."""
    column = raw[..., LR]
    return None if not column.any() else column.exp()


def prefix_parts(text, stages):
    """The part of a text prompt each stage aims at with the part knob: S word prefixes, the last
    the whole prompt; None for an image prompt or weighted parts, which have no word order."""
    if prompts.is_image_path(text) or "|" in text or prompts.COLON.search(text):
        return None
    words = text.split()
    return [" ".join(words[:math.ceil((i + 1) * len(words) / stages)]) for i in range(stages)]


def no_parts(embed, stages):
    """The parts [S, P, D] of a prompt that has none to aim at (an image, weighted parts): its own
    embedding [D], for every stage and turn."""
    return embed.expand(stages, len(TURNS), -1)


def part_embeds(model, prompt, stages):
    """Unit embeddings [S, P, D] of what each stage may turn towards, a column per knob of TURNS:
    its word prefix, the prompt's first object, its colourless layout (a prompts.Prompt's own
    embedding where it has no words to split)."""
    prefixes = prefix_parts(prompt.text, stages)
    if prefixes is None:
        return no_parts(prompt.embed, stages)
    texts = [*prefixes, structure.parts(prompt.text)[0], structure.layout(prompt.text)]
    embeds = prompts.embed_texts(model, texts)
    return torch.stack([embeds[:stages], embeds[stages].expand(stages, -1), embeds[stages + 1].expand(stages, -1)], 1)


def turns(raw):
    """Whether raw knobs [..., S, K] turn any stage towards a part."""
    return bool(raw[..., list(TURNS)].any())


def targets(stages, shift, raw, parts=None):
    """Targets [..., S, D] of unit stage directions [..., S, D] under raw knobs [..., S, K]:
    each direction turned towards its parts (parts [..., S, P, D], part_embeds) by each knob of
    TURNS in turn, then the style shift [D] added, scaled by the style knob."""
    directions = F.normalize(stages, dim=-1)
    for column, k in enumerate(TURNS):
        weight = KNOBS[k].value(raw[..., k])[..., None]
        if parts is not None and bool((weight > 0).any()):
            toward = F.normalize(parts[..., column, :], dim=-1)
            directions = F.normalize(torch.lerp(directions, toward, weight), dim=-1)
    return directions + shift * KNOBS[STYLE].value(raw[..., STYLE])[..., None]


def batch_targets(stages, embeds, shift, raw, parts):
    """Targets [S, n, D] of a batch of n rollouts, as render.rollout takes them: stages [n, S, D] or
    [S, D] (None: each rollout's own prompt, embeds [n, D], as every stage), raw knobs [n, S, K]
    or [S, K], parts [n, S, P, D]."""
    n, s = parts.shape[:2]
    if stages is None:
        stages = embeds[:, None].expand(-1, s, -1)
    return targets(stages.expand(n, s, -1), shift, raw.expand(n, s, -1), parts).transpose(0, 1)


def is_shared(bake):
    """Whether a baked file is a shared bake (learned over a prompt list: knobs, no directions)."""
    return bake.get("kind") == "shared"


def check_replay(bake, has_prompt):
    """Refuse to replay a shared bake without a prompt to replay it for."""
    if is_shared(bake) and not has_prompt:
        raise UserError(f"{bake['path']} is a shared bake, learned over many prompts: give the prompt to "
                        f"replay it for, e.g. microwave.py \"a red apple\" {bake['path']}")


def replay(model, bake, shift, prompt=None, mix=0.5):
    """What replaying a baked file renders: (targets [S, D], learning-rate multipliers [S] or None).

    A prompt's bake replays its stages, turned towards prompt (a prompts.Prompt) by mix where one
    is given; a shared bake replays the prompt itself as every stage, so it needs one. Either way
    the file's knobs apply (its parts are those of the prompt it is replayed for, or its own).
    """
    stages = len(bake["stages"])
    raw = raw_of(bake, stages, model.device)
    check_replay(bake, prompt is not None)
    if is_shared(bake):
        directions, subject = prompt.embed.expand(stages, -1), prompt
    else:
        directions = bake["stages"].to(model.device)
        if prompt is not None:
            directions = prompts.lerp_unit(directions, prompt.embed, mix)
        subject = prompt
    parts = None
    if turns(raw):
        if subject is None and bake["prompt_type"] == "text":
            subject = prompts.load_prompt(model, bake["prompt"])
        if subject is not None and subject.kind == "text":
            parts = part_embeds(model, subject, stages)
    return targets(directions, shift, raw, parts), lr_scale(raw)
