"""The ways an evaluation makes a prompt's image, as data: plain optimization (at the reference
learning rate, at a tuned one, with a hand schedule, decaying linearly from a tuned peak, or
restarted each stage at the reference or a tuned rate), structure schedules (early stages aimed
at part of a scene, or more or fewer stages in the same steps), a bake replayed,
auto-microwaving from the other prompts' bakes; and what each renders from a start."""

import math
from dataclasses import dataclass

import torch

from . import baked, knobs

DROP_AT, DROP_BY = 0.75, 0.1  # the hand schedule (pixray-like): the learning rate / 10 for the last quarter
# the structure schedules: the knob each turns its early stages by (at weight 1: that part alone), and
# the share of the stages that are early (at least one); the stage counts tried beside restart_tuned's
STRUCTURED = {"objects_first": knobs.OBJECT, "layout_first": knobs.LAYOUT}
EARLY = 0.4
STAGE_COUNTS = (2, 10, 20)


@dataclass(frozen=True)
class Method:
    """One way of making an image: its kind, whose bakes it replays (an estimator's: a microwave's
    own prompt's, auto's nearest other prompts'), how auto composes them ("mean" or "splice"),
    the image's parametrization, and a learning rate of its own (normal_tuned's, once swept).

    Kinds: "normal" (plain optimization toward the prompt), "normal_tuned" (the same at the swept
    learning rate), "normal_drop" (the same with the learning rate divided by 10 for the last
    quarter of the steps, Adam's moments kept: pixray-like), "normal_decay_tuned" (the rate
    falling linearly to 0 over the run from a swept peak: Li, Yumer and Ramanan's budgeted
    schedule), "restart" (the prompt as every stage: Adam restarted each stage), "restart_tuned"
    (the same at a swept rate),
    "objects_first" and "layout_first" (restart_tuned with its early stages aimed at the scene's
    first object, or at the scene without its colours), "stages" (restart_tuned with `stages`
    stages in the same steps), "microwave", "shared" (a shared bake replayed for the prompt) and
    "auto".
    """

    kind: str
    estimator: str = None
    mode: str = None
    param: str = "rgb"
    lr: float = None
    stages: int = None

    @property
    def name(self):
        """Its name in tables and JSON: the plain kinds as they are, microwave_<estimator>, auto_<mode>,
        stages_<count>."""
        return {"microwave": f"microwave_{self.estimator}", "auto": f"auto_{self.mode}",
                "stages": f"stages_{self.stages}"}.get(self.kind, self.kind)


# what every method is compared with, where evaluated: plain optimization at the reference and at
# a tuned learning rate, with a hand schedule, restarted each stage, and the original's bake replayed
BASELINES = (Method("normal"), Method("normal_tuned"), Method("normal_drop"), Method("normal_decay_tuned"),
             Method("restart"), Method("restart_tuned"), Method("microwave", "none"), Method("shared"))
PLAIN = ("normal", "normal_tuned", "normal_drop", "normal_decay_tuned", "restart", "restart_tuned")  # need no bake
# each tuned baseline and the schedule its rate is swept with (tuning.sweep)
TUNED = {"normal_tuned": "normal", "normal_decay_tuned": "normal_decay", "restart_tuned": "restart"}
# the structure schedules, which need no bake and run at restart_tuned's rate
STRUCTURE = (*STRUCTURED, *(f"stages_{n}" for n in STAGE_COUNTS))
SAID = {"normal": "plain optimization at the reference learning rate",
        "normal_tuned": "plain optimization at the learning rate the guide chose on other starts",
        "normal_drop": "plain optimization, the learning rate / 10 for the last quarter of the steps, Adam's "
                       "moments kept (pixray-like; pixray restarts Adam at the drop)",
        "normal_decay_tuned": "plain optimization, the learning rate falling linearly to 0 over the run from the peak "
                              "the guide chose on other starts",
        "restart": "the prompt as every stage, Adam restarted each stage, multipliers 1",
        "restart_tuned": "the same at the learning rate the guide chose on other starts",
        "objects_first": f"restart_tuned, its first {EARLY:.0%} of stages aimed at the scene's first object alone "
                         "(\"a red circle on the left\"), the rest at the whole prompt",
        "layout_first": f"restart_tuned, its first {EARLY:.0%} of stages aimed at the prompt without its colour "
                        "words (\"a circle on the left and a square on the right\"), the rest at the whole",
        **{f"stages_{n}": f"restart_tuned's rate, {n} stages in the same steps (Adam restarted each)"
           for n in STAGE_COUNTS},
        "microwave_none": "the original-style bake replayed",
        "shared": "the shared bake (learned over another prompt list) replayed for the prompt"}


def methods_of(estimators, auto_from, param="rgb", tuned=None, shared=False, stage_counts=()):
    """The methods an evaluation compares: the plain baselines (each of TUNED at its rate in tuned,
    {name: learning rate}), the structure schedules (objects_first, layout_first, and stages_<n>
    for each n of stage_counts), a shared bake replayed (where there is one), each estimator's
    bake replayed, and auto-microwaving (mean and splice) from auto_from's bakes."""
    tuned = tuned or {}
    plain = [Method(kind, param=param, lr=tuned.get(kind)) for kind in PLAIN]
    plain += [Method(kind, param=param, lr=tuned.get("restart_tuned")) for kind in STRUCTURED]
    plain += [Method("stages", param=param, lr=tuned.get("restart_tuned"), stages=n) for n in stage_counts]
    plain += [Method("shared", param=param)] if shared else []
    return [*plain, *[Method("microwave", e, param=param) for e in estimators],
            *[Method("auto", auto_from, mode, param) for mode in ("mean", "splice")]]


def baselines_of(methods):
    """The methods (among methods) that the others are compared with."""
    names = {b.name for b in BASELINES}
    return [m for m in methods if m.name in names]


@dataclass(frozen=True)
class Case:
    """One prompt of an evaluation: its place in the list, its prompts.Prompt under the guide, its
    embedding under each judge {name: [D']}, its own bakes by estimator, the nearest bakes of
    the other prompts, [(distance, bake)], that auto-microwaving composes, its parts [S, D]
    (knobs.part_embeds), the shared bake (None: none) and its rivals under each judge, the guide
    as "guide": {name: (the rival captions' embeddings [R, D], the prompt's index)} (None: the
    prompt is outside the drawn world, see readout.py)."""

    index: int
    prompt: object
    judge_embeds: dict
    bakes: dict
    near: list
    parts: object = None
    shared: dict = None
    rivals: dict = None


def plain_recipe(kind, target, stages, steps, settings, lr=None):
    """What a plain baseline renders toward target [D] for `stages` stages of `steps` steps:
    (targets [S, D], settings, learning-rate multipliers [S] or None)."""
    total = stages * steps
    if kind in ("restart", "restart_tuned"):
        return target.expand(stages, -1), settings.replace(steps=steps, carry_moments=False, lr=lr or settings.lr), None
    if kind == "normal_drop":  # one step a stage, Adam's moments carried: plain Adam with a step-down
        drop = math.ceil(DROP_AT * total)
        scale = target.new_tensor([1.0] * drop + [DROP_BY] * (total - drop))
        return target.expand(total, -1), settings.replace(steps=1, carry_moments=True), scale
    if kind in ("normal_decay", "normal_decay_tuned"):  # the same, the rate at step t (from 0) (1 - t / total)
        scale = 1 - torch.arange(total, dtype=target.dtype, device=target.device) / total
        return target.expand(total, -1), settings.replace(steps=1, carry_moments=True, lr=lr or settings.lr), scale
    return target[None], settings.replace(steps=total, lr=lr or settings.lr), None


def split_steps(total, stages):
    """Each of `stages` stages' steps, `total` in all, as even as whole steps allow: (2, 3, 2, 3, ...)."""
    if not 0 < stages <= total:
        raise ValueError(f"{stages} stages cannot share {total} steps")
    return tuple((i + 1) * total // stages - i * total // stages for i in range(stages))


def early_stages(stages):
    """How many of `stages` stages a structure schedule aims at part of the prompt: EARLY of them, at least one."""
    return max(1, round(EARLY * stages))


def structure_recipe(method, case, shift, stages, settings):
    """What a structure schedule renders (recipe's answer) for a case whose evaluation runs `stages`
    stages of settings.steps: Adam restarted each stage at the method's rate; objects_first and
    layout_first turn their early stages all the way to their part (knobs.targets, the knob of
    STRUCTURED at 1), stages_<n> runs n stages in the same steps (split_steps)."""
    embed, own = case.prompt.embed, settings.replace(carry_moments=False, lr=method.lr or settings.lr)
    if method.kind == "stages":
        split = split_steps(stages * settings.steps, method.stages)
        return (embed + shift).expand(method.stages, -1), own.replace(steps=split[0], stage_steps=split), None
    raw = embed.new_zeros(stages, len(knobs.KNOBS))
    raw[:early_stages(stages), STRUCTURED[method.kind]] = 1
    parts = knobs.no_parts(embed, stages) if case.parts is None else case.parts[:1].expand(stages, -1, -1)
    return knobs.targets(embed.expand(stages, -1), shift, raw, parts), own, None


def recipe(method, case, shift, settings, mix):
    """What a method renders for a case: (targets [S, D], the renderer's settings, learning-rate
    multipliers [S] or None).

    Every method runs settings.steps a stage (the evaluation's replay steps); replays take their
    learning rate and knobs from their bakes; the plain baselines optimize toward the prompt for
    as many steps in all. mix: auto-microwave's weight of the prompt.
    """
    device = case.prompt.embed.device
    settings = settings.replace(param=method.param)
    first = next(iter(case.bakes.values()))
    if method.kind in (*STRUCTURED, "stages"):
        return structure_recipe(method, case, shift, len(first["stages"]), settings)
    if method.kind in PLAIN:
        return plain_recipe(method.kind, case.prompt.embed + shift, len(first["stages"]), settings.steps, settings,
                            method.lr)
    if method.kind in ("microwave", "shared"):
        bake = case.shared if method.kind == "shared" else case.bakes[method.estimator]
        stages = len(bake["stages"])
        directions = case.prompt.embed.expand(stages, -1) if knobs.is_shared(bake) else bake["stages"].to(device)
        raw = knobs.raw_of(bake, stages, device)
        targets, scale = knobs.targets(directions, shift, raw, case.parts), knobs.lr_scale(raw)
    else:
        near = [b for _, b in case.near]
        bake = near[0]
        targets, scale = baked.compose_replay(near, case.prompt, shift, method.mode, mix, case.parts)
    return targets, settings.replace(lr=bake["config"].get("lr", settings.lr)), scale
