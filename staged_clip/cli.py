"""The command line: argparse types and helpers, the flags scripts share, and a run's start."""

import argparse
import math
import os
import time
from pathlib import Path

import torch

from . import models, output, params, prompts, render
from .errors import UserError, log
from .randomness import seed_everything
from .settings import GATE_EVERY, LR, META_GRADS, SCRIPT_DEFAULTS, Settings


def number(cast, accept, requirement):
    """An argparse type: cast the text, then insist on accept(value) (requirement says what fails)."""

    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{requirement}, got {text}")
        return value

    return parse


positive_int = number(int, lambda v: v >= 1, "must be a whole number of at least 1")
nonnegative_int = number(int, lambda v: v >= 0, "must be a whole number of at least 0")
nonnegative_float = number(float, lambda v: 0 <= v < math.inf, "must be a number of at least 0")
positive_float = number(float, lambda v: 0 < v < math.inf, "must be a positive number")
unit_float = number(float, lambda v: 0 <= v <= 1, "must lie between 0 and 1")
decay_float = number(float, lambda v: 0 <= v < 1, "must lie from 0 up to, not including, 1")
save_side = number(int, lambda v: 1 <= v <= 8192, "must be a whole number from 1 to 8192")
seed_int = number(int, lambda v: 0 <= v < 2**63, "must be a whole number from 0 to 2**63 - 1")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (not the whole usage) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the docstring's lines (its examples); show every default not already told.

    An on/off switch shows none: "--no-style (default: True)" would say the opposite of
    what the flag does.
    """

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool) or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def make_parser(doc):
    """An ArgumentParser that shows the script's docstring and every default."""
    return Parser(description=doc, formatter_class=Formatter)


def add_model_args(group, clip_model=models.DEFAULT_CLIP_MODEL):
    """--clip-model, --device, --seed, --precision, --compile and --threads."""
    group.add_argument("--clip-model", default=clip_model,
                       help="CLIP model name (downloaded once), a local checkpoint path, "
                            "toy or toy-scorer (small offline models of drawn shapes, shipped here), "
                            "or random:ARCH (random weights, for timing)")
    group.add_argument("--device", default=None,
                       help="torch device (default: cuda if available, else cpu)")
    group.add_argument("--seed", type=seed_int, default=None,
                       help="random seed (default: a fresh one, printed so the run can be repeated)")
    group.add_argument("--precision", choices=list(models.PRECISIONS), default="fp32",
                       help="precision of CLIP's image tower (autocast; fp16/bf16 are faster on a GPU)")
    group.add_argument("--compile", action="store_true",
                       help="compile the renderer's loss with torch.compile (slow to start, faster "
                            "per step; falls back to eager if compiling fails)")
    group.add_argument("--threads", type=positive_int, default=None,
                       help="CPU threads (default: the cores that no other process keeps busy when "
                            "the run starts, at least 1; OMP_NUM_THREADS, where set)")


def add_render_args(group, size, steps, cutn, lr=LR, inner_eps=Settings.inner_eps,
                    carry_moments=Settings.carry_moments, param=Settings.param):
    """--size, --steps, --lr, --cutn, Adam's eps and moments, the image's parametrization, and the
    style shaping of targets.

    lr, inner_eps, carry_moments, param: None for a replay, whose bake says (files without: the
    reference's, rgb).
    """
    group.add_argument("--size", type=positive_int, default=size, help="side of the optimized image tensor")
    group.add_argument("--steps", type=positive_int, default=steps, help="Adam steps (per stage where staged)")
    baked = " (default: the baked file's, else the reference's)" if inner_eps is None else ""
    group.add_argument("--lr", type=positive_float, default=lr, help="learning rate of the image optimizer" + baked)
    group.add_argument("--cutn", type=positive_int, default=cutn, help="cutouts CLIP sees per step")
    group.add_argument("--inner-eps", type=positive_float, default=inner_eps,
                       help="eps of the image's Adam: raised towards a pixel's typical gradient, it stops "
                            "near-zero gradients from making full-size steps" + baked)
    group.add_argument("--carry-moments", action=argparse.BooleanOptionalAction, default=carry_moments,
                       help="keep Adam's moments and step count from stage to stage instead of a fresh Adam "
                            "each stage" + baked)
    group.add_argument("--param", choices=params.PARAMS, default=param,
                       help="what Adam optimizes: the pixels (rgb, the reference's), a pyramid of levels at "
                            "size, size/2, ... 4 px summed, or a 1/frequency-scaled spectrum with decorrelated "
                            "colours (fourier)" + baked.replace("reference's", "reference's rgb"))
    group.add_argument("--pyramid-levels", type=positive_int, default=None,
                       help="levels of --param pyramid (default: every halving down to 4 px)")
    group.add_argument("--no-style", dest="style", action="store_false",
                       help="turn off target shaping (style and negative texts; on by default)")
    group.add_argument("--style-text", default=prompts.STYLE_TEXT, help="text added to every target")
    group.add_argument("--negative-text", default=prompts.NEGATIVE_TEXT, help="text subtracted from every target")


def add_common_args(parser, script, out="output.png", progress=True):
    """Add the flags every script has, with script's renderer defaults (settings.SCRIPT_DEFAULTS).

    out=None: no --out (the script decides where images go); progress=False: no --save-progress.
    """
    g = parser.add_argument_group("common options")
    add_model_args(g)
    add_render_args(g, **SCRIPT_DEFAULTS[script])
    if out is not None:
        g.add_argument("--out", default=out, help="output PNG path")
    g.add_argument("--save-size", type=save_side, default=output.SAVE_SIZE,
                   help="side of the saved PNG (nearest-neighbour upscale)")
    if out is not None and progress:
        g.add_argument("--save-progress", type=nonnegative_int, nargs="?", const=0, default=None, metavar="N",
                       help="also save the image every N steps (alone: after every stage; for one "
                            "stage, ten times) as frames in OUT_progress/ and an animated OUT_progress.gif")
    return g


def add_bake_settings(group, meta_grad=True):
    """The meta-optimization's settings: stages, meta steps and rate, regularizer, estimator, batch."""
    defaults = Settings()
    group.add_argument("--stages", type=positive_int, default=defaults.stages, help="number of stages")
    group.add_argument("--meta-steps", type=positive_int, default=defaults.meta_steps,
                       help="meta-optimization steps")
    group.add_argument("--meta-lr", type=positive_float, default=defaults.meta_lr,
                       help="learning rate of the stage embeddings")
    group.add_argument("--stage-reg", type=float, default=defaults.stage_reg,
                       help="weight of the fading 'stay near the prompt' term on the stages")
    if meta_grad:
        group.add_argument("--meta-grad", choices=META_GRADS, default=defaults.meta_grad,
                           help="unrolled: back-propagate the final image loss through the inner "
                                "optimization; none: the reference's behaviour (no image gradient); es: "
                                "evolution strategies on the smoothed loss (antithetic pairs of plain rollouts)")
    group.add_argument("--batch", type=positive_int, default=defaults.batch,
                       help="random starts rolled out together per meta step; the meta-gradient "
                            "is their mean")
    group.add_argument("--checkpoint", action="store_true",
                       help="per-stage gradient checkpointing of the unrolled rollout: memory for "
                            "one stage instead of all, for one more forward pass of each stage")


def add_es_settings(group):
    """The ES estimator's settings and the validation gate's."""
    defaults = Settings()

    def option(flag, kind, text):
        """A flag whose default is the Settings field of its name."""
        group.add_argument(flag, type=kind, default=getattr(defaults, flag[2:].replace("-", "_")), help=text)

    option("--population", positive_int, "antithetic pairs of rollouts per meta step")
    option("--sigma", positive_float, "size of the perturbation of each stage's direction, in radians")
    option("--lr-sigma", positive_float, "size of the perturbation of each stage's log learning-rate multiplier")
    option("--es-lr", positive_float, "Adam's step on what ES learns, in units of its perturbation: about es-lr "
                                      "x sigma radians a meta step for a stage, es-lr x lr-sigma for a log multiplier")
    option("--es-rank", nonnegative_int, "search stage directions in a fixed random subspace of this many "
                                         "dimensions around the prompt (0: all of them)")
    group.add_argument("--learn-stages", action=argparse.BooleanOptionalAction, default=defaults.learn_stages,
                       help="learn the stage directions")
    group.add_argument("--learn-lr", action=argparse.BooleanOptionalAction, default=defaults.learn_lr,
                       help="learn a multiplier of the image's learning rate for each stage")
    option("--es-chunk", nonnegative_int, "pairs rolled out in one batch (0: a process's whole share); lower it "
                                          "when memory runs out")
    group.add_argument("--validate-every", type=nonnegative_int, default=None,
                       help="replay the bake every K meta steps from fixed validation starts and keep it only "
                            "where it beats the best so far, which starts as the prompt itself "
                            f"(0: off; default: {GATE_EVERY} for es, off otherwise)")
    option("--validation-starts", positive_int, "starts of each validation")


def add_bake_args(parser, meta_grad=True):
    """Add the flags shared by bake.py, batch_bake.py (and evaluate.py, which bakes both ways
    and so has no --meta-grad): the bake's settings, where bakes go, and wandb."""
    g = parser.add_argument_group("bake options")
    add_bake_settings(g, meta_grad)
    add_es_settings(parser.add_argument_group("es options (--meta-grad es) and the validation gate"))
    g.add_argument("--baked-dir", default="baked", help="folder of baked files")
    g.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"], default="auto",
                   help="wandb logging; auto logs online when a wandb login is configured")
    g.add_argument("--wandb-project", default="staged-clip", help="wandb project name")
    g.add_argument("--log-every", type=positive_int, default=10,
                   help="log the baked and control images every N meta steps")
    return g


def busy_cores(seconds=0.1, stat="/proc/stat"):
    """How many cores other processes keep busy, from /proc/stat over a short while (None off Linux)."""
    def sample():
        with open(stat) as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all time, and idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)  # this process sleeps meanwhile: what is busy is the others
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    cores = os.cpu_count() or 1
    if total1 <= total0:
        return 0
    return round(cores * (1 - (idle1 - idle0) / (total1 - total0)))


def use_threads(requested=None):
    """Set torch's CPU threads and return how many: requested, else OMP_NUM_THREADS, else auto.

    auto: torch's own choice (a thread per core), less the cores other processes keep busy
    when the run starts, at least one. On a shared machine more threads than free cores
    make OpenMP's threads wait on each other: beside one busy process on two cores, two
    threads ran a step 8 times slower than one (see docs/performance.md).
    """
    if requested is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        requested = int(os.environ["OMP_NUM_THREADS"]) or None
    if requested is None:
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        requested = max(1, min(torch.get_num_threads(), available - (busy_cores() or 0)))
    torch.set_num_threads(requested)
    return requested


def start(args, writes_baked=False):
    """What every script does first: check its outputs, pick device and threads, load CLIP, seed.

    Seeding comes after loading, so a seed means the same run whatever loading drew.
    Returns (model, Settings of the parsed flags with the seed and threads used).
    """
    out = getattr(args, "out", None)
    if out is not None:
        output.check_output(out)
        prompt = getattr(args, "prompt", None)
        if prompt and prompts.is_image_path(prompt.strip()) and Path(prompt.strip()).resolve() == Path(out).resolve():
            raise UserError(f"--out {out} is the image prompt itself: choose another --out")
    if writes_baked:
        output.check_folder(args.baked_dir, "--baked-dir")
    if getattr(args, "checkpoint", False) and getattr(args, "carry_moments", False):
        raise UserError("--checkpoint reruns each stage alone, so it cannot carry Adam's moments between stages: "
                        "drop one of --checkpoint and --carry-moments")
    if getattr(args, "param", None) is not None:
        params.check(args.param, args.size, args.pyramid_levels)
    device = models.pick_device(args.device)
    threads = use_threads(getattr(args, "threads", None))
    model = models.load_clip(args.clip_model, device)
    use_speed_flags(model, args)
    settings = Settings.from_args(args, seed=seed_everything(args.seed), threads=threads)
    return model, settings


def replay_settings(settings, config, source):
    """settings for replaying a bake of this config (Settings.replaying), with a one-line note
    where --param asks for another parametrization than the bake's (source: what to name)."""
    replay = settings.replaying(config)
    made = config.get("param", "rgb")
    if settings.param is not None and settings.param != made:
        log(f"note: {source} was baked with --param {made}; replaying it with --param {settings.param}")
    return replay


def use_speed_flags(model, args):
    """Apply --precision and --compile to a loaded model."""
    model.set_precision(getattr(args, "precision", "fp32"))
    if getattr(args, "compile", False):
        render.use_compile(model)
