"""Timing the renderer and the bake: inner steps (ours and the original's design), rollouts, meta steps, memory."""

import contextlib
import math
from dataclasses import dataclass
import platform
import random
import statistics
import time

import torch
import torch.nn.functional as F

from . import distributed, es, learners, losses, models, prompts, render, tasks
from .memory import Memory, return_freed_memory
from .settings import ORIGINAL_REPLAY_SIZE, PARAMS, SCRIPT_DEFAULTS, Settings

DEFAULTS = Settings()  # the default bake, which the bake row projects to


class Clock:
    """Wall time of a block, waiting for the device at both ends."""

    def __init__(self, device):
        self.device = device

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, work):
        self.sync()
        start = time.perf_counter()
        work()
        self.sync()
        return time.perf_counter() - start


def target_for(model):
    with torch.no_grad():
        return prompts.shape_targets(torch.randn(1, model.dim, device=model.device), prompts.style_shift(model))[0]


def median_step(clock, run, steps):
    """The median seconds per step of run(steps, tick), where tick() is called after each step."""
    marks = []

    def tick(*_):
        clock.sync()
        marks.append(time.perf_counter())

    clock.sync()
    marks.append(time.perf_counter())
    run(steps, tick)
    return statistics.median(b - a for a, b in zip(marks, marks[1:]))


def time_inner_step(model, clock, settings, repeat, warmup, batch=1):
    """Seconds per step of the plain renderer (the fast path every script uses) at settings' size and cutn."""
    target = target_for(model)[None]
    z = render.random_start(settings.shape, model.device, batch)
    z = render.rollout(model, z, target, settings.replace(steps=warmup))  # warm caches, compile
    return median_step(clock, lambda n, tick: render.rollout(model, z, target, settings.replace(steps=n),
                                                             callback=tick), repeat)


def reference_cutouts(image, side, cutn):
    """The original's cutouts: decided on the host and made one at a time."""
    if cutn == 1:
        if random.random() < 0.5:
            image = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)
        return F.adaptive_avg_pool2d(image, side)
    h = image.shape[-1]
    cuts = []
    for i in range(cutn):
        if i < round(cutn * 0.8):
            crop = int(random.uniform(min(h, side), h))
            x, y = random.randint(0, h - crop), random.randint(0, h - crop)
            cut = F.adaptive_avg_pool2d(image[:, :, y:y + crop, x:x + crop], side)
            if random.random() < 0.5:
                cut = cut.flip(-1)
            cut = cut + 0.05 * random.random() * torch.randn_like(cut)
            angle = math.radians(random.uniform(-15, 15))
        else:
            cut = F.adaptive_avg_pool2d(image, side)
            angle = math.radians(random.uniform(-10, 10))
        theta = torch.tensor([[[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]]],
                             device=image.device)
        grid = F.affine_grid(theta, list(cut.shape), align_corners=False)
        cut = F.grid_sample(cut, grid, padding_mode="reflection", align_corners=False)
        if random.random() < 0.2:
            cut = cut.mean(1, keepdim=True).expand_as(cut)
        cuts.append(cut)
    return torch.cat(cuts)


def time_reference_step(model, clock, size, cutn, repeat, warmup, precision=None):
    """Seconds per step of the original's design: weights get gradients, eager, .item() each step.

    precision: its image tower's (default: the model's, so that only the design differs).
    """
    target = target_for(model)
    net = model.model
    ours = model.precision
    model.set_precision(precision or ours)
    net.requires_grad_(True)
    patch = net.visual.conv1
    if isinstance(patch, models.PatchEmbedding):  # the original's own convolution and attention kernel
        net.visual.conv1 = patch.as_conv()
    cast = (torch.autocast(model.device.type, dtype=models.DTYPES[model.precision])
            if model.precision != "fp32" else contextlib.nullcontext())
    z = render.random_start(size, model.device).requires_grad_()
    optimizer = torch.optim.AdamW([z], lr=DEFAULTS.lr)  # only z: CLIP's gradients pile up, as there

    def steps(n, tick=None):
        for _ in range(n):
            optimizer.zero_grad()
            cuts = reference_cutouts(z, model.size, cutn)  # the original feeds raw z to CLIP
            with cast:
                embeds = F.normalize(net.encode_image(cuts).float(), dim=-1)
            loss = (losses.spherical_distance(embeds, target).mean()
                    + (z - z.clamp(-1, 1)).pow(2).mean() + losses.TV_WEIGHT * losses.total_variation(z).sum()
                    + losses.STD_WEIGHT * (z.std() - 1).pow(2))
            loss.backward()
            optimizer.step()
            loss.item()  # the original shows the loss every step
            if tick is not None:
                tick()

    try:
        steps(warmup)
        return median_step(clock, steps, repeat)
    finally:
        net.visual.conv1 = patch
        model.set_precision(ours)
        net.requires_grad_(False)
        for p in net.parameters():
            p.grad = None


def time_unrolled_step(model, clock, settings):
    """Seconds per differentiable inner step: its forward and its share of the backward."""
    stages = torch.randn(1, model.dim, device=model.device, requires_grad=True)
    shift = prompts.style_shift(model)

    def run(n):
        with models.math_attention():
            z = render.random_start(settings.shape, model.device, settings.batch).requires_grad_()
            z = render.differentiable_rollout(model, z, prompts.shape_targets(stages, shift),
                                              settings.replace(steps=n, checkpoint=False))
            losses.bake_loss(model, z, prompts.Prompt("", "text", F.normalize(stages[0].detach(), dim=-1)),
                             settings.cutn).sum().backward()

    run(1)
    return clock.time(lambda: run(settings.steps)) / settings.steps


def time_meta_step(model, clock, memory, settings, tune_malloc=False):
    """Seconds of one meta step (after an untimed one), and its peak memory in bytes.

    The peak (None where unmeasurable) comes from a third meta step, run after the
    timing: on a GPU it starts from an empty allocator cache; on a CPU, measuring
    resident size needs glibc to return freed memory at once (tune_malloc), which slows
    allocation.
    """
    prompt = prompts.Prompt("", "text", F.normalize(torch.randn(model.dim, device=model.device), dim=-1))
    stages = torch.randn(settings.stages, model.dim, device=model.device, requires_grad=True)
    optimizer = torch.optim.AdamW([stages], lr=settings.meta_lr)
    shift = prompts.style_shift(model)

    def step():
        learners.meta_step(model, stages, optimizer, prompt, shift, settings, 0.0, differentiate=True)

    step()  # warm: kernels chosen, caches filled
    seconds = clock.time(step)
    if model.device.type == "cpu" and tune_malloc:
        return_freed_memory()
    return seconds, memory.measure(step)


def time_es_meta_step(model, clock, memory, settings, tune_malloc=False):
    """Seconds of one ES meta step (after an untimed one) and its peak memory, beside the peak of a
    plain rollout of one batch of the population (the pairs of one chunk, + and -): (s, peak, batch peak)."""
    prompt = prompts.Prompt("", "text", F.normalize(torch.randn(model.dim, device=model.device), dim=-1))
    shift = prompts.style_shift(model)
    search = es.Search(prompt.embed, settings.stages, settings.es_rank, settings.seed or 0)
    optimizer = search.optimizer(settings)
    steps = iter(range(10**9))

    task = tasks.Task(prompt, prompt.embed.expand(settings.stages, -1))
    aims = tasks.Tasks([task], [task])

    def step():
        es.meta_step(model, search, optimizer, aims, shift, settings, next(steps), 0.0)

    pairs = len(distributed.chunks(settings.population, settings.es_chunk)[0])
    targets = target_for(model).expand(settings.stages, -1)

    def batch():
        render.rollout(model, render.random_start(settings.shape, model.device, 2 * pairs), targets, settings)

    step()
    seconds = clock.time(step)
    if model.device.type == "cpu" and tune_malloc:
        return_freed_memory()
    batch_peak = memory.measure(batch)  # first: on a CPU, what the step leaves in the heap would hide it
    return seconds, memory.measure(step), batch_peak


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def gib(n):
    return None if n is None else n / 2**30


def row(what, seconds, note="", **extra):
    """One row of the benchmark: what (a label), ms, a note, and extras."""
    return {"what": what, "ms": seconds * 1000, "note": note, **extra}


@dataclass(frozen=True)
class Options:
    """How to measure: timed inner steps per row (their median is shown), untimed ones before
    each row, the original's design timed beside ours (at reference_precision; None: the
    model's), glibc told to return freed memory (a CPU's peak needs it), the inner steps only."""

    repeat: int = 20
    warmup: int = 3
    reference: bool = False
    reference_precision: str = None
    tune_malloc: bool = False
    inner_only: bool = False


def measure(model, settings, options):
    """The benchmark's rows, one at a time (row's dicts).

    Inner steps at each script's defaults (with the original design's beside them where
    asked) and per parametrization; then (unless options.inner_only) a batch row when
    settings.batch > 1, a normal.py run, a rollout, an unrolled step, a meta step with its
    peak memory and the default bake projected from it, and the same for an ES bake.
    """
    clock, memory = Clock(model.device), Memory(model.device)
    inner = {}  # seconds per inner step, by script
    yield from inner_rows(model, settings, options, clock, inner)
    if options.inner_only:
        return
    yield from rollout_rows(model, settings, options, clock, inner)
    yield from unrolled_rows(model, settings, options, clock, memory)
    yield from es_rows(model, settings, options, clock, memory)


def inner_rows(model, settings, options, clock, inner):
    """Rows of inner steps: at each script's defaults (recording each in inner), then per parametrization."""
    for script, defaults in SCRIPT_DEFAULTS.items():
        size, cutn = defaults["size"] or ORIGINAL_REPLAY_SIZE, defaults["cutn"]  # None: its bakes' (the original's 128)
        ours = inner[script] = time_inner_step(model, clock, settings.replace(size=size, cutn=cutn), options.repeat,
                                               options.warmup)
        note, extra = "", {}
        if options.reference:
            theirs = time_reference_step(model, clock, size, cutn, options.repeat, options.warmup,
                                         options.reference_precision)
            note = f"the original's design {theirs * 1000:.1f} ms: {theirs / ours:.1f}x faster"
            extra = {"reference_ms": theirs * 1000, "speedup": theirs / ours}
        yield row(f"inner step, {script} ({size} px, cutn {cutn}, batch 1)", ours, note, **extra)
    size, cutn = SCRIPT_DEFAULTS["bake.py"]["size"], SCRIPT_DEFAULTS["bake.py"]["cutn"]
    at_bake = settings.replace(size=size, cutn=cutn)
    rgb = time_inner_step(model, clock, at_bake.replace(param="rgb"), options.repeat, options.warmup)  # beside them
    for param in PARAMS[1:]:
        seconds = time_inner_step(model, clock, at_bake.replace(param=param), options.repeat, options.warmup)
        yield row(f"inner step, bake.py ({size} px, cutn {cutn}), --param {param}", seconds,
                  f"{seconds / rgb:.2f}x rgb's {rgb * 1000:.1f} ms", rgb_ms=rgb * 1000)


def rollout_rows(model, settings, options, clock, inner):
    """Rows of a batch's inner step (where settings.batch > 1), a normal.py run and a rollout."""
    if settings.batch > 1:
        seconds = time_inner_step(model, clock, settings, options.repeat, options.warmup, settings.batch)
        yield row(f"inner step, {settings.size_text}, cutn {settings.cutn}, batch {settings.batch}", seconds,
                  f"{seconds * 1000 / settings.batch:.1f} ms per start")
    normal = settings.replace(**SCRIPT_DEFAULTS["normal.py"])
    step = inner["normal.py"]
    if step * normal.steps < 30:  # measured where it is quick, projected from the inner step where not
        run = clock.time(lambda: render.rollout(model, render.random_start(normal.shape, model.device),
                                                target_for(model)[None], normal))
        yield row(f"normal.py run, {normal.steps} steps ({normal.size_text}, cutn {normal.cutn})", run)
    else:
        yield row(f"normal.py run, {normal.steps} steps ({normal.size_text}, cutn {normal.cutn}) (projected)",
                  step * normal.steps, f"= inner step x {normal.steps}")
    seconds = clock.time(lambda: render.rollout(model, render.random_start(settings.shape, model.device),
                                                target_for(model).expand(settings.stages, -1), settings))
    yield row(f"rollout, {settings.stages} stages x {settings.steps} steps ({settings.size_text}, "
              f"cutn {settings.cutn})", seconds)


def unrolled_rows(model, settings, options, clock, memory):
    """Rows of an unrolled inner step, an unrolled meta step and its peak memory, and the default
    unrolled bake projected from it."""
    unrolled = time_unrolled_step(model, clock, settings)
    yield row(f"unrolled inner step ({settings.size_text}, cutn {settings.cutn}, batch {settings.batch}), "
              f"with backward", unrolled)
    meta, peak = time_meta_step(model, clock, memory, settings.replace(meta_grad="unrolled"), options.tune_malloc)
    how = f"batch {settings.batch}" + (", checkpointed" if settings.checkpoint else "")
    yield row(f"meta step, {settings.stages} x {settings.steps} unrolled ({how})", meta,
              f"peak memory {gib(peak):.2f} GiB" if peak is not None else "peak memory not measurable here",
              peak_gib=gib(peak))
    scale = DEFAULTS.stages * DEFAULTS.steps / (settings.stages * settings.steps)
    projected = row(f"bake, {settings.meta_steps} meta steps of {DEFAULTS.stages} x {DEFAULTS.steps}"
                    + (" (projected)" if scale != 1 else ""), meta * scale * settings.meta_steps,
                    f"= meta step x {scale:g} x {settings.meta_steps}" if scale != 1
                    else f"= meta step x {settings.meta_steps}")
    if peak is not None and scale != 1:  # the graph grows with the steps it holds at once
        held = DEFAULTS.steps / settings.steps if settings.checkpoint else scale
        projected["peak_gib_projected"] = gib(peak) * held
        projected["peak_note"] = f"= meta step's peak x {held:g} (the steps held at once; an upper bound)"
    yield projected


def es_rows(model, settings, options, clock, memory):
    """Rows of an ES meta step with its peak memory beside a plain rollout's, and the default ES
    bake projected from it with its validations."""
    es_settings = settings.replace(meta_grad="es")
    seconds, peak, batch_peak = time_es_meta_step(model, clock, memory, es_settings, options.tune_malloc)
    pairs = len(distributed.chunks(es_settings.population, es_settings.es_chunk)[0])
    note = (f"peak memory {gib(peak):.2f} GiB, {peak / batch_peak:.1f}x a plain rollout of {2 * pairs} images "
            f"({gib(batch_peak):.2f} GiB)" if peak is not None and batch_peak else "peak memory not measurable here")
    yield row(f"ES meta step, {settings.stages} x {settings.steps}, {es_settings.population} pairs "
              f"(batches of {2 * pairs})", seconds, note, peak_gib=gib(peak), batch_peak_gib=gib(batch_peak))
    # a validation rolls out validation_starts images where a meta step rolls out 2 x population
    gate_every = learners.learner_of(es_settings).gate(es_settings)
    validations = 1 + settings.meta_steps // gate_every if gate_every else 0
    per_validation = es_settings.validation_starts / (2 * es_settings.population)
    total = settings.meta_steps + validations * per_validation
    scale = DEFAULTS.stages * DEFAULTS.steps / (settings.stages * settings.steps)
    yield row(f"ES bake, {settings.meta_steps} meta steps of {DEFAULTS.stages} x {DEFAULTS.steps}"
              + (" (projected)" if scale != 1 else ""), seconds * scale * total,
              f"= ES meta step x {scale:g} x ({settings.meta_steps} + {validations} validations x "
              f"{per_validation:g}); peak memory as one meta step's")
