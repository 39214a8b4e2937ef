"""The command line: the flags the scripts share (runs.py makes a started run and its Settings
of the parsed flags). It imports no torch at the top, so that --help answers at once.
"""

import argparse
import math
from pathlib import Path

from .settings import (DEFAULT_CLIP_MODEL, FAR, GATE_EVERY, LR, META_GRADS, NEGATIVE_TEXT, NO_PALETTE, ORIGINAL,
                       PALETTE_HARD, PALETTE_WEIGHT, PARAMS, PRECISIONS, SAVE_SIZE, SCRIPT_DEFAULTS, STEPS_WHY,
                       STYLE_TEXT, Settings)


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
image_side = number(int, lambda v: 2 <= v <= 8192, "must be a whole number of pixels from 2 to 8192")
variation_count = number(int, lambda v: 1 <= v <= 256, "must be a whole number from 1 to 256")
palette_count = number(int, lambda v: 2 <= v <= 256, "must be a whole number of colours from 2 to 256")
nonnegative_int = number(int, lambda v: v >= 0, "must be a whole number of at least 0")
nonnegative_float = number(float, lambda v: 0 <= v < math.inf, "must be a number of at least 0")
positive_float = number(float, lambda v: 0 < v < math.inf, "must be a positive number")
unit_float = number(float, lambda v: 0 <= v <= 1, "must lie between 0 and 1")
decay_float = number(float, lambda v: 0 <= v < 1, "must lie from 0 up to, not including, 1")
save_side = number(int, lambda v: 1 <= v <= 8192, "must be a whole number from 1 to 8192")
spherical_distance = number(float, lambda v: 0 <= v <= math.pi**2 / 2,
                            "must be a spherical distance from 0 to pi^2/2 (about 4.93)")
seed_int = number(int, lambda v: 0 <= v < 2**63, "must be a whole number from 0 to 2**63 - 1")


def name_list(choices=None, cast=str, accept=None, least=1, distinct=True, example=None):
    """An argparse type: a comma-separated list of at least `least` items, each cast (str, float)
    and, where given, among choices and accepted by accept(item) (which may also raise a
    UserError naming what is wrong); distinct unless told. A bad list gets one line that says
    what to give: the error's own words, or example (default: "from CHOICES").

    E.g. name_list(cast=float, accept=lambda r: r > 0)("0.1,0.2") is [0.1, 0.2].
    """
    from .errors import UserError
    wanted = example or f"a comma-separated list from {', '.join(choices or [])}"

    def parse(text):
        try:
            items = [cast(n.strip()) for n in text.split(",") if n.strip()]
            good = (len(items) >= least and (not distinct or len(set(items)) == len(items))
                    and all((choices is None or n in choices) and (accept is None or accept(n)) for n in items))
        except ValueError:
            good = False
        except UserError as e:  # its own words, less the flag it names (argparse names it)
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1] if str(e).startswith("-") else str(e)) from None
        if not good:
            raise argparse.ArgumentTypeError(f"{text!r}: give {wanted}")
        return items

    return parse


def shard_arg(text):
    """--shard: 'I/N' -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N (e.g. 0/4)") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r}: I/N needs 0 <= I < N (e.g. 0/4)")
    return i, n


class SizeAction(argparse.Action):
    """--size W [H]: one number, a square (size = W, height = None); two, width and height."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 2:
            parser.error(f"{option_string} takes one number (a square's side) or two (width height), got {len(values)}")
        namespace.size, namespace.height = values[0], (values[1] if len(values) == 2 else None)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (not the whole usage) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the docstring's lines (its examples); show every default not already told.

    A plain switch shows none: "--no-style (default: True)" would say the opposite of what
    the flag does; a pair of switches (--learn-lr / --no-learn-lr) names the one that holds.
    """

    def _format_args(self, action, default_metavar):
        if isinstance(action, SizeAction):  # one number or two, not argparse's "W [W ...]"
            return "W [H]"
        return super()._format_args(action, default_metavar)

    def _get_help_string(self, action):
        if "(default" in (action.help or ""):  # told already (by the help, or by argparse before 3.11)
            return action.help
        if isinstance(action, argparse.BooleanOptionalAction) and action.default is not None:
            return f"{action.help} (default: {action.option_strings[0 if action.default else 1]})"
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def make_parser(doc):
    """An ArgumentParser that shows the script's docstring and every default."""
    return Parser(description=doc, formatter_class=Formatter,
                  epilog=f"The original: the code of {ORIGINAL},\nwhose numbers are the defaults here.")


def add_model_args(group, clip_model=DEFAULT_CLIP_MODEL, seed=None):
    """--clip-model, --device, --seed (None: a fresh one; a number: so that a measurement repeats),
    --precision, --compile and --threads."""
    group.add_argument("--clip-model", default=clip_model,
                       help="CLIP model name (downloaded once), a local checkpoint path, "
                            "toy, toy-scorer or toy-judge (small offline models of drawn shapes, shipped here; "
                            "scene, scene-scorer, scene-judge: of scenes of two shapes), "
                            "or random:ARCH (random weights, for timing)")
    group.add_argument("--device", default=None,
                       help="torch device (default: cuda if available, else cpu)")
    group.add_argument("--seed", type=seed_int, default=seed,
                       help="random seed (default: a fresh one, printed so the run can be repeated)" if seed is None
                       else "random seed (fixed, so that a measurement repeats)")
    group.add_argument("--precision", choices=PRECISIONS, default=Settings.precision,
                       help="precision of CLIP's image tower (autocast; fp16/bf16 are faster on a GPU)")
    group.add_argument("--compile", action="store_true",
                       help="compile the renderer's loss with torch.compile (slow to start, faster "
                            "per step; falls back to eager if compiling fails)")
    group.add_argument("--threads", type=positive_int, default=None,
                       help="CPU threads (default: the cores that no other process keeps busy when "
                            "the run starts, at least 1; OMP_NUM_THREADS, where set)")


def add_render_args(group, script):
    """--size, --steps, --lr, --cutn, Adam's eps and moments, the image's parametrization, and the
    style shaping of targets, at the script's defaults (settings.SCRIPT_DEFAULTS; its --steps's
    help says why, settings.STEPS_WHY).

    lr, inner_eps, carry_moments, param: None for a replay, whose bake says (files without: the
    original's, rgb); size too (auto_microwave.py: the size its bakes were learned at).
    """
    defaults = {"lr": LR, "inner_eps": Settings.inner_eps, "carry_moments": Settings.carry_moments,
                "param": Settings.param, **SCRIPT_DEFAULTS[script]}
    size, steps, cutn, lr, inner_eps = (defaults[k] for k in ("size", "steps", "cutn", "lr", "inner_eps"))
    carry_moments, param, why = defaults["carry_moments"], defaults["param"], STEPS_WHY.get(script, "")
    group.add_argument("--size", type=image_side, nargs="+", action=SizeAction, default=size,
                       help="side of the optimized image tensor, or its width and height"
                            + (" (default: the size the bakes were learned at; 128 for a bare tensor of the "
                               "original)" if size is None else ""))
    group.add_argument("--width", type=image_side, dest="size", metavar="W", help="its width (alone: a square)")
    group.add_argument("--height", type=image_side, default=None, metavar="H",
                       help="its height (default: as tall as wide)")
    group.add_argument("--steps", type=positive_int, default=steps,
                       help=f"Adam steps (per stage where staged) (default: {steps}{why})")
    baked = " (default: the baked file's, else the original's)" if inner_eps is None else ""
    group.add_argument("--lr", type=positive_float, default=lr, help="learning rate of the image optimizer" + baked)
    group.add_argument("--cutn", type=positive_int, default=cutn, help="cutouts CLIP sees per step")
    group.add_argument("--inner-eps", type=positive_float, default=inner_eps,
                       help="eps of the image's Adam: raised towards a pixel's typical gradient, it stops "
                            "near-zero gradients from making full-size steps" + baked)
    group.add_argument("--carry-moments", action=argparse.BooleanOptionalAction, default=carry_moments,
                       help="keep Adam's moments and step count from stage to stage instead of a fresh Adam "
                            "each stage" + baked)
    group.add_argument("--param", choices=PARAMS, default=param,
                       help="what Adam optimizes: the pixels (rgb, the original's), a pyramid of levels at "
                            "size, size/2, ... 4 px summed, or a 1/frequency-scaled spectrum with decorrelated "
                            "colours (fourier)" + baked.replace("original's", "original's rgb"))
    group.add_argument("--pyramid-levels", type=positive_int, default=None,
                       help="levels of --param pyramid (default: every halving down to 4 px)")
    add_palette_args(group, baked)
    group.add_argument("--no-style", dest="style", action="store_false",
                       help="turn off target shaping (style and negative texts; on by default)")
    group.add_argument("--style-text", default=STYLE_TEXT, help="text added to every target")
    group.add_argument("--negative-text", default=NEGATIVE_TEXT, help="text subtracted from every target")


def add_palette_args(group, baked=""):
    """--palette and how it acts (baked: the note of a replay, whose bake's palette holds unless given)."""
    group.add_argument("--palette", default=None, metavar="SPEC",
                       help="make and save the image in fixed colours: a name (pico8, gameboy, nes, cga, gray4), "
                            "colours such as '#1a1c2c,#5d275d,#b13e53', an image file (its colours, reduced to "
                            f"--palette-size), or {NO_PALETTE}; saved as an indexed PNG"
                            + (" (default: the baked file's palette, else none)" if baked else " (default: none, "
                               "16 levels a channel)"))
    group.add_argument("--palette-size", type=palette_count, default=16,
                       help="colours taken from an image file given as --palette (k-means)")
    replay = " (default: the baked file's, else {})" if baked else ""
    group.add_argument("--palette-weight", type=nonnegative_float, default=None if baked else PALETTE_WEIGHT,
                       help="weight of the soft palette term (each pixel's squared distance to its nearest colour), "
                            "rising from 0 over the run (0: hard lookup only)" + replay.format(PALETTE_WEIGHT))
    group.add_argument("--palette-hard", type=unit_float, default=None if baked else PALETTE_HARD,
                       help="share of the run's steps, at its end, in which CLIP sees the image in the palette "
                            "(the hard lookup, straight-through gradient; 0: soft term only)"
                            + replay.format(PALETTE_HARD))


def add_start_args(parser):
    """--init-image, --init-noise and --variations: where a rendering script's images start."""
    g = parser.add_argument_group("start options")
    g.add_argument("--init-image", default=None, metavar="PATH",
                   help="start from this image (resized to cover the grid, centre-cropped) instead of noise; "
                        "it may be the image prompt itself")
    g.add_argument("--init-noise", type=unit_float, default=0.0,
                   help="share of the usual random start mixed into --init-image")
    g.add_argument("--variations", type=variation_count, default=1, metavar="N",
                   help="render N images at once, seeds SEED, SEED+1, ...: OUT_1.png ... OUT_N.png and a contact "
                        "sheet OUT_sheet.png (variation i is the run --seed SEED+i-1 makes alone)")


def add_common_args(parser, script, out="output.png", progress=True, seed=None):
    """Add the flags every script has, with script's renderer defaults (settings.SCRIPT_DEFAULTS).

    out=None: no --out (the script decides where images go); progress=False: no --save-progress;
    seed: --seed's default (None: a fresh one).
    """
    g = parser.add_argument_group("common options")
    add_model_args(g, seed=seed)
    add_render_args(g, script)
    if out is not None:
        g.add_argument("--out", default=out, help="output PNG path")
    g.add_argument("--save-size", type=save_side, default=SAVE_SIZE,
                   help="side of the saved PNG, its longer side where not square (nearest-neighbour upscale)")
    if out is not None:
        g.add_argument("--save-native", action="store_true",
                       help="also save the image at its own grid (one pixel a pixel) as OUT_native.png")
    g.add_argument("--dither", action="store_true",
                   help="with --palette: ordered (Bayer 4x4) dithering into the palette as the image is saved")
    if out is not None and progress:
        g.add_argument("--save-progress", type=nonnegative_int, nargs="?", const=0, default=None, metavar="N",
                       help="also save the image every N steps (alone: after every stage; for one "
                            "stage, ten times) as frames in OUT_progress/ and an animated OUT_progress.gif")
    return g


def add_bake_settings(group, choose_estimator=True):
    """The meta-optimization's settings: stages, meta steps and rate, regularizer, estimator, batch."""
    group.add_argument("--stages", type=positive_int, default=Settings.stages, help="number of stages")
    group.add_argument("--meta-steps", type=positive_int, default=Settings.meta_steps,
                       help="meta-optimization steps")
    group.add_argument("--meta-lr", type=positive_float, default=Settings.meta_lr,
                       help="learning rate of the stage embeddings")
    group.add_argument("--stage-reg", type=float, default=Settings.stage_reg,
                       help="weight of the fading 'stay near the prompt' term on the stages")
    if choose_estimator:
        group.add_argument("--meta-grad", choices=META_GRADS, default=Settings.meta_grad,
                           help="unrolled: back-propagate the final image loss through the inner "
                                "optimization; none: the original's bake (no image gradient); es: "
                                "evolution strategies on the smoothed loss (antithetic pairs of plain rollouts)")
    group.add_argument("--batch", type=positive_int, default=Settings.batch,
                       help="random starts rolled out together per meta step; the meta-gradient "
                            "is their mean")
    group.add_argument("--checkpoint", action="store_true",
                       help="per-stage gradient checkpointing of the unrolled rollout: memory for "
                            "one stage instead of all, for one more forward pass of each stage")


def add_es_settings(group):
    """The ES estimator's settings and the validation gate's."""

    def option(flag, kind, text):
        """A flag whose default is the Settings field of its name."""
        group.add_argument(flag, type=kind, default=getattr(Settings, flag[2:].replace("-", "_")), help=text)

    option("--population", positive_int, "antithetic pairs of rollouts per meta step")
    option("--sigma", positive_float, "size of the perturbation of each stage's direction, in radians")
    option("--lr-sigma", positive_float, "size of the perturbation of each stage's log learning-rate multiplier")
    option("--es-lr", positive_float, "Adam's step on what ES learns, in units of its perturbation: about es-lr "
                                      "x sigma radians a meta step for a stage, es-lr x lr-sigma for a log multiplier")
    option("--es-rank", nonnegative_int, "search stage directions in a fixed random subspace of this many "
                                         "dimensions around the prompt (0: all of them)")
    group.add_argument("--learn-stages", action=argparse.BooleanOptionalAction, default=Settings.learn_stages,
                       help="learn the stage directions")
    group.add_argument("--learn-lr", action=argparse.BooleanOptionalAction, default=Settings.learn_lr,
                       help="learn a multiplier of the image's learning rate for each stage")
    group.add_argument("--learn-style", action=argparse.BooleanOptionalAction, default=Settings.learn_style,
                       help="learn a weight of the style texts for each stage")
    group.add_argument("--learn-part", action=argparse.BooleanOptionalAction, default=Settings.learn_part,
                       help="learn how far each stage aims at a part of the prompt (its first words: the "
                            "first stages the beginning, the last all of it)")
    option("--style-sigma", positive_float, "size of the perturbation of each stage's log style weight")
    group.add_argument("--learn-object", action=argparse.BooleanOptionalAction, default=Settings.learn_object,
                       help="learn how far each stage aims at the first object the prompt names (\"a red circle "
                            "on the left\" of \"... and a blue square on the right\")")
    group.add_argument("--learn-layout", action=argparse.BooleanOptionalAction, default=Settings.learn_layout,
                       help="learn how far each stage aims at the prompt without its colour words (\"a circle "
                            "on the left and a square on the right\")")
    option("--part-sigma", positive_float, "size of the perturbation of each stage's weight of its part")
    option("--object-sigma", positive_float, "size of the perturbation of each stage's weight of the first object")
    option("--layout-sigma", positive_float, "size of the perturbation of each stage's weight of the layout")
    option("--meta-views", nonnegative_int, "views (random crops, flips, noise) of the final image as saved "
                                            "(quantized) that the meta-loss sees, the same for + and - of a "
                                            "pair (0: the inner loop's own cutouts, unquantized: bakes before views)")
    option("--es-chunk", nonnegative_int, "pairs rolled out in one batch (0: a process's whole share); lower it "
                                          "when memory runs out")
    group.add_argument("--validate-every", type=nonnegative_int, default=None,
                       help="replay the bake every K meta steps from fixed validation starts and keep it only "
                            "where it beats the best so far, which starts as the prompt itself "
                            f"(0: off; default: {GATE_EVERY} for es, off otherwise)")
    option("--validation-starts", positive_int, "starts of each validation")


def add_bake_args(parser, choose_estimator=True, es_title="es options (--meta-grad es) and the validation gate"):
    """Add the flags shared by bake.py, batch_bake.py and evaluate.py (which bakes with each estimator
    it compares, so chooses none): the bake's settings, where bakes go, and wandb."""
    g = parser.add_argument_group("bake options")
    add_bake_settings(g, choose_estimator)
    add_es_settings(parser.add_argument_group(es_title))
    g.add_argument("--baked-dir", default="baked", help="folder of baked files")
    g.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"], default="auto",
                   help="wandb logging; auto logs online when a wandb login is configured")
    g.add_argument("--wandb-project", default="staged-clip", help="wandb project name")
    g.add_argument("--log-every", type=positive_int, default=10,
                   help="log the baked and control images every N meta steps")
    return g


def add_timed_args(parser):
    """bench.py's flags of what it times: the model (random ViT-B/32 weights by default), the
    renderer at bake.py's defaults, and the bake's and the ES estimator's settings."""
    g = parser.add_argument_group("what to time")
    add_model_args(g, clip_model="random:ViT-B/32", seed=0)
    add_render_args(g, "bake.py")
    add_bake_settings(g, choose_estimator=False)
    add_es_settings(g)
    return g


def add_far_arg(parser):
    """--far: auto_microwave.py's distance beyond which it replays the folder's shared bake instead."""
    parser.add_argument("--far", type=spherical_distance, default=FAR, metavar="DISTANCE",
                        help="where the nearest baked prompt lies farther than this (spherical distance, 0 to "
                             "pi^2/2) and the folder holds a shared bake of this model, replay that for the prompt "
                             "instead")


def add_init_arg(group):
    """--init-from: a prompt's bake started from a shared bake (bake.py, batch_bake.py)."""
    group.add_argument("--init-from", default=None, metavar="SHARED.pt",
                       help="start from a shared bake (bake.py --prompts FILE): its knobs, its renderer (stages, "
                            "steps, learning rate), and its gate's first best; learn the stage directions and "
                            "corrections of the knobs")


def looks_baked(path):
    """Whether a command-line argument could name a baked file: a file that is there, or a name ending in .pt."""
    return Path(path).suffix == ".pt" or Path(path).is_file()
