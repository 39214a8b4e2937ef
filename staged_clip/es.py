"""The bake's evolution-strategies estimator: antithetic pairs of plain rollouts, each pair
sharing its start and its cutouts.

The exact meta-gradient through the staged renderer is chaotic (rounding alone moves the
final image; one start's gradient says little about another's), so instead of
differentiating through the rollout this estimates the gradient of the meta-loss smoothed
by Gaussian perturbations, from pairs L(theta + sigma eps) and L(theta - sigma eps) with
common random numbers (Salimans et al. 2017; Metz et al., ICML 2019, "Understanding and
correcting pathologies in the training of learned optimizers"; Metz et al. 2021, "Gradients
are not all you need"). A pair is two plain rollouts: no double backward, so fused Adam,
lower precision and compiling apply, and the population is one batch.
"""

import hashlib
import math

import torch
import torch.nn.functional as F

from . import cutouts, distributed, knobs, losses, output, render
from .errors import UserError, log

CLIP_AT = 3.0  # pair differences are clipped to this many times their median size


def mix_seed(*parts):
    """A seed below 2**61 from parts, the same in every process and run.

    E.g. mix_seed(7, 12, 3): pair 3's start and cutouts in meta step 12 of a bake of seed 7.
    """
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**61


class Search:
    """What an ES bake learns: stage directions around a prompt p, and per-stage knobs (knobs.py).

    Stage i is normalize(p + basis @ coef[i]): basis [D, k] is orthonormal and orthogonal to
    p, with k = D - 1 (every direction) or rank (a fixed random subspace, the same for every
    stage); coef [S, k] starts at 0, so the stages start on the prompt. A shared search
    (prompt_embed None) has no directions: each rollout's stages are its own prompt. The raw
    knobs, one tensor [S] each (the log learning-rate multipliers first), start at raw (or 0,
    neutral). A perturbation eps moves coef by sigma * eps with eps of variance 1 / k per
    coordinate (so basis @ eps has length about 1: about sigma radians), and knob k by its
    sigma (lr_sigma, ...) times a unit normal.
    """

    def __init__(self, prompt_embed, stages, rank=0, seed=0, raw=None):
        self.knob_tensors = [torch.zeros(stages) for _ in knobs.KNOBS] if raw is None else \
            [column.detach().float().cpu().clone() for column in raw.unbind(-1)]
        if prompt_embed is None:  # shared: knobs alone
            self.prompt, self.basis, self.coef = None, None, torch.zeros(stages, 0)
            return
        p = F.normalize(prompt_embed.detach().double().cpu(), dim=-1)
        dim = p.shape[0]
        k = dim - 1 if not rank else min(rank, dim - 1)
        a = torch.randn(dim, k, generator=torch.Generator().manual_seed(mix_seed(seed, "basis")), dtype=torch.float64)
        a -= p[:, None] * (p @ a)[None]  # orthogonal to p
        device = prompt_embed.device
        self.prompt = p.float().to(device)
        self.basis = torch.linalg.qr(a).Q.float().to(device)  # [D, k]
        self.coef = torch.zeros(stages, k, device=device)
        self.knob_tensors = [t.to(device) for t in self.knob_tensors]

    @property
    def rank(self):
        return self.coef.shape[1]

    @property
    def log_lr(self):
        """The log learning-rate multipliers [S]."""
        return self.knob_tensors[knobs.LR]

    @log_lr.setter
    def log_lr(self, value):
        self.knob_tensors[knobs.LR] = value

    @property
    def knobs(self):
        """The raw knobs [S, K]."""
        return torch.stack(self.knob_tensors, -1)

    def stages(self, coef=None):
        """Unit stage directions [..., S, D] of coefficients [..., S, k] (default: the current ones);
        None for a shared search."""
        if self.prompt is None:
            return None
        coef = self.coef if coef is None else coef
        return F.normalize(self.prompt + coef @ self.basis.T, dim=-1)

    def lr_scale(self, log_lr=None):
        """The learning-rate multipliers [S] (default: the current ones)."""
        return (self.log_lr if log_lr is None else log_lr).exp()

    def perturbations(self, n, seed, step, settings):
        """n perturbations of meta step `step`: (eps of coef [n, S, k], eps of the raw knobs [n, S, K]).

        Drawn from one seed in every process; what is not learned stays 0.
        """
        g = torch.Generator().manual_seed(mix_seed(seed, step, "perturb"))
        s, k = self.coef.shape
        eps_c = torch.randn(n, s, k, generator=g) / math.sqrt(max(k, 1))
        eps_k = torch.randn(n, s, knobs.OBJECT, generator=g)  # the first knobs' draws as before the structure knobs
        eps_k = torch.cat([eps_k, torch.randn(n, s, len(knobs.KNOBS) - knobs.OBJECT, generator=g)], -1)
        eps_k *= torch.tensor(knobs.learned(settings), dtype=eps_k.dtype)
        device = self.coef.device
        return (eps_c if settings.learn_stages else torch.zeros_like(eps_c)).to(device), eps_k.to(device)

    def optimizer(self, settings):
        """Adam on coef and each knob, its steps in units of each one's perturbation: about
        es_lr * sigma radians a meta step for a stage, es_lr * lr_sigma for a log multiplier."""
        groups = [{"params": [self.coef], "lr": settings.es_lr * settings.sigma / math.sqrt(max(self.rank, 1))}]
        groups += [{"params": [tensor], "lr": settings.es_lr * getattr(settings, knob.sigma)}
                   for knob, tensor in zip(knobs.KNOBS, self.knob_tensors)]
        return torch.optim.Adam(groups)


def replay_losses(model, generators, targets, settings, prompt, lr_scale=None, repeat=1):
    """The bake's loss of the final images of rollouts from seeded starts: (losses [repeat * n], images).

    Image j's start and its cutouts at every step come from generators[j] alone (so not from
    what else shares the batch); the batch is the n starts repeated `repeat` times, each
    repeat seeing the same cutouts (an ES pair's + and -). targets and lr_scale as
    render.rollout takes them; prompt.embed [D] or one per image [repeat * n, D]. The final
    images are seen through settings.meta_views views of the image as saved (quantized, or
    in its palette), drawn after the rollout from the same generators; with 0, through the
    inner loop's settings.cutn cutouts of the unquantized image (the bakes before views).
    """
    starts = render.starts_from(generators, settings.shape, model.device)
    draw = cutouts.draws_from(generators, repeat)
    z = render.rollout(model, torch.cat([starts] * repeat), targets, settings, lr_scale=lr_scale, draw=draw)
    views = settings.meta_views or settings.cutn
    with torch.no_grad():
        found = losses.bake_loss(model, z, prompt, views, draw(len(z), views, z.shape[-2:], model.size, model.device),
                                 look=output.saved_look(settings.palette) if settings.meta_views else None)
    return found, z


def pair_losses(model, search, eps_c, eps_k, aims, shift, settings, generators):
    """Final-image losses of the pairs whose generators are given: (L+ [n], L- [n], one final image).

    Pair j's + and - rollouts start from the same image, aim at the same prompt and see the
    same cutouts and views, all drawn from generators[j] alone; the population is one batch
    [+..., -...]. aims: what the 2n rollouts aim at, (a prompts.Prompt whose embed is
    [2n, D], their parts [2n, S, P, D]) as tasks.Tasks.batch makes them.
    """
    n = len(generators)
    coef = torch.cat([search.coef + settings.sigma * eps_c, search.coef - settings.sigma * eps_c])  # [2n, S, k]
    step_k = knobs.sigmas(settings, eps_k.device) * eps_k
    raw = torch.cat([search.knobs + step_k, search.knobs - step_k])  # [2n, S, K]
    prompt, parts = aims
    targets = knobs.batch_targets(search.stages(coef), prompt.embed, shift, raw, parts)  # [S, 2n, D]
    lr_scale = knobs.lr_scale(raw)  # [2n, S] or None
    final, z = replay_losses(model, generators, targets, settings, prompt,
                             None if lr_scale is None else lr_scale.T, repeat=2)
    return final[:n], final[n:], z[:1]


def estimate(diff, eps_c, eps_k, settings):
    """The smoothed loss's gradient from pair differences diff = L+ - L- [n]:
    (gradient of coef [S, k], of the raw knobs [S, K], pairs used).

    For eps ~ N(0, C), E[(L(theta + sigma eps) - L(theta - sigma eps)) eps] is about
    2 sigma C grad L, so grad L = C^-1 mean(diff eps) / (2 sigma). Non-finite pairs are
    dropped, and the rest clipped to CLIP_AT times their median size: the chaotic
    renderer's differences have heavy tails (a pair whose image flips), which would decide
    a step alone. Clipping, unlike rank shaping, keeps each difference's sign and, where it
    is typical, its size, so the estimate stays one of the smoothed gradient.
    """
    ok = torch.isfinite(diff)
    if not ok.any():
        return None
    d = diff[ok]
    bound = CLIP_AT * d.abs().median()
    d = d.clamp(-bound, bound) if bound > 0 else d
    k = eps_c.shape[-1]
    grad_c = k * (d.view(-1, 1, 1) * eps_c[ok]).mean(0) / (2 * settings.sigma)
    grad_k = (d.view(-1, 1, 1) * eps_k[ok]).mean(0) / (2 * knobs.sigmas(settings, d.device))
    return grad_c, grad_k, int(ok.sum())


def population_losses(model, search, eps_c, eps_k, tasks, shift, settings, step):
    """L+ and L- of every pair of meta step `step`, this process rolling out its chunks, each pair
    aiming at the prompt tasks (a tasks.Tasks) draws for it:
    ([n, 2] in every process, one final image of this process's, the settings to go on with).

    Out of GPU memory, the chunks are halved until they fit (saying so once); the settings
    come back with that smaller es_chunk, for the bake's later meta steps (--es-chunk sets
    it for the next run).
    """
    n = settings.population
    values = torch.full((n, 2), float("nan"), device=model.device)
    mine, image = [], None
    while True:
        try:
            for chunk in distributed.chunks(n, settings.es_chunk):
                chunk = [j for j in chunk if j not in mine]  # after a halving, what is left
                if not chunk:
                    continue
                generators = [torch.Generator(device=model.device).manual_seed(mix_seed(settings.seed, step, j))
                              for j in chunk]
                aims = tasks.batch(tasks.of_pairs(settings.seed, step, chunk), repeat=2)
                plus, minus, z = pair_losses(model, search, eps_c[chunk], eps_k[chunk], aims, shift, settings,
                                             generators)
                values[chunk] = torch.stack([plus, minus], 1)
                mine += chunk
                image = z if image is None else image
            break
        except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError from torch 2.5
            done = len(distributed.chunks(n, settings.es_chunk)[0])
            if done == 1:
                raise
            settings = settings.replace(es_chunk=max(1, done // 2))
            torch.cuda.empty_cache()
            log(f"out of GPU memory rolling out {done} pairs at once: {settings.es_chunk} at a time from now "
                f"(--es-chunk {settings.es_chunk} sets it)")
    return distributed.gather(values, mine), image, settings


def meta_step(model, search, optimizer, tasks, shift, settings, step, progress):
    """One ES meta step: roll out the population, estimate the gradient, update the search.

    The fading 'stay near the prompt' term's gradient (a prompt's bake only) is exact
    (autograd), added to the estimate. Returns (meta loss: the pairs' mean loss plus that term, a final image, the
    settings to go on with: see population_losses).
    """
    eps_c, eps_k = search.perturbations(settings.population, settings.seed, step, settings)
    values, image, settings = population_losses(model, search, eps_c, eps_k, tasks, shift, settings, step)
    found = estimate(values[:, 0] - values[:, 1], eps_c, eps_k, settings)
    if found is None:
        raise UserError("every pair's loss was NaN: lower --lr or --sigma")
    grad_c, grad_k, _ = found
    regularizer = torch.zeros(())
    if search.prompt is not None:
        coef = search.coef.detach().requires_grad_()
        regularizer = settings.stage_reg * losses.stage_regularizer(search.stages(coef), tasks.prompt.embed,
                                                                    progress)
        if regularizer.requires_grad:
            grad_c = grad_c + torch.autograd.grad(regularizer, coef)[0]
    optimizer.zero_grad(set_to_none=True)
    search.coef.grad = grad_c if settings.learn_stages else torch.zeros_like(grad_c)
    for k, tensor in enumerate(search.knob_tensors):
        tensor.grad = grad_k[:, k].to(tensor.device)
    optimizer.step()
    finite = values[torch.isfinite(values).all(1)]
    return float(finite.mean() + regularizer.detach()), image, settings
