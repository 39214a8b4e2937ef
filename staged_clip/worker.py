"""The server's worker: it claims a batch of jobs from the queue (jobs.Queue), makes each job's
plan as its script would (recipes.plan, from the job's command line, orders.argv), renders the
jobs that share a renderer as one batch, each image from its own seed's generator (as
--variations does), and saves each job's PNGs as its script would. One worker per device.

What the queue does not keep, the step of a running job and its latest preview, lives in Live,
shared by the workers and the web server of one process.
"""

import dataclasses
import io
import threading
import time
import traceback
from pathlib import Path

import torch

from . import baked, baking, cutouts, orders, output, prompts, randomness, recipes, render, runs, tasks
from .errors import UserError, log, out_of_memory_message
from .wandb_log import WandbLog

PREVIEW_SIDE = 256
BAKING = threading.Lock()  # one bake at a time in a process (see Worker.bake)


class Cancelled(Exception):
    """Every job of a batch was cancelled while it ran."""


class Live:
    """The running jobs' progress as the worker sees it: {job id: {"step", "steps", "preview": PNG
    bytes or None, "version": how many previews so far}}, and the ids cancelled while queued or
    running. Safe to share between threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.jobs = {}
        self.cancelled = set()

    def begin(self, job, steps):
        with self.lock:
            self.jobs[job] = {"step": 0, "steps": steps, "preview": None, "version": 0}

    def update(self, job, step, preview=None):
        with self.lock:
            entry = self.jobs.get(job)
            if entry is not None:
                entry["step"] = step
                if preview is not None:
                    entry["preview"], entry["version"] = preview, entry["version"] + 1

    def get(self, job):
        with self.lock:
            entry = self.jobs.get(job)
            return None if entry is None else dict(entry)

    def end(self, job):
        with self.lock:
            self.jobs.pop(job, None)
            self.cancelled.discard(job)

    def cancel(self, job):
        with self.lock:
            self.cancelled.add(job)

    def is_cancelled(self, job):
        with self.lock:
            return job in self.cancelled


@dataclasses.dataclass(frozen=True)
class Place:
    """Where a worker works: its model (a models.Clip), CPU threads, the folders of bakes and
    images, how many jobs a batch may take, and how often (in steps) a preview is made."""

    model: object
    threads: int
    baked_dir: Path
    images: Path
    max_batch: int = 8
    preview_every: int = 10
    name: str = "worker"


@dataclasses.dataclass
class Prepared:
    """A render job made ready: the job (a jobs.Queue dict), its flags, Run and Plan."""

    job: dict
    args: object
    run: object
    plan: object

    @property
    def seeds(self):
        return self.run.start.seeds


def picture(z, palette=None, dither=False):
    """A preview PNG of z's first image: bytes."""
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(output.to_pixels(z, PREVIEW_SIDE, palette, dither)).save(buffer, format="PNG")
    return buffer.getvalue()


def error_line(error):
    """One line for a job that failed: a user error's message, else the error's type and first line."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, SystemExit):  # argparse's refusal of a command line
        return str(error.code).strip() if error.code not in (None, 2) else "the job's command line was refused"
    oom = out_of_memory_message(error) if isinstance(error, (MemoryError, RuntimeError)) else None
    first = (str(error).splitlines() or [""])[0][:200]
    return oom or f"{type(error).__name__}: {first}"


class Worker:
    """One device's worker over the queue (a jobs.Queue), the Live registry and its Place."""

    def __init__(self, queue, live, place):
        self.queue, self.live, self.place = queue, live, place
        self.inputs = {}  # (script, path, modified) -> what recipes.read_inputs read
        self.seconds = []  # the last jobs' seconds from claim to done, for the queue's Retry-After

    def where(self, job):
        """The server's side of a job's command line (orders.argv's where)."""
        model = self.place.model
        return {"clip_model": model.name, "device": str(model.device), "threads": self.place.threads,
                "out": self.place.images / f"{job['id']}.png", "baked_dir": self.place.baked_dir}

    def run_forever(self, stop, idle=0.05):
        """Work until stop (a threading.Event) is set, sleeping idle seconds while no job waits."""
        while not stop.is_set():
            try:
                if not self.run_once():
                    stop.wait(idle)
            except Exception:  # the queue itself failed (a full disk, a lock held too long): say so,
                log(f"{self.place.name}: {traceback.format_exc(limit=2).strip().splitlines()[-1]}")
                self.let_go()  # put back what it held, keep serving
                stop.wait(1.0)

    def let_go(self):
        """Put this worker's running jobs back in the queue, in their places, and forget their progress."""
        try:
            held = [job["id"] for job in self.queue.running(self.place.name)]
            self.queue.recover(self.place.name)
        except Exception:  # the queue is still failing: the next start recovers them
            return
        for job in held:
            self.live.end(job)

    def run_once(self):
        """Claim one batch and run it; how many jobs it held (0: none waited)."""
        claimed = self.queue.claim(self.place.name, self.place.max_batch)
        if not claimed:
            return 0
        began = time.time()
        if claimed[0]["kind"] == "bake":
            for job in claimed:
                self.attempt([job], self.bake)
        else:
            ready = [p for p in (self.attempt([job], self.prepare) for job in claimed) if p is not None]
            for group in groups(ready):
                self.attempt([p.job for p in group], lambda _, group=group: self.render(group))
        self.seconds = (self.seconds + [(time.time() - began) / len(claimed)])[-50:]
        return len(claimed)

    def attempt(self, batch, work):
        """work(batch[0]); on an error each job of the batch fails with its one line. Returns work's answer."""
        try:
            return work(batch[0])
        except Cancelled:
            pass
        except (Exception, SystemExit) as error:  # one job's failure is the job's, never the server's
            line = error_line(error)
            log(f"{self.place.name}: {len(batch)} job(s) failed: {line}")
            for job in batch:
                self.queue.end(job["id"], "failed", error=line)
        for job in batch:
            self.live.end(job["id"])
        return None

    def read(self, script, args):
        """recipes.read_inputs, remembered while the files are unchanged."""
        path = getattr(args, "baked", None) or getattr(args, "baked_dir", None)
        stamp = None if path is None else max((p.stat().st_mtime_ns for p in [Path(path), *Path(path).glob("*.pt")]
                                              if p.exists()), default=None)
        key = (script, path, stamp)
        if key not in self.inputs:
            self.inputs = {key: recipes.read_inputs(script, args)}  # the newest only: memory stays flat
        return self.inputs[key]

    def prepare(self, job):
        """A render job's Prepared: its command line parsed, its inputs read, its Plan made."""
        script, words = orders.argv(job["request"], self.where(job))
        args = recipes.parse(script, words)
        run = runs.started(args, script, self.place.model, self.place.threads)
        return Prepared(job, args, run, recipes.plan(script, args, run, self.read(script, args)))

    def render(self, group):
        """Render a group of Prepared jobs that share a renderer as one batch, and save each job's PNGs."""
        settings, model = group[0].plan.settings, self.place.model
        seeds = [s for p in group for s in p.seeds]
        targets, scale = batched(group)
        steps = sum(settings.of_stage(i).steps for i in range(len(targets)))
        for p in group:
            self.live.begin(p.job["id"], steps)
            self.queue.progress(p.job["id"], 0, steps)
        generators = [torch.Generator(device=model.device).manual_seed(s) for s in seeds]
        z = render.starts_from(generators, settings.shape, model.device)
        report = self.reporter(group, steps, settings)
        z = render.rollout(model, z, targets, settings, callback=report, lr_scale=scale,
                           draw=cutouts.draws_from(generators))
        first = 0
        for p in group:
            rows, first = z[first:first + len(p.seeds)], first + len(p.seeds)
            if not self.live.is_cancelled(p.job["id"]):
                self.save(p, rows)
            self.live.end(p.job["id"])

    def reporter(self, group, steps, settings):
        """rollout's callback: each job's step, a preview every preview_every steps and at the end,
        and Cancelled once every job of the group is cancelled."""
        done, firsts = [0], [sum(len(p.seeds) for p in group[:i]) for i in range(len(group))]
        ids = [p.job["id"] for p in group]

        def report(stage, step, loss, z):
            done[0] += 1
            if all(self.live.is_cancelled(i) for i in ids):
                raise Cancelled
            show = done[0] % self.place.preview_every == 0 or done[0] == steps
            for job, first in zip(ids, firsts):
                if self.live.is_cancelled(job):  # the rest of its batch goes on without it
                    continue
                self.live.update(job, done[0], picture(z[first:first + 1], settings.palette) if show else None)
                if show:
                    self.queue.progress(job, done[0])

        return report

    def save(self, prepared, rows):
        """Save a job's images as its script would (variations: each, and their sheet); the job is done."""
        run, plan, job = prepared.run, prepared.plan, prepared.job
        settings = plan.settings
        if len(prepared.seeds) > 1:
            paths = run.output.save_variations(rows, settings, self.place.model.device, prepared.seeds, **plan.info)
        else:
            paths = run.output.save(rows, settings, self.place.model.device, **plan.info)
        result = {"images": [f"/images/{Path(p).name}" for p in paths], "seeds": list(prepared.seeds),
                  "prompt": plan.info.get("prompt"), "script": run.output.script,
                  "settings": {k: v for k, v in vars(prepared.args).items() if k not in ("out", "device")}}
        if not self.queue.end(job["id"], "done", result):  # cancelled while it saved: no image of it stays
            remove(paths)

    def bake(self, job):
        """A bake job: bake.py's bake of one prompt into the bake folder, its preview among the images.
        One bake at a time in a process: a bake draws from the global generators, which its seed sets."""
        args = recipes.parse("bake.py", orders.bake_argv(job["request"], self.where(job)))
        path = baked.baked_path(args.baked_dir, args.prompt, args.name)
        if path.exists() and job["runs"] == 1:  # a rerun after a crash may find its own file
            raise UserError(f"a bake named {path.stem!r} exists: give another name")
        with BAKING:
            self.baking(job, args, path)

    def baking(self, job, args, path):
        """bake's work, under the lock."""
        run = runs.started(args, "bake.py", self.place.model, self.place.threads)
        randomness.seed_everything(args.seed, announce=False)
        settings, model = runs.settings_of(args, run), self.place.model
        self.live.begin(job["id"], settings.meta_steps)
        self.queue.progress(job["id"], 0, settings.meta_steps)
        baker = baking.Baker(model, prompts.style_shift(model, settings), WandbLog("disabled"), bars=False)
        aims = tasks.Tasks.single(model, prompts.load_prompt(model, args.prompt), settings.stages)
        bake = baking.Bake(baker, aims, settings, path)
        meta_step = bake.step

        def step(i):  # each meta step reported; a cancel stops the bake before its file is written
            if self.live.is_cancelled(job["id"]):
                raise Cancelled
            loss = meta_step(i)
            self.live.update(job["id"], i + 1)
            return loss

        bake.step = step
        history = bake.run(run.output)
        if not self.queue.end(job["id"], "done", {"bake": path.stem, "images": [f"/images/{job['id']}.png"],
                                                  "meta_loss": history[-1], "prompt": args.prompt}):
            remove([path, run.output.path])  # cancelled while it saved
        self.live.end(job["id"])


def remove(paths):
    """Delete files a cancelled job wrote (those that are there)."""
    for path in paths:
        Path(path).unlink(missing_ok=True)


def groups(prepared):
    """Prepared jobs split into groups that one batch can render: the same settings but the seed,
    and the same number of stages."""
    found = {}
    for p in prepared:
        key = (repr(dataclasses.replace(p.plan.settings, seed=0)), len(p.plan.targets))
        found.setdefault(key, []).append(p)
    return list(found.values())


def batched(group):
    """A group's targets and learning-rate scale as one batch: the shared [S, D] where every job has
    the same (as --variations renders), else [S, B, D]; the scale [S], or [S, B] where they differ."""
    counts = [len(p.seeds) for p in group]
    targets = [p.plan.targets for p in group]
    if all(torch.equal(t, targets[0]) for t in targets):
        joined = targets[0]
    else:
        joined = torch.cat([t[:, None].expand(-1, n, -1) for t, n in zip(targets, counts)], dim=1)
    scales = [p.plan.scale for p in group]
    if all(s is None for s in scales):
        return joined, None
    known = next(s for s in scales if s is not None)
    scales = [torch.ones_like(known, dtype=torch.float) if s is None else s.float() for s in scales]
    if all(torch.equal(s, scales[0]) for s in scales):
        return joined, scales[0]
    return joined, torch.cat([s[:, None].expand(-1, n) for s, n in zip(scales, counts)], dim=1)
