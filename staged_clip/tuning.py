"""The tuned baselines' learning rates (normal_tuned, normal_decay_tuned, restart_tuned): each
schedule swept over learning rates and judged by the guide alone, on starts (and, given its own
list, prompts) that the evaluation never scores."""

import statistics

import torch

from . import cutouts, prompts, render, scoring
from .methods import TUNED, plain_recipe
from .settings import TUNE_LRS as LRS


def sweep(model, shift, texts, settings, shape, starts, lrs=LRS, name="normal_tuned"):
    """The learning rate among lrs at which the tuned baseline `name`'s schedule (methods.TUNED:
    normal, normal_decay or restart) ends nearest the prompts under the guide.

    texts: the sweep's prompts; settings: the renderer's (size and cutouts as evaluated);
    shape: (stages, steps per stage) of the bakes, whose total the plain run takes; starts:
    per prompt, drawn from scoring.tune_seed (never an evaluation's start). Returns what the
    JSON records: {"lr", "lrs", "guide" (mean distance per lr), "prompts", "starts", "seeds"}.
    Only the guide (model) sees these images: no judge does.
    """
    stages, steps = shape
    distances = {lr: [] for lr in lrs}
    seeds = []
    for i, text in enumerate(texts):
        prompt = prompts.load_prompt(model, text)
        mine = [scoring.tune_seed(i, j) for j in range(starts)]
        seeds += mine
        batch = scoring.start_images(mine, settings.shape, model.device)  # [starts, 3, H, W], rendered together
        for lr in lrs:
            targets, renderer, scale = plain_recipe(TUNED[name], prompt.embed + shift, stages, steps, settings, lr)
            draw = cutouts.draws_from([torch.Generator(model.device).manual_seed(seed) for seed in mine])
            z = render.rollout(model, batch, targets, renderer, lr_scale=scale, draw=draw)
            distances[lr] += scoring.score(model, scoring.shown(z, settings.palette), prompt.embed).tolist()
    means = [statistics.fmean(distances[lr]) for lr in lrs]
    chosen = lrs[means.index(min(means))]
    print(f"{name}: learning rate {chosen} (guide's mean distance by rate: "
          + ", ".join(f"{lr} {m:.4f}" for lr, m in zip(lrs, means)) + ")")
    return {"lr": chosen, "lrs": list(lrs), "guide": means, "prompts": list(texts), "starts": starts, "seeds": seeds}
