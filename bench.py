#!/usr/bin/env python3
"""Time the renderer and the bake: inner steps, an unrolled step, a rollout, a meta step.

Prints a table (and writes JSON with --json): one inner step at each script's defaults,
one differentiable (unrolled) inner step, one rollout, one meta step, the projected
default bake, and peak memory. --reference-design also times the reference's inner step
(CLIP's weights receiving gradients, cutouts made one by one, a .item() every step) in
the same run. Speed does not depend on weight values, so random:ViT-B/32 (the real
architecture with random weights, built offline) stands in for ViT-B/32.

Examples:
  python bench.py --device cuda --json bench.json
  python bench.py --device cpu --repeat 3 --stages 2 --steps 3 --reference-design
  python bench.py --device cpu --precision bf16 --reference-design --reference-precision fp32
"""

import contextlib
import json
import math
import platform
import random
import statistics
import time

import torch
import torch.nn.functional as F

import common

# (script, image side, cutouts) at each script's defaults
SCRIPTS = [("normal.py", 32, 8), ("microwave.py", 64, 8), ("auto_microwave.py", 128, 8), ("bake.py", 128, 1)]
DEFAULT_STAGES, DEFAULT_STEPS, DEFAULT_META_STEPS = 10, 30, 100
TUNE_MALLOC = False  # set when run as a script: the allocator setting lasts for the process


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("--clip-model", default="random:ViT-B/32",
                   help="CLIP model (name, checkpoint path, toy, or random:ARCH)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--seed", type=common.seed_int, default=0, help="random seed")
    p.add_argument("--precision", choices=list(common.PRECISIONS), default="fp32",
                   help="precision of CLIP's image tower")
    p.add_argument("--compile", action="store_true", help="time the renderer with its loss compiled")
    p.add_argument("--batch", type=common.positive_int, default=1,
                   help="random starts per meta step (and an extra inner-step row at this batch)")
    p.add_argument("--checkpoint", action="store_true", help="per-stage gradient checkpointing in the meta step")
    p.add_argument("--stages", type=common.positive_int, default=DEFAULT_STAGES, help="stages of the rollout and meta step")
    p.add_argument("--steps", type=common.positive_int, default=DEFAULT_STEPS, help="inner steps per stage")
    p.add_argument("--meta-steps", type=common.positive_int, default=DEFAULT_META_STEPS,
                   help="meta steps of the projected bake")
    p.add_argument("--size", type=common.positive_int, default=128, help="bake's image side")
    p.add_argument("--cutn", type=common.positive_int, default=1, help="bake's cutouts per step")
    p.add_argument("--repeat", type=common.positive_int, default=20,
                   help="timed inner steps per row (their median is shown)")
    p.add_argument("--warmup", type=common.positive_int, default=3, help="untimed inner steps before each row")
    p.add_argument("--reference-design", action="store_true",
                   help="also time the reference's inner step, side by side")
    p.add_argument("--reference-precision", choices=list(common.PRECISIONS), default=None,
                   help="precision of the reference's image tower (default: --precision; the original runs "
                        "fp32 on a CPU, as clip.load gives it there)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    return p.parse_args(argv)


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


class Memory:
    """Peak memory of a block: CUDA's allocator peak, or the process's resident peak on a CPU."""

    def __init__(self, device):
        self.device = device

    def measure(self, work):
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            work()
            return torch.cuda.max_memory_allocated(self.device) - before
        before = _proc_status("VmRSS")
        if before is None or not _reset_peak_rss():
            work()
            return None
        work()
        return _proc_status("VmHWM") - before


def _return_freed_memory():
    """Make glibc hand large freed blocks back to the system, so resident size tracks use.

    By default glibc raises its mmap threshold as blocks are freed and then keeps freed
    tensors' memory in its heap: a peak measured by resident size would miss new use.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD: fixed, 256 KiB
        libc.malloc_trim(0)  # and give back what the heap holds free now
    except (OSError, AttributeError):
        pass


def _proc_status(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss():
    try:  # Linux: writing 5 resets the process's peak resident size to its current one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def target_for(model):
    with torch.no_grad():
        return common.shape_targets(torch.randn(1, model.dim, device=model.device),
                                    common.style_shift(model))[0]


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


def time_inner_step(model, clock, args, size, cutn, batch=1):
    """Seconds per step of the plain renderer (the fast path every script uses)."""
    target = target_for(model)[None]
    z = common.random_start(size, model.device, batch)
    z = common.rollout(model, z, target, args.warmup, common.LR, cutn)  # warm caches, compile
    return median_step(clock, lambda n, tick: common.rollout(model, z, target, n, common.LR, cutn, callback=tick),
                       args.repeat)


def reference_cutouts(image, side, cutn):
    """The reference's cutouts: decided on the host and made one at a time."""
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


def time_reference_step(model, clock, args, size, cutn):
    """Seconds per step of the reference's design: weights get gradients, eager, .item() each step."""
    target = target_for(model)
    net = model.model
    precision = model.precision
    model.set_precision(args.reference_precision or precision)
    net.requires_grad_(True)
    patch = net.visual.conv1
    if isinstance(patch, common.PatchEmbedding):  # the reference's own convolution and attention kernel
        net.visual.conv1 = patch.as_conv()
    cast = (torch.autocast(model.device.type, dtype=common.PRECISIONS[model.precision])
            if model.precision != "fp32" else contextlib.nullcontext())
    z = common.random_start(size, model.device).requires_grad_()
    optimizer = torch.optim.AdamW([z], lr=common.LR)  # only z: CLIP's gradients pile up, as there

    def steps(n, tick=None):
        for _ in range(n):
            optimizer.zero_grad()
            cuts = reference_cutouts(z, model.size, cutn)  # the reference feeds raw z to CLIP
            with cast:  # --reference-precision, by default ours: then only the design differs
                embeds = F.normalize(net.encode_image(cuts).float(), dim=-1)
            loss = (common.spherical_distance(embeds, target).mean()
                    + (z - z.clamp(-1, 1)).pow(2).mean() + common.TV_WEIGHT * common.total_variation(z).sum()
                    + common.STD_WEIGHT * (z.std() - 1).pow(2))
            loss.backward()
            optimizer.step()
            loss.item()  # the reference shows the loss every step
            if tick is not None:
                tick()

    try:
        steps(args.warmup)
        return median_step(clock, steps, args.repeat)
    finally:
        net.visual.conv1 = patch
        model.set_precision(precision)
        net.requires_grad_(False)
        for p in net.parameters():
            p.grad = None


def time_unrolled_step(model, clock, args):
    """Seconds per differentiable inner step: its forward and its share of the backward."""
    steps = args.steps
    stages = torch.randn(1, model.dim, device=model.device, requires_grad=True)
    shift = common.style_shift(model)

    def run(n):
        with common.math_attention():
            z = common.random_start(args.size, model.device, args.batch).requires_grad_()
            z = common.rollout(model, z, common.shape_targets(stages, shift), n, common.LR, args.cutn,
                               create_graph=True)
            common.bake_loss(model, z, common.Prompt("", "text", F.normalize(stages[0].detach(), dim=-1)),
                             args.cutn).sum().backward()

    run(1)
    return clock.time(lambda: run(steps)) / steps


def meta_cfg(args):
    return {"size": args.size, "steps": args.steps, "lr": common.LR, "cutn": args.cutn, "stage_reg": 1.0,
            "meta_grad": "unrolled", "batch": args.batch, "checkpoint": args.checkpoint}


def time_meta_step(model, clock, memory, args):
    """Seconds of one meta step (after an untimed one), and its peak memory in bytes.

    The peak (None where unmeasurable) comes from a third meta step, run after the
    timing: on a GPU it starts from an empty allocator cache; on a CPU, measuring
    resident size needs glibc to return freed memory at once, which slows allocation.
    """
    prompt = common.Prompt("", "text", F.normalize(torch.randn(model.dim, device=model.device), dim=-1))
    stages = torch.randn(args.stages, model.dim, device=model.device, requires_grad=True)
    optimizer = torch.optim.AdamW([stages], lr=common.LR)
    shift = common.style_shift(model)

    def step():
        common.meta_step(model, stages, optimizer, prompt, shift, meta_cfg(args), 0.0)

    step()  # warm: kernels chosen, caches filled
    seconds = clock.time(step)
    if model.device.type == "cpu" and TUNE_MALLOC:
        _return_freed_memory()
    return seconds, memory.measure(step)


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


@common.cli
def main(argv=None):
    args = parse_args(argv)
    if args.json:
        common.check_file(args.json, "--json")
    device = common.pick_device(args.device)
    model = common.load_clip(args.clip_model, device)
    common.use_speed_flags(model, args)
    if args.reference_design and args.reference_precision:  # refuse one the device lacks before any work
        model.set_precision(args.reference_precision)
        model.set_precision(args.precision)
    common.seed_everything(args.seed, announce=False)
    clock, memory = Clock(device), Memory(device)
    name = device_name(device)
    reference_precision = args.reference_precision or args.precision
    print(f"device: {name}; model: {args.clip_model}; precision: {args.precision}; "
          + (f"reference precision: {reference_precision}; " if args.reference_design else "")
          + f"compile: {args.compile}; torch {torch.__version__}", flush=True)
    rows = []
    inner = {}  # seconds per inner step, by script

    def row(what, seconds, note="", **extra):
        rows.append({"what": what, "ms": seconds * 1000, "note": note, **extra})
        shown = f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"
        print(f"  {what:<66} {shown:>10}  {note}", flush=True)

    for script, size, cutn in SCRIPTS:
        ours = inner[script] = time_inner_step(model, clock, args, size, cutn)
        note = ""
        extra = {}
        if args.reference_design:
            reference = time_reference_step(model, clock, args, size, cutn)
            note = f"reference design {reference * 1000:.1f} ms: {reference / ours:.1f}x faster"
            extra = {"reference_ms": reference * 1000, "speedup": reference / ours}
        row(f"inner step, {script} ({size} px, cutn {cutn}, batch 1)", ours, note, **extra)
    if args.batch > 1:
        seconds = time_inner_step(model, clock, args, args.size, args.cutn, args.batch)
        row(f"inner step, {args.size} px, cutn {args.cutn}, batch {args.batch}", seconds,
            f"{seconds * 1000 / args.batch:.1f} ms per start")
    total = args.stages * args.steps
    step = inner["normal.py"]
    if step * 250 < 30:  # measured where it is quick, projected from the inner step where not
        run = clock.time(lambda: common.rollout(model, common.random_start(32, device), target_for(model)[None],
                                                250, common.LR, 8))
        row("normal.py run, 250 steps (32 px, cutn 8)", run)
    else:
        row("normal.py run, 250 steps (32 px, cutn 8) (projected)", step * 250, "= inner step x 250")
    rollout = clock.time(lambda: common.rollout(
        model, common.random_start(args.size, device), target_for(model).expand(args.stages, -1),
        args.steps, common.LR, args.cutn))
    row(f"rollout, {args.stages} stages x {args.steps} steps ({args.size} px, cutn {args.cutn})", rollout)
    unrolled = time_unrolled_step(model, clock, args)
    row(f"unrolled inner step ({args.size} px, cutn {args.cutn}, batch {args.batch}), with backward", unrolled)
    meta, peak = time_meta_step(model, clock, memory, args)
    how = f"batch {args.batch}" + (", checkpointed" if args.checkpoint else "")
    row(f"meta step, {args.stages} x {args.steps} unrolled ({how})", meta,
        f"peak memory {gib(peak):.2f} GiB" if peak is not None else "peak memory not measurable here",
        peak_gib=gib(peak))
    scale = DEFAULT_STAGES * DEFAULT_STEPS / total
    projected = meta * scale * args.meta_steps
    row(f"bake, {args.meta_steps} meta steps of {DEFAULT_STAGES} x {DEFAULT_STEPS}"
        + (" (projected)" if scale != 1 else ""), projected,
        f"= meta step x {scale:g} x {args.meta_steps}" if scale != 1 else f"= meta step x {args.meta_steps}")
    if peak is not None and scale != 1:  # the graph grows with the steps it holds at once
        held = DEFAULT_STEPS / args.steps if args.checkpoint else scale
        rows[-1]["peak_gib_projected"] = gib(peak) * held
        print(f"  {'peak memory of that bake (projected)':<66} {gib(peak) * held:>8.2f} GiB  "
              f"= meta step's peak x {held:g} (the steps held at once; an upper bound)", flush=True)
    if args.json:
        result = {"device": name, "device_type": device.type, "clip_model": args.clip_model,
                  "precision": args.precision, "compile": args.compile, "batch": args.batch,
                  "reference_precision": reference_precision if args.reference_design else None,
                  "checkpoint": args.checkpoint, "torch": torch.__version__, "rows": rows}
        common.write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    TUNE_MALLOC = True
    main()
