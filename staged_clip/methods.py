"""The ways an evaluation makes a prompt's image, as data: plain optimization, a bake replayed,
auto-microwaving from the other prompts' bakes; and what each renders from a start."""

from dataclasses import dataclass

from . import baked, prompts


@dataclass(frozen=True)
class Method:
    """One way of making an image: its kind ("normal", "microwave" or "auto"), whose bakes it
    replays (an estimator's: a microwave's own prompt's, auto's nearest other prompts'), how
    auto composes them ("mean" or "splice"), and the image's parametrization."""

    kind: str
    estimator: str = None
    mode: str = None
    param: str = "rgb"

    @property
    def name(self):
        """Its name in tables and JSON: normal, microwave_<estimator>, auto_<mode>."""
        return {"normal": "normal", "microwave": f"microwave_{self.estimator}", "auto": f"auto_{self.mode}"}[self.kind]


# what every method is compared with, where evaluated: plain optimization, and the original's bake replayed
BASELINES = (Method("normal"), Method("microwave", "none"))


def methods_of(estimators, auto_from, param="rgb"):
    """The methods an evaluation compares: plain optimization, each estimator's bake replayed, and
    auto-microwaving (mean and splice) from auto_from's bakes."""
    return [Method("normal", param=param), *[Method("microwave", e, param=param) for e in estimators],
            *[Method("auto", auto_from, mode, param) for mode in ("mean", "splice")]]


@dataclass(frozen=True)
class Case:
    """One prompt of an evaluation: its place in the list, its prompts.Prompt under the guide, its
    embedding under the judge [D'], its own bakes by estimator, and the nearest bakes of the other
    prompts, [(distance, bake)], that auto-microwaving composes."""

    index: int
    prompt: object
    judge_embed: object
    bakes: dict
    near: list


def recipe(method, case, shift, settings, mix):
    """What a method renders for a case: (targets [S, D], the renderer's settings, learning-rate
    multipliers [S] or None).

    Replays take their steps and multipliers from their bakes; normal optimizes toward the
    prompt for as many steps in all. mix: auto-microwave's weight of the prompt.
    """
    device = case.prompt.embed.device
    settings = settings.replace(param=method.param)
    if method.kind == "normal":
        first = next(iter(case.bakes.values()))
        total = first["config"]["steps"] * len(first["stages"])
        return (case.prompt.embed + shift)[None], settings.replace(steps=total), None
    if method.kind == "microwave":
        bake = case.bakes[method.estimator]
        return (prompts.shape_targets(bake["stages"].to(device), shift),
                settings.replace(steps=bake["config"]["steps"]), baked.scales_of([bake], device)[0])
    near = [b for _, b in case.near]
    path, scale = baked.compose_bakes(near, method.mode, device)
    return (prompts.shape_targets(prompts.lerp_unit(path, case.prompt.embed, mix), shift),
            settings.replace(steps=near[0]["config"]["steps"]), scale)
