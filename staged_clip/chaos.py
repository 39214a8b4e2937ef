"""The chaos probe: how much the staged renderer's final loss answers a small change of the
stages, against how much it varies between starts, and whether meta-gradients agree.

If perturbing the stages by sigma radians moves the final loss by about as much whatever
sigma is, down to rounding, the loss is chaotic in the stages, and no gradient through the
rollout, nor a small ES perturbation, sees more than noise. The renderer's settings
(Adam's eps, moments carried over) are what to change to make it less so.
"""

import math
import statistics

import torch
import torch.nn.functional as F

from . import es, knobs, losses, prompts, render, tasks
from .models import math_attention

def generators(seed, n, device, tag="chaos"):
    """n generators, one per start, the same for every sigma (so rows differ only in sigma)."""
    return [torch.Generator(device=device).manual_seed(es.mix_seed(seed, tag, j)) for j in range(n)]


def loss_differences(model, prompt, shift, settings, sigmas, pairs=8, seed=0):
    """For each sigma: the mean |L(stages + sigma u) - L(stages - sigma u)| over pairs, where each
    pair shares its start and cutouts, the stages sit on the prompt and u turns each stage by
    sigma radians in a random direction; and, once, the spread (standard deviation) of L
    across the starts, and their mean. Returns ({sigma: mean difference}, spread, mean loss)."""
    search = es.Search(prompt.embed, settings.stages, 0, seed)
    eps_k = torch.zeros(pairs, settings.stages, len(knobs.KNOBS), device=model.device)
    aims = tasks.Tasks.batch([tasks.task_of(model, prompt, settings.stages)] * pairs, repeat=2)
    eps = torch.randn(pairs, settings.stages, search.rank, generator=torch.Generator().manual_seed(seed))
    eps = F.normalize(eps, dim=-1).to(model.device)  # [pairs, S, k]: one unit direction per stage
    plain = settings.replace(learn_lr=False, learn_stages=True, sigma=1.0)
    found, spread, mean = {}, None, None
    for sigma in sigmas:  # normalize(p + tan(sigma) u) lies sigma radians from p
        plus, minus, _ = es.pair_losses(model, search, math.tan(sigma) * eps, eps_k, aims, shift, plain,
                                        generators(seed, pairs, model.device))
        found[sigma] = (plus - minus).abs().mean().item()
        if spread is None:
            spread = statistics.stdev(((plus + minus) / 2).tolist()) if pairs > 1 else 0.0
            mean = ((plus + minus) / 2).mean().item()
    return found, spread, mean


def pixel_gradient(model, prompt, shift, settings, seed=0):
    """The median size of a pixel's gradient at a fresh start's first step (what Adam's eps meets)."""
    g = generators(seed, 1, model.device, "pixel")[0]
    z = render.starts_from([g], settings.shape, model.device).requires_grad_()
    _, grad = render.loss_and_grad(model, z, (prompt.embed + shift)[None], settings.cutn)
    return grad.abs().median().item()


def cosines(vectors):
    """Mean cosine similarity of the rows of [n, S, ...] with each other, stage by stage, averaged."""
    flat = F.normalize(vectors.flatten(2).transpose(0, 1), dim=-1)  # [S, n, ...]
    n = flat.shape[1]
    similar = flat @ flat.transpose(1, 2)  # [S, n, n]
    return ((similar.sum((1, 2)) - similar.diagonal(dim1=1, dim2=2).sum(1)) / (n * (n - 1))).mean().item()


def unrolled_agreement(model, prompt, shift, settings, starts=4, seed=0):
    """Mean cosine, stage by stage, between exact meta-gradients of the stages (on the prompt)
    from different starts."""
    grads = []
    for j, z0 in enumerate(render.starts_from(generators(seed, starts, model.device, "unrolled"), settings.shape,
                                              model.device)):
        stages = prompt.embed.detach().expand(settings.stages, -1).clone().requires_grad_()
        with math_attention(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(es.mix_seed(seed, "draws", j))  # the cutouts of this start
            z = render.differentiable_rollout(model, z0[None], prompts.shape_targets(stages, shift), settings,
                                              renormalize=True)
            losses.bake_loss(model, z, prompt, settings.cutn).sum().backward()
        grads.append(stages.grad.detach())
    return cosines(torch.stack(grads))


def es_agreement(model, prompt, shift, settings, pairs=8, estimates=2, seed=0):
    """Mean cosine between ES estimates from disjoint sets of pairs, at the prompt: of the stage
    directions, stage by stage, and {knob: of its values over the stages} (knobs.py)."""
    search = es.Search(prompt.embed, settings.stages, settings.es_rank, seed)
    aims = tasks.Tasks.batch([tasks.task_of(model, prompt, settings.stages)] * pairs, repeat=2)
    found = []
    for k in range(estimates):
        eps_c, eps_k = search.perturbations(pairs, seed, f"agreement{k}", settings)
        plus, minus, _ = es.pair_losses(model, search, eps_c, eps_k, aims, shift, settings,
                                        generators(seed, pairs, model.device, f"agreement{k}"))
        grad_c, grad_k, _ = es.estimate(plus - minus, eps_c, eps_k, settings)
        found.append((grad_c, grad_k))
    grads_k = torch.stack([g for _, g in found])  # [estimates, S, K]
    return (cosines(torch.stack([c for c, _ in found])),
            {knob.name: cosines(grads_k[:, None, :, k]) for k, knob in enumerate(knobs.KNOBS)})


def probe(model, prompt, shift, settings, sigmas, pairs=8, seed=0):
    """Everything above for one prompt and renderer setting, as a dict."""
    differences, spread, loss = loss_differences(model, prompt, shift, settings, sigmas, pairs, seed)
    every = settings.replace(learn_stages=True, **{knob.learn: True for knob in knobs.KNOBS})
    stages, per_knob = es_agreement(model, prompt, shift, every, pairs, seed=seed)
    return {"prompt": prompt.text, "differences": differences, "spread": spread, "loss": loss,
            "pixel_gradient": pixel_gradient(model, prompt, shift, settings, seed),
            "unrolled_agreement": unrolled_agreement(model, prompt, shift, settings, seed=seed),
            "es_agreement_stages": stages, **{f"es_agreement_{name}": value for name, value in per_knob.items()}}


def probe_all(model, shift, settings, texts, sigmas, pairs=8):
    """The probe on each prompt: (the JSON's result, the markdown table)."""
    rows = []
    for text in texts:
        rows.append(probe(model, prompts.load_prompt(model, text), shift, settings, sigmas, pairs, settings.seed))
        print(f"probed {text!r}", flush=True)
    table, mean = markdown(rows, sigmas, settings)
    return {"settings": settings.config(), "rows": rows, "mean": mean}, table


def markdown(rows, sigmas, settings):
    """A table of probe rows (one per prompt) and their mean."""
    head = (f"Chaos probe: renderer {settings.size_text}, {settings.stages} x {settings.steps} steps, cutn "
            f"{settings.cutn}, inner eps {settings.inner_eps:g}, moments {'carried' if settings.carry_moments else 'reset'}"
            f" each stage, --param {settings.param}, meta views {settings.meta_views}. Mean |L(+sigma) - L(-sigma)| per sigma (radians), the mean and spread of L across starts, the "
            f"median pixel gradient, and the mean cosine between meta-gradients of different starts (unrolled) "
            f"or disjoint pairs (ES: stages, and each knob: lr multipliers, style weights, part weights).")
    cols = [f"sigma {s:g}" for s in sigmas]
    lines = [head, "", "| prompt | " + " | ".join(cols) + " | loss | spread | pixel grad | unrolled cos | ES cos stages | "
             + " | ".join(f"ES cos {knob.name}" for knob in knobs.KNOBS) + " |",
             "|---" * (len(cols) + 6 + len(knobs.KNOBS)) + "|"]

    def row(name, r):
        values = [f"{r['differences'][s]:.4f}" for s in sigmas]
        return (f"| {name} | " + " | ".join(values) + f" | {r['loss']:.4f} | {r['spread']:.4f} | {r['pixel_gradient']:.2e} | "
                f"{r['unrolled_agreement']:.2f} | {r['es_agreement_stages']:.2f} | "
                + " | ".join(f"{r['es_agreement_' + knob.name]:.2f}" for knob in knobs.KNOBS) + " |")

    for r in rows:
        lines.append(row(r["prompt"], r))
    mean = {"differences": {s: statistics.fmean(r["differences"][s] for r in rows) for s in sigmas}}
    for key in ("loss", "spread", "pixel_gradient", "unrolled_agreement", "es_agreement_stages",
                *(f"es_agreement_{knob.name}" for knob in knobs.KNOBS)):
        mean[key] = statistics.fmean(r[key] for r in rows)
    lines.append(row("**mean**", mean))
    return "\n".join(lines) + "\n", mean
