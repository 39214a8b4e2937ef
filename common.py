"""Shared pieces of the staged CLIP guidance scripts (bake, microwave, auto_microwave, normal).

Everything two scripts need lives here once: loading CLIP, prompts, the losses, the
cutouts, the renderer and its differentiable twin, the bake's meta step, baked files,
image output and the command-line flags every script has.
"""

import argparse
import datetime
import functools
import hashlib
import json
import math
import netrc
import os
import random
import re
import secrets
import signal
import socket
import sys
import tempfile
import threading
import unicodedata
import warnings
import contextlib
from contextlib import contextmanager
import copy
from pathlib import Path

import torch
import torch.nn.functional as F

# The clip package imports pkg_resources, which warns on every start; the warning is
# about clip's packaging, not about anything a user can act on.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
import clip  # noqa: E402
from clip.model import CLIP, build_model  # noqa: E402

# --- constants

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CLIP_MODEL = "ViT-B/32"
STYLE_TEXT = "#pixelart simplistic 8-bit sprite art"
NEGATIVE_TEXT = "text, graffitti, words"
STYLE_WEIGHT = 0.5
NEGATIVE_WEIGHT = 0.5
LR = 0.12
SAVE_SIZE = 512
TV_WEIGHT = 1.4
STD_WEIGHT = 0.05
QUANT_LEVELS = 16
BAKED_FORMAT = "staged-clip-bake"
BAKED_VERSION = 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
DOWNLOAD_TIMEOUT = 20  # seconds; without a network the download must fail fast, not hang

# Architectures for "random:NAME": the real shapes with random weights, built offline.
# (embed_dim, image_resolution, vision_layers, vision_width, patch, context, vocab,
#  text_width, text_heads, text_layers), as in openai/CLIP's released checkpoints.
RANDOM_ARCHS = {
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
}
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Small CLIPs trained on a drawn world of coloured shapes (toy_clip.py), shipped for offline use.
TOY_MODELS = {name: Path(__file__).resolve().parent / "models" / f"{name}.pt" for name in ("toy", "toy-scorer")}


class UserError(Exception):
    """A problem with the user's input: reported as one line, without a traceback."""


def cli(main):
    """Wrap a script's main(argv) so user errors exit non-zero with one line on stderr."""

    @functools.wraps(main)
    def wrapper(argv=None):
        in_main_thread = threading.current_thread() is threading.main_thread()
        if in_main_thread:
            previous = signal.signal(signal.SIGTERM, _terminate)  # a scheduler's kill saves like Ctrl-C
        try:
            return main(argv)
        except UserError as e:
            raise SystemExit(f"error: {e}") from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except (MemoryError, RuntimeError) as e:
            message = out_of_memory_message(e)
            if message is None:
                raise
            raise SystemExit(f"error: {message}") from None
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def out_of_memory_message(error):
    """What to tell the user about an out-of-memory error, or None for any other error."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return ("out of GPU memory: lower --size or --cutn (or --steps for an unrolled bake), "
                "or use --device cpu")
    if isinstance(error, MemoryError) or "DefaultCPUAllocator" in str(error):
        return "out of memory: lower --size, --cutn or --save-size (or --steps for an unrolled bake)"
    return None


def _terminate(signum, frame):
    raise KeyboardInterrupt


def log(*parts):
    """Print a status line to stderr, above any progress bar."""
    from tqdm import tqdm
    tqdm.write(" ".join(str(p) for p in parts), file=sys.stderr)


# --- command line

def _number(cast, accept, requirement):
    """An argparse type: cast the text, then insist on accept(value)."""

    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{requirement}, got {text}")
        return value

    return parse


positive_int = _number(int, lambda v: v >= 1, "must be a whole number of at least 1")
nonnegative_int = _number(int, lambda v: v >= 0, "must be a whole number of at least 0")
nonnegative_float = _number(float, lambda v: 0 <= v < math.inf, "must be a number of at least 0")
positive_float = _number(float, lambda v: 0 < v < math.inf, "must be a positive number")
unit_float = _number(float, lambda v: 0 <= v <= 1, "must lie between 0 and 1")
decay_float = _number(float, lambda v: 0 <= v < 1, "must lie from 0 up to, not including, 1")
save_side = _number(int, lambda v: 1 <= v <= 8192, "must be a whole number from 1 to 8192")
seed_int = _number(int, lambda v: 0 <= v < 2**63, "must be a whole number from 0 to 2**63 - 1")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (not the whole usage) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the docstring's lines (its examples); show every default not already told."""

    def _get_help_string(self, action):
        if action.default is None or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def make_parser(doc):
    """An ArgumentParser that shows the script's docstring and every default."""
    return Parser(description=doc, formatter_class=Formatter)


def add_common_args(parser, *, size, steps, cutn, out="output.png", progress=True):
    """Add the flags every script has; the per-script defaults are passed in."""
    g = parser.add_argument_group("common options")
    g.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL,
                   help="CLIP model name (downloaded once), a local checkpoint path, "
                        "toy or toy-scorer (small offline models of drawn shapes, shipped here), "
                        "or random:ARCH (random weights, for timing)")
    g.add_argument("--device", default=None,
                   help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--seed", type=seed_int, default=None,
                   help="random seed (default: a fresh one, printed so the run can be repeated)")
    if out is not None:
        g.add_argument("--out", default=out, help="output PNG path")
    g.add_argument("--size", type=positive_int, default=size, help="side of the optimized image tensor")
    g.add_argument("--steps", type=positive_int, default=steps, help="Adam steps (per stage where staged)")
    g.add_argument("--lr", type=positive_float, default=LR, help="learning rate of the image optimizer")
    g.add_argument("--cutn", type=positive_int, default=cutn, help="cutouts CLIP sees per step")
    g.add_argument("--save-size", type=save_side, default=SAVE_SIZE,
                   help="side of the saved PNG (nearest-neighbour upscale)")
    g.add_argument("--no-style", dest="style", action="store_false",
                   help="turn off target shaping (style and negative texts)")
    g.add_argument("--style-text", default=STYLE_TEXT, help="text added to every target")
    g.add_argument("--negative-text", default=NEGATIVE_TEXT, help="text subtracted from every target")
    if out is not None and progress:
        g.add_argument("--save-progress", type=nonnegative_int, nargs="?", const=0, default=None, metavar="N",
                       help="also save the image every N steps (alone: after every stage; for one "
                            "stage, ten times) as frames in OUT_progress/ and an animated OUT_progress.gif")
    g.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                   help="precision of CLIP's image tower (autocast; fp16/bf16 are faster on a GPU)")
    g.add_argument("--compile", action="store_true",
                   help="compile the renderer's loss with torch.compile (slow to start, faster "
                        "per step; falls back to eager if compiling fails)")
    return g


def add_bake_args(parser, meta_grad=True):
    """Add the meta-optimization flags shared by bake.py, batch_bake.py (and evaluate.py,
    which bakes both ways and so has no --meta-grad)."""
    g = parser.add_argument_group("bake options")
    g.add_argument("--stages", type=positive_int, default=10, help="number of stages")
    g.add_argument("--meta-steps", type=positive_int, default=100, help="meta-optimization steps")
    g.add_argument("--meta-lr", type=positive_float, default=LR, help="learning rate of the stage embeddings")
    g.add_argument("--stage-reg", type=float, default=1.0,
                   help="weight of the fading 'stay near the prompt' term on the stages")
    if meta_grad:
        g.add_argument("--meta-grad", choices=["unrolled", "none"], default="unrolled",
                       help="unrolled: back-propagate the final image loss through the inner "
                            "optimization; none: the reference's behaviour (no image gradient)")
    g.add_argument("--batch", type=positive_int, default=1,
                   help="random starts rolled out together per meta step; the meta-gradient "
                        "is their mean")
    g.add_argument("--checkpoint", action="store_true",
                   help="per-stage gradient checkpointing of the unrolled rollout: memory for "
                        "one stage instead of all, for one more forward pass of each stage")
    g.add_argument("--baked-dir", default="baked", help="folder of baked files")
    g.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"], default="auto",
                   help="wandb logging; auto logs online when a wandb login is configured")
    g.add_argument("--wandb-project", default="staged-clip", help="wandb project name")
    g.add_argument("--log-every", type=positive_int, default=10,
                   help="log the baked and control images every N meta steps")
    return g


# --- setup

def pick_device(name=None):
    """The requested torch device, else cuda when available, else cpu."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}: use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but CUDA is not available here: use --device cpu")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"--device {name} cannot be used here ({str(e).splitlines()[0][:80]}): "
                        f"use --device cpu") from None
    return device


def start(args, writes_baked=False):
    """What every script does first: check its outputs, pick the device, load CLIP, seed.

    Seeding comes after loading, so a seed means the same run whatever loading drew.
    Returns (model, seed).
    """
    out = getattr(args, "out", None)
    if out is not None:
        check_output(out)
        prompt = getattr(args, "prompt", None)
        if prompt and is_image_path(prompt.strip()) and Path(prompt.strip()).resolve() == Path(out).resolve():
            raise UserError(f"--out {out} is the image prompt itself: choose another --out")
    if writes_baked:
        check_folder(args.baked_dir, "--baked-dir")
    device = pick_device(args.device)
    model = load_clip(args.clip_model, device)
    use_speed_flags(model, args)
    return model, seed_everything(args.seed)


def use_speed_flags(model, args):
    """Apply --precision and --compile to a loaded model."""
    model.set_precision(getattr(args, "precision", "fp32"))
    if getattr(args, "compile", False):
        model.use_compile()


def seed_everything(seed=None, announce=True):
    """Seed python and torch (a fresh seed when None), print it and return it."""
    if seed is None:
        seed = secrets.randbelow(2**31)
    random.seed(seed)
    torch.manual_seed(seed)
    if announce:
        print(f"seed: {seed}")
    return seed


class PatchEmbedding(torch.nn.Module):
    """A ViT's patch convolution (kernel = stride, no padding) as one matrix product.

    The same sum as the convolution, but its input gradient is a matrix product too: on a
    CPU the convolution's backward was about a tenth of an inner step (ViT-B/32, bf16).
    The weight keeps its name (`conv1.weight`), so state dicts are unchanged.
    """

    def __init__(self, conv):
        super().__init__()
        self.patch = conv.kernel_size[0]
        self.weight = conv.weight  # [width, 3, patch, patch]

    def forward(self, x):
        b, c, h, w = x.shape
        k, rows, cols = self.patch, h // self.patch, w // self.patch
        patches = x.view(b, c, rows, k, cols, k).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c * k * k)
        out = F.linear(patches, self.weight.flatten(1))  # [b, rows * cols, width]
        return out.transpose(1, 2).reshape(b, -1, rows, cols)  # [b, width, rows, cols], as the convolution

    def as_conv(self):
        """The convolution it stands for, sharing its weight."""
        conv = torch.nn.Conv2d(self.weight.shape[1], self.weight.shape[0], self.patch, self.patch, bias=False,
                               device=self.weight.device)
        conv.weight = self.weight
        return conv


def _is_patch_conv(conv):
    return (isinstance(conv, torch.nn.Conv2d) and conv.bias is None and conv.padding == (0, 0)
            and conv.kernel_size == conv.stride and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.groups == 1 and conv.dilation == (1, 1))


_NORMS = (torch.nn.LayerNorm, torch.nn.BatchNorm2d, torch.nn.GroupNorm)
# CPU flags (as Linux lists them) of instructions that multiply in bf16 or fp16: without
# them a CPU converts, and a bf16 matrix product took 40 times an fp32 one on an AVX2 CPU
NATIVE_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo, or None where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def stored_in(tower, dtype):
    """A copy of a frozen image tower whose weights, all but the normalization layers',
    are stored in dtype: what autocast would cast them to on every call.

    Under autocast a matrix product casts its fp32 weight to fp16/bf16 each time it runs
    (autocast keeps no cast of a weight that needs no gradient); on a CPU that copying
    was about 6% of a ViT-B/32 bf16 inner step. Normalization layers compute in fp32
    under autocast, so their weights stay fp32. Under autocast the copy computes exactly
    what the tower does.
    """
    low = copy.deepcopy(tower)
    for module in low.modules():
        if not isinstance(module, _NORMS):
            for name, param in module.named_parameters(recurse=False):
                setattr(module, name, torch.nn.Parameter(param.detach().to(dtype), requires_grad=False))
    return low


class Clip:
    """A frozen CLIP model with what the renderer needs to know about it.

    precision ("fp32", "fp16" or "bf16") runs CLIP's image tower under autocast; losses
    and the optimized image stay in float32. tower is the image tower the renderer runs:
    the model's own at fp32, a copy with its weights stored at the lower precision
    otherwise (stored_in; made when the precision is set, so the weights must not change
    after). compile (set by use_compile) is the torch.compile'd loss of the plain
    renderer, or None for eager.
    """

    def __init__(self, model, name, device):
        self.model = model.float().eval().requires_grad_(False).to(device)
        if _is_patch_conv(getattr(model.visual, "conv1", None)):  # a ViT (not a ModifiedResNet)
            model.visual.conv1 = PatchEmbedding(model.visual.conv1)
        self.name = name
        self.device = torch.device(device)
        self.size = model.visual.input_resolution
        self.dim = model.text_projection.shape[1]
        self.context_length = model.context_length
        self.mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
        self.precision = "fp32"
        self.tower = self.model.visual
        self._towers = {}  # lower-precision copies of the tower, made once each
        self.compiled_loss = None

    def set_precision(self, name):
        """Run the image tower in fp32, fp16 or bf16 (a UserError where the device cannot)."""
        if name != "fp32":
            try:
                with warnings.catch_warnings(), torch.autocast(self.device.type, dtype=PRECISIONS[name]):
                    warnings.simplefilter("ignore")  # autocast warns, and turns itself off, where unsupported
                    dtype = (torch.ones(2, 2, device=self.device) @ torch.ones(2, 2, device=self.device)).dtype
            except (RuntimeError, ValueError, AssertionError) as e:
                raise UserError(f"--precision {name} is not supported on {self.device.type} "
                                f"({str(e).splitlines()[0][:60]}): use --precision fp32") from None
            if dtype != PRECISIONS[name]:
                raise UserError(f"--precision {name} is not supported on {self.device.type} "
                                f"(autocast gave {dtype}): use --precision fp32")
            if name not in self._towers:  # the first time only
                self._towers[name] = stored_in(self.model.visual, PRECISIONS[name])
                flags = cpu_flags() if self.device.type == "cpu" else None
                if flags is not None and not flags.intersection(NATIVE_FLAGS[name]):
                    log(f"note: this CPU has no {name} instructions ({' or '.join(NATIVE_FLAGS[name])}), so "
                        f"--precision {name} is likely far slower than fp32 here; use --precision fp32")
        self.precision = name
        self.tower = self._towers.get(name, self.model.visual)

    @property
    def loss_scale(self):
        """What losses are multiplied by before a gradient is taken (and grads divided by).

        fp16 gradients below about 6e-8 round to zero; a pixel's gradient through the
        tower is often near that, so fp16 runs scale the loss up, as mixed-precision
        training does. Exact otherwise: the factor is a power of two.
        """
        return 1024.0 if self.precision == "fp16" else 1.0

    @functools.cached_property
    def weights_id(self):
        """A short fingerprint of the weights: a model retrained under the same name differs."""
        digest = hashlib.sha256()
        for key, value in sorted(self.model.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def made(self, baked):
        """Whether a baked file was made with this model: its name, and its weights where recorded.

        Files from before the fingerprint was recorded are matched by name alone.
        """
        return (baked.get("clip_model") == self.name
                and baked.get("clip_weights", self.weights_id) == self.weights_id)

    @contextmanager
    def autocast(self):
        """The autocast context of the image tower (does nothing at fp32).

        On a CPU in fp16/bf16 attention also runs on the math kernel: there the fused
        kernel's bf16 backward took about a sixth of a ViT-B/32 inner step (torch.profiler),
        several times the math kernel's.
        """
        if self.precision == "fp32":
            yield
            return
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.autocast(self.device.type, dtype=PRECISIONS[self.precision]))
            if self.device.type == "cpu":
                stack.enter_context(math_attention())
            yield

    def use_compile(self):
        """Compile the plain renderer's loss with torch.compile (eager again if that fails)."""
        import logging  # on a machine without CUDA, torch's C++ builder warns that it found none
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        self.compiled_loss = torch.compile(_image_loss, dynamic=False)


def _offline_hint(name):
    untrained = f", or random:{name} for untrained weights" if name in RANDOM_ARCHS else ""
    return (f"could not download CLIP model {name!r} (no network?): pass --clip-model with the path "
            f"of a local checkpoint (e.g. a copy of ~/.cache/clip/*.pt from a machine with a network)"
            f"{untrained}, or toy (a small offline model of drawn shapes)")


def _state_dict_from_file(path):
    """Read a CLIP state dict from a plain state-dict file or a TorchScript archive."""
    with warnings.catch_warnings():  # torch warns about TorchScript archives and jit.load
        warnings.simplefilter("ignore")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        if obj is None:
            try:  # openai's released checkpoints are TorchScript archives
                return torch.jit.load(path, map_location="cpu").state_dict()
            except Exception:
                pass
    raise UserError(f"{path} is not a CLIP checkpoint (a state dict or TorchScript file): "
                    f"check the path, or delete it and download again")


def load_clip(name=DEFAULT_CLIP_MODEL, device="cpu"):
    """Load a frozen CLIP by released name, local checkpoint path, or random:ARCH.

    Released names are downloaded once into ~/.cache/clip. Every failure is a UserError
    with one line saying what to do (the offline options when there is no network).
    """
    device = torch.device(device)
    if name.startswith("random:"):
        arch = name.split(":", 1)[1]
        if arch not in RANDOM_ARCHS:
            raise UserError(f"unknown architecture {arch!r} for random weights: use one of "
                            f"{', '.join('random:' + a for a in RANDOM_ARCHS)}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random model every time
            model = CLIP(*RANDOM_ARCHS[arch])
        return Clip(model, name, device)
    if name in TOY_MODELS:
        path = TOY_MODELS[name]
        if not path.is_file():
            raise UserError(f"the shipped model {path} is missing: restore it with "
                            f"'git checkout -- models' or train it with toy_clip.py")
    elif os.path.isfile(name):
        path = name
    elif name in clip.available_models():
        root = os.path.expanduser("~/.cache/clip")
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = clip.clip._download(clip.clip._MODELS[name], root)
        except (OSError, ValueError):
            raise UserError(_offline_hint(name)) from None
        except RuntimeError:  # checksum mismatch after a download
            raise UserError(f"the download of {name!r} is corrupt: delete ~/.cache/clip/*.pt "
                            f"and run again") from None
        finally:
            socket.setdefaulttimeout(old_timeout)
    else:
        raise UserError(f"unknown CLIP model {name!r}: use a path to a checkpoint file, one of "
                        f"{', '.join(clip.available_models())}, toy, toy-scorer, or random:ARCH")
    state = {k: v.float() for k, v in _state_dict_from_file(path).items()}
    try:
        model = build_model(dict(state)).float()
        model.load_state_dict({k: v for k, v in state.items()
                               if k not in ("input_resolution", "context_length", "vocab_size")})
    except Exception as e:
        raise UserError(f"{path} does not hold CLIP weights ({type(e).__name__}): "
                        f"pass a CLIP checkpoint") from None
    return Clip(model, name, device)


@contextmanager
def rng_aside(device):
    """Run a block without moving the random streams the rest of the run draws from."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        yield
    random.setstate(state)


@contextmanager
def math_attention():
    """Run attention on the math kernel: the fused kernels have no double backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        yield


# --- prompts and embeddings

def embed_texts(model, texts):
    """Unit CLIP embeddings of a list of texts: [n, D]."""
    try:
        tokens = clip.tokenize(texts, context_length=model.context_length)
    except RuntimeError:
        long = max(texts, key=len)
        raise UserError(f"prompt too long for CLIP's {model.context_length}-token context: "
                        f"shorten {long[:40]!r}...") from None
    with torch.no_grad():
        return F.normalize(model.model.encode_text(tokens.to(model.device)).float(), dim=-1)


def embed_images(model, images):
    """Unit CLIP embeddings of images in [0, 1] at CLIP's input side: [n, D]."""
    with model.autocast():
        embeds = model.tower((images - model.mean) / model.std)  # CLIP's encode_image, on model.tower
    return F.normalize(embeds.float(), dim=-1)


def is_image_path(text):
    """Whether a prompt names an image file (existing or not, judged by its suffix)."""
    return Path(text).suffix.lower() in IMAGE_SUFFIXES and "|" not in text


def load_image(path, side):
    """An image file as a [1, 3, side, side] tensor in [0, 1] (resized, centre-cropped)."""
    from PIL import Image, UnidentifiedImageError
    import torchvision.transforms.functional as TF
    if not os.path.isfile(path):
        raise UserError(f"image prompt {path} not found: check the path")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise UserError(f"cannot read image {path}: pass a PNG or JPEG file of reasonable size") from None
    im = TF.center_crop(TF.resize(im, side, antialias=True), side)
    return TF.to_tensor(im).unsqueeze(0)  # [1, 3, side, side]


def parse_prompt(text):
    """Split "a red apple | green:0.5 | text:-1" into [(text, weight), ...].

    A weight is read from the right of each part, so a colon inside the text survives:
    "a clock: noon" is one part of weight 1, "photo: x:2" is ("photo: x", 2.0). Only a
    number after the last colon is a weight: "time: 12:30" is ("time: 12", 30.0).
    """
    parts = []
    for part in text.split("|"):
        body, sep, tail = part.rpartition(":")
        weight = 1.0
        if sep:
            try:
                weight = float(tail)
                part = body
            except ValueError:
                pass
            if not math.isfinite(weight):
                raise UserError(f"the weight {tail.strip()!r} in {text!r} is not a finite number: "
                                f"use e.g. :0.5 or :-1")
        part = part.strip()
        if part:
            parts.append((part, weight))
    if not parts:
        raise UserError("empty prompt: give some text, e.g. \"a red apple\", or an image file")
    return parts


class Prompt:
    """What a prompt asks for: a unit embedding, and for an image prompt its pixels."""

    def __init__(self, text, kind, embed, image=None):
        self.text, self.kind, self.embed, self.image = text, kind, embed, image


def load_prompt(model, text):
    """Embed a prompt: an image file, or text with optional weighted parts."""
    if is_image_path(text.strip()):
        image = load_image(text.strip(), model.size).to(model.device)
        with torch.no_grad():
            return Prompt(text.strip(), "image", embed_images(model, image)[0], image)
    parts = parse_prompt(text)
    texts = [p for p, _ in parts]
    weights = torch.tensor([w for _, w in parts], device=model.device)
    mixed = (weights[:, None] * embed_texts(model, texts)).sum(0)
    if mixed.norm() < 1e-6:
        raise UserError(f"the weights of {text!r} cancel out: change them so they do not sum to nothing")
    return Prompt(text.strip(), "text", F.normalize(mixed, dim=-1))


def style_shift(model, style=True, style_text=STYLE_TEXT, negative_text=NEGATIVE_TEXT):
    """The vector added to every target: +0.5 style, -0.5 negative (zero with style off)."""
    if not style:
        return torch.zeros(model.dim, device=model.device)
    style_e, negative_e = embed_texts(model, [style_text, negative_text])
    return STYLE_WEIGHT * style_e - NEGATIVE_WEIGHT * negative_e


def shape_targets(stages, shift):
    """Targets from stage embeddings: unit stage + style shift; [S, D].

    The reference adds the style texts to raw vectors, so a stage's arbitrary length
    decided how much the style counted; mixing unit vectors keeps the 0.5 weights honest.
    """
    return F.normalize(stages, dim=-1) + shift


def lerp_unit(a, b, t):
    """Linear mix of the unit vectors of a and b: (1 - t) * a^ + t * b^."""
    return torch.lerp(F.normalize(a, dim=-1), F.normalize(b, dim=-1), t)


# --- losses

def spherical_distance(x, y):
    """Half the squared angle between x and y, computed as 2 * arcsin(|x^ - y^| / 2)^2.

    Orthogonal vectors lie pi / 2 apart, so their distance is (pi / 2)^2 / 2 = pi^2 / 8;
    identical directions give 0, opposite ones pi^2 / 2.
    """
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).clamp(max=1).arcsin().pow(2).mul(2)


def total_variation(z):
    """Mean squared difference of vertical and of horizontal neighbours, per image: [B]."""
    dy = (z[:, :, 1:, :] - z[:, :, :-1, :]).pow(2).mean((1, 2, 3))
    dx = (z[:, :, :, 1:] - z[:, :, :, :-1]).pow(2).mean((1, 2, 3))
    return dx + dy


def to_image(z):
    """The shown image of a tensor z: clamp(z / 2 + 0.5, 0, 1)."""
    return z.div(2).add(0.5).clamp(0, 1)


# --- cutouts

def _affine(scale, angle, shift_x, shift_y, flip):
    """Batched 2x3 sampling matrices (normalized coordinates): [n, 2, 3]."""
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    row0 = torch.stack([cos * flip, -sin, shift_x], dim=-1)
    row1 = torch.stack([sin * flip, cos, shift_y], dim=-1)
    return torch.stack([row0, row1], dim=1)


def draw_cutouts(batch, cutn, height, side, device):
    """The random choices of one make_cutouts call, drawn on the device: a dict of tensors.

    Drawn apart from the maths that uses them, so that a compiled loss sees the same
    randomness as the eager one, and nothing is decided on the host (no device sync).
    """
    dev = torch.device(device)
    if cutn == 1:
        return {"resize": torch.rand(batch, device=dev) < 0.5}
    n_crop = round(cutn * 0.8)
    n = batch * cutn
    crop = torch.arange(cutn, device=dev).repeat(batch) < n_crop  # [n]: crop or whole image
    lo = min(height, side) / height
    scale = torch.where(crop, lo + (1 - lo) * torch.rand(n, device=dev), torch.ones(n, device=dev))
    max_angle = torch.where(crop, torch.full((n,), 15.0, device=dev), torch.full((n,), 10.0, device=dev))
    angle = (torch.rand(n, device=dev) * 2 - 1) * max_angle * math.pi / 180
    # a crop's centre may sit anywhere that keeps the crop inside, plus up to 10% shift
    # (0.2 in [-1, 1] coordinates)
    jitter = crop.float() * 0.2
    shift = (torch.rand(2, n, device=dev) * 2 - 1) * ((1 - scale) + jitter)
    flip = torch.where(crop & (torch.rand(n, device=dev) < 0.5), -1.0, 1.0)
    noise = (crop.float() * 0.05 * torch.rand(n, device=dev)).view(n, 1, 1, 1)
    return {"theta": _affine(scale, angle, shift[0], shift[1], flip),  # [n, 2, 3]
            "noise": noise * torch.randn(n, 3, side, side, device=dev),
            "gray": (torch.rand(n, device=dev) < 0.2).view(n, 1, 1, 1)}


def make_cutouts(images, side, cutn, draws=None):
    """What CLIP sees of a batch of images in [0, 1]: [B * cutn, 3, side, side].

    cutn = 1: the whole image, resized to `side` half of the time, then average-pooled
    to `side`. cutn > 1: about 80% random square crops (side between min(H, side) and H)
    with flips, noise, affine jitter (15 degrees, 10% shift) and grayscale; the rest the
    whole image rotated by up to 10 degrees; about 20% of each group grayscale. All
    cutouts come from one grid_sample call. draws: the random choices (draw_cutouts),
    drawn here when not given.
    """
    b, _, h, _ = images.shape  # square images
    if draws is None:
        draws = draw_cutouts(b, cutn, h, side, images.device)
    if cutn == 1:
        pooled = F.adaptive_avg_pool2d(images, side)
        if h == side:
            return pooled
        resized = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
        return torch.where(draws["resize"].view(b, 1, 1, 1), resized, pooled)
    n = b * cutn
    source = images.repeat_interleave(cutn, dim=0)  # [n, 3, H, W]
    grid = F.affine_grid(draws["theta"], [n, 3, side, side], align_corners=False)
    cuts = F.grid_sample(source, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    cuts = cuts + draws["noise"]
    luma = (cuts * torch.tensor([0.299, 0.587, 0.114], device=cuts.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return torch.where(draws["gray"], luma.expand_as(cuts), cuts)


# --- the renderer

def _image_loss(model, z, target, cutn, draws):
    b = z.shape[0]
    cuts = make_cutouts(to_image(z), model.size, cutn, draws)  # [B * cutn, 3, R, R]
    embeds = embed_images(model, cuts).view(b, cutn, -1)  # [B, cutn, D]
    clip_loss = spherical_distance(embeds, target.view(-1, 1, embeds.shape[-1])).mean(1)
    out_of_range = (z - z.clamp(-1, 1)).pow(2).mean((1, 2, 3))
    spread = (z.flatten(1).std(1) - 1).pow(2)
    return (clip_loss + out_of_range + TV_WEIGHT * total_variation(z) + STD_WEIGHT * spread).sum()


def image_loss(model, z, target, cutn, draws=None):
    """The reference's loss of a batch of images z toward target(s), summed over the batch.

    Per image: spherical distance of CLIP's cutout embeddings to the target, + the
    out-of-range penalty, + 1.4 * total variation, + 0.05 * (std(z) - 1)^2.
    """
    if draws is None:
        draws = draw_cutouts(z.shape[0], cutn, z.shape[-1], model.size, z.device)
    return _image_loss(model, z, target, cutn, draws)


def _loss_and_grad(model, z, target, cutn):
    """The loss of a leaf z and its gradient, through the compiled loss when there is one."""
    draws = draw_cutouts(z.shape[0], cutn, z.shape[-1], model.size, z.device)
    scale = model.loss_scale
    if model.compiled_loss is not None:
        try:
            loss = model.compiled_loss(model, z, target, cutn, draws)
            return loss, torch.autograd.grad(loss * scale, z)[0] / scale
        except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, say so once
            if isinstance(e, (KeyboardInterrupt, torch.OutOfMemoryError)):
                raise
            log(f"--compile failed ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}); "
                f"running eager")
            model.compiled_loss = None
    loss = _image_loss(model, z, target, cutn, draws)
    return loss, torch.autograd.grad(loss * scale, z)[0] / scale


def adamw_step(z, grad, m, v, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
    """One AdamW step written as plain tensor maths, so autograd can go through it.

    The same update as torch.optim.AdamW with its defaults: decoupled weight decay, then
    the bias-corrected Adam step. Returns (z, m, v).
    """
    b1, b2 = betas
    z = z * (1 - lr * weight_decay)
    m = m * b1 + grad * (1 - b1)
    v = v * b2 + grad * grad * (1 - b2)
    # clamp: sqrt has an infinite derivative at 0, which would poison the meta-gradient
    denom = (v / (1 - b2**t)).clamp_min(1e-30).sqrt() + eps
    return z - (lr / (1 - b1**t)) * m / denom, m, v


def fast_adamw(params, lr):
    """torch's AdamW with its defaults, fused on CUDA, foreach elsewhere: one launch a step."""
    if params[0].device.type == "cuda":
        return torch.optim.AdamW(params, lr=lr, fused=True)
    return torch.optim.AdamW(params, lr=lr, foreach=True)


class _Renormalize(torch.autograd.Function):
    """The identity, whose backward divides each image's incoming gradient by its norm."""

    @staticmethod
    def forward(ctx, z):
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        norm = grad.flatten(1).norm(dim=1).view(-1, *[1] * (grad.dim() - 1))  # per image
        return grad / torch.where(norm > 0, norm, torch.ones_like(norm))


def _stage_plain(model, z, target, steps, lr, cutn, stage, callback):
    """One stage of the renderer, nothing kept for a meta-gradient: a fresh fast AdamW on z."""
    z = z.detach().clone().requires_grad_()
    optimizer = fast_adamw([z], lr)
    for t in range(1, steps + 1):
        with torch.enable_grad():  # the inner loop needs gradients even under a caller's no_grad
            loss, z.grad = _loss_and_grad(model, z, target, cutn)
        optimizer.step()
        if callback is not None:
            callback(stage, t, loss.detach(), z.detach())
    return z.detach()


def _stage_unrolled(model, z, target, steps, lr, cutn, create_graph, stage=0, callback=None):
    """One stage with AdamW as plain tensor maths; with create_graph it stays differentiable."""
    m = torch.zeros_like(z)
    v = torch.zeros_like(z)
    for t in range(1, steps + 1):
        with torch.enable_grad():
            if not create_graph:
                z = z.detach().requires_grad_()
            loss = image_loss(model, z, target, cutn)
            (grad,) = torch.autograd.grad(loss * model.loss_scale, z, create_graph=create_graph)
            grad = grad / model.loss_scale
        with torch.set_grad_enabled(create_graph):
            z, m, v = adamw_step(z, grad, m, v, t, lr)
        if callback is not None:
            callback(stage, t, loss.detach(), z.detach())
    return z if create_graph else z.detach()


class _CheckpointedStage(torch.autograd.Function):
    """A differentiable stage that keeps only its input: the backward runs it again.

    The forward runs the stage without a graph; the backward restores the random state
    the forward started from, reruns the stage with its graph and back-propagates through
    it. Memory: one stage's graph at a time instead of every stage's.
    """

    @staticmethod
    def forward(ctx, z, target, run, callback):
        ctx.run = run
        ctx.rng = _rng_state(z.device)
        ctx.save_for_backward(z, target)
        return run(z, target, False, callback)

    @staticmethod
    def backward(ctx, grad):
        z, target = ctx.saved_tensors
        with torch.random.fork_rng(devices=_cuda_devices(z.device)), torch.enable_grad():
            _set_rng_state(z.device, ctx.rng)
            z_in, target_in = z.detach().requires_grad_(), target.detach().requires_grad_()
            out = ctx.run(z_in, target_in, True, None)
            grad_z, grad_target = torch.autograd.grad(out, (z_in, target_in), grad)
        return grad_z, grad_target, None, None


def _cuda_devices(device):
    return [device] if device.type == "cuda" else []


def _rng_state(device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(device, state):
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def rollout(model, z, targets, steps, lr, cutn, create_graph=False, callback=None, renormalize=False,
            checkpoint=False):
    """Optimize images z [B, 3, H, W] through the stages, one target [D] (or [B, D]) each.

    A fresh AdamW starts every stage (the reference makes a new optimizer per stage);
    z carries over. With create_graph the whole optimization stays differentiable, so a
    loss on the returned z reaches the targets (and what they were made from).
    callback(stage, step, loss, z) is called after every step with detached tensors.
    Without create_graph the fast path runs: torch's fused (or foreach) AdamW and the
    compiled loss when the model has one.

    renormalize (with create_graph): the gradient flowing back into each stage from the
    next is divided by its norm, image by image. The exact meta-gradient grows about
    100-fold per stage going backwards (each fresh Adam's first steps are nearly sign
    steps, whose derivative is huge where a pixel's gradient is near zero) and overflows
    float32 within ten stages; renormalized, every stage's gradient keeps its exact
    direction, only its length changes.

    checkpoint (with create_graph): keep only each stage's input and rerun the stage
    during the backward (the same random draws), so memory holds one stage's graph.
    """
    if not create_graph:
        targets = targets.detach()
        for i, target in enumerate(targets):
            z = _stage_plain(model, z, target, steps, lr, cutn, i, callback)
        return z
    if not z.requires_grad:
        z = z.detach().requires_grad_()
    for i, target in enumerate(targets):
        if renormalize and i > 0:
            z = _Renormalize.apply(z)
        if checkpoint:
            def run(z_in, target_in, graph, report, i=i):
                return _stage_unrolled(model, z_in, target_in, steps, lr, cutn, graph, i, report)
            z = _CheckpointedStage.apply(z, target, run, callback)
        else:
            z = _stage_unrolled(model, z, target, steps, lr, cutn, True, i, callback)
    return z


def render(model, targets, args, desc):
    """Run the staged renderer from a fresh start with a progress bar.

    Ctrl-C stops it and returns the image so far, so the script still saves something.
    """
    from tqdm import tqdm
    latest = [random_start(args.size, model.device)]
    bar = tqdm(total=len(targets) * args.steps, desc=desc, dynamic_ncols=True)
    progress = Progress.of(args, len(targets), latest[0], args.out)

    def report(stage, step, loss, z):
        latest[0] = z
        bar.update(1)
        if step % 10 == 0 or step == args.steps:  # .item() waits for the device: not every step
            bar.set_postfix(stage=f"{stage + 1}/{len(targets)}", loss=f"{loss.item():.4f}")
        if progress is not None:
            progress.step(stage, step, z)

    try:
        return rollout(model, latest[0], targets, args.steps, args.lr, args.cutn, callback=report)
    except KeyboardInterrupt:
        log("interrupted: saving the image so far")
        return latest[0].detach()
    finally:
        bar.close()
        if progress is not None:
            progress.save()


class Progress:
    """The frames of a run for --save-progress: the start, then every N steps or each stage's end.

    Each frame is written as it is made (OUT_progress/NNNN.png; frames of an earlier run
    there are removed first), and save() makes OUT_progress.gif of them.
    """

    def __init__(self, every, stages, steps, save_size, start, out):
        if every == 0:  # after every stage; a single stage is cut into ten
            every = steps if stages > 1 else max(1, steps // 10)
        self.every, self.steps, self.save_size = every, steps, save_size
        out = Path(out)
        self.folder, self.gif = out.with_name(out.stem + "_progress"), out.with_name(out.stem + "_progress.gif")
        for old in self.folder.glob("[0-9][0-9][0-9][0-9].png"):
            old.unlink()
        self.count = 0
        self.add(start)

    @classmethod
    def of(cls, args, stages, start, out):
        """The Progress a script's args ask for, or None."""
        if getattr(args, "save_progress", None) is None:
            return None
        return cls(args.save_progress, stages, args.steps, args.save_size, start, out)

    def add(self, z):
        from PIL import Image
        image = Image.fromarray(to_pixels(z, self.save_size))
        atomic_write(self.folder / f"{self.count:04d}.png", lambda tmp: image.save(tmp, format="PNG"))
        self.count += 1

    def step(self, stage, step, z):
        if (stage * self.steps + step) % self.every == 0:
            self.add(z)

    def save(self):
        """Write OUT_progress.gif of the frames; returns its path."""
        from PIL import Image
        images = [Image.open(self.folder / f"{i:04d}.png") for i in range(self.count)]
        try:
            atomic_write(self.gif, lambda tmp: images[0].save(tmp, format="GIF", save_all=True,
                                                              append_images=images[1:], duration=200, loop=0))
        finally:
            for image in images:
                image.close()
        log(f"progress: {self.count} frames in {self.folder}/ and {self.gif}")
        return self.gif


def random_start(size, device, batch=1):
    """A fresh image tensor drawn from a standard normal: [batch, 3, size, size]."""
    return torch.randn(batch, 3, size, size, device=device)


# --- baking (meta-optimization of the stage embeddings)

def bake_loss(model, z, prompt, cutn):
    """How far each final image z is from the prompt (plus pixel MSE for an image prompt): [B]."""
    b = z.shape[0]
    image = to_image(z)
    embeds = embed_images(model, make_cutouts(image, model.size, cutn)).view(b, cutn, -1)
    loss = spherical_distance(embeds, prompt.embed).mean(1)
    if prompt.image is not None:
        resized = F.interpolate(image, size=prompt.image.shape[-2:], mode="bilinear", align_corners=False)
        loss = loss + (resized - prompt.image).pow(2).mean((1, 2, 3))
    return loss


def stage_regularizer(stages, prompt_embed, progress):
    """The fading 'stay near the prompt' term: sum_i d(stage_i, p) / S * (1 - progress) * (1 - i / S)."""
    s = stages.shape[0]
    fade = 1 - torch.arange(s, device=stages.device) / s
    return (spherical_distance(stages, prompt_embed) * fade).sum() / s * (1 - progress)


def meta_step(model, stages, optimizer, prompt, shift, cfg, progress):
    """One meta step: roll out the stages from fresh starts, score the final images, update.

    cfg holds size, steps, lr, cutn, stage_reg, meta_grad ("unrolled" or "none") and
    optionally batch (random starts rolled out together; the meta-gradient is the mean
    of theirs) and checkpoint (rerun each stage in the backward instead of keeping it).
    Returns (meta loss as a float, final z [batch, 3, size, size]).
    """
    batch = cfg.get("batch", 1)
    z = random_start(cfg["size"], model.device, batch)
    unrolled = cfg["meta_grad"] == "unrolled"
    with math_attention():
        targets = shape_targets(stages, shift)
        z = rollout(model, z, targets, cfg["steps"], cfg["lr"], cfg["cutn"], create_graph=unrolled,
                    renormalize=True, checkpoint=cfg.get("checkpoint", False))
        with torch.set_grad_enabled(unrolled):
            image_losses = bake_loss(model, z, prompt, cfg["cutn"])  # [batch]
        regularizer = 0.0
        if cfg["stage_reg"]:
            regularizer = cfg["stage_reg"] * stage_regularizer(stages, prompt.embed, progress)
        loss = image_losses.mean() + regularizer
        optimizer.zero_grad(set_to_none=True)
        # Summed, each start's gradient reaches its stage boundaries exactly as if it were
        # rolled out alone (renormalize works image by image); the mean is taken after.
        total = image_losses.sum() + batch * regularizer
        if total.requires_grad:
            (total * model.loss_scale).backward()
            if batch > 1 or model.loss_scale != 1:
                stages.grad.div_(batch * model.loss_scale)
    value = loss.item()
    if not math.isfinite(value):
        raise UserError("the meta loss became NaN: lower --meta-lr or --lr")
    if stages.grad is not None:
        overflowed = ~stages.grad.isfinite().all(1)
        if overflowed.any():  # a stage whose gradient overflowed sits this step out
            stages.grad[overflowed] = 0
            log(f"meta-gradient overflowed for stage(s) {(overflowed.nonzero()[:, 0] + 1).tolist()}: "
                f"not updated this step (fewer --steps per stage avoids it)")
    optimizer.step()
    return value, z.detach()


# --- baked files

def slugify(text, limit=80):
    """A file-name-safe slug: 'A cat / dog!' -> 'a_cat_dog'."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit].strip("_")
    return slug or "prompt"


def baked_path(baked_dir, prompt, name=None):
    """Where a prompt's bake goes: <baked_dir>/<slug>.pt; --name must be a plain name.

    A prompt that its slug does not spell out exactly ("A cat / dog" -> "a_cat_dog")
    gets a short hash of the prompt appended, so two such prompts never share a file.
    The prompt itself is always read from the file's metadata, never from its name.
    """
    if name is not None:
        stem = name[:-3] if name.endswith(".pt") else name
        if not stem or stem.startswith(".") or "/" in stem or "\\" in stem or "\0" in stem:
            raise UserError(f"--name {name!r} must be a plain file name, without folders")
    else:
        stem = slugify(Path(prompt).stem if is_image_path(prompt) else prompt)
        if stem.replace("_", " ") != prompt:  # the slug lost something (case, punctuation, a folder)
            stem += "-" + hashlib.sha1(prompt.encode()).hexdigest()[:8]  # so names stay apart
    return Path(baked_dir) / f"{stem}.pt"


def atomic_write(path, write):
    """Call write(tmp_path), then move the finished file into place in one step."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or type(e).__name__}): choose another place") from None
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, (OSError, RuntimeError)):  # a full disk shows as either
            raise UserError(f"cannot write {path} ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__}): "
                            f"free some space or choose another place") from None
        raise


def write_text(path, text):
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_baked(path, *, stages, prompt, clip_model, config, history, complete, clip_weights=None):
    """Atomically write a baked file (a plain dict, loadable with weights_only=True).

    clip_weights: the model's weights_id, so that a bake is known not to match a model
    retrained under the same name.
    """
    data = {
        "format": BAKED_FORMAT,
        "version": BAKED_VERSION,
        "prompt": prompt.text,
        "prompt_type": prompt.kind,
        "clip_model": clip_model,
        **({} if clip_weights is None else {"clip_weights": clip_weights}),
        "embed_dim": int(stages.shape[1]),
        "stages": stages.detach().float().cpu().clone(),  # [S, D]
        "prompt_embed": prompt.embed.detach().float().cpu().clone(),  # [D]
        "config": dict(config),
        "history": [float(x) for x in history],
        "complete": bool(complete),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write(path, lambda tmp: torch.save(data, tmp))


def load_baked(path, embed_dim=None):
    """Read a baked file safely (weights_only): a dict as written by save_baked.

    Also reads the reference's bare [S, D] tensors (CUDA or requires_grad included);
    their prompt is the file name with underscores turned back into spaces. With
    embed_dim, stages of another width are refused. Anything else is a UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"baked file {path} not found: check the path, or bake it with bake.py")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = "it holds pickled code, which is never run" if "Unsupported" in str(e) or \
            "global" in str(e).lower() else type(e).__name__
        raise UserError(f"{path} is not a readable baked file ({reason}): bake it again with bake.py") from None
    if isinstance(obj, torch.Tensor):
        obj = {"format": "legacy", "version": 0, "prompt": path.stem.replace("_", " "),
               "prompt_type": "text", "stages": obj}
    elif not (isinstance(obj, dict) and obj.get("format") == BAKED_FORMAT):
        raise UserError(f"{path} is not a baked file: bake it with bake.py")
    problem = _baked_problem(obj)
    if problem:
        raise UserError(f"{path} is a damaged baked file ({problem}): bake it again with bake.py")
    if obj.get("version", BAKED_VERSION) > BAKED_VERSION:
        raise UserError(f"{path} has baked-file version {obj['version']}, newer than this tool "
                        f"reads ({BAKED_VERSION}): update the scripts")
    obj = {"clip_model": None, "config": {}, "history": [], "complete": True, "created": None, **obj}
    obj["embed_dim"] = obj["stages"].shape[1]
    obj["stages"] = obj["stages"].detach().float()
    obj["path"] = str(path)
    if embed_dim is not None:
        check_stage_width(obj, embed_dim)
    return obj


def _baked_problem(obj):
    """What is wrong with a baked dict's fields, or None."""
    stages = obj.get("stages")
    if not isinstance(stages, torch.Tensor) or stages.dim() != 2 or not stages.is_floating_point():
        shape = list(stages.shape) if isinstance(stages, torch.Tensor) else type(stages).__name__
        return f"stages are {shape}, not a float tensor [S, D]"
    if stages.shape[0] < 1 or stages.shape[1] < 1:
        return f"stages of shape {list(stages.shape)} are empty"
    if not torch.isfinite(stages).all():
        return "stages hold NaN or infinity"
    expected = {"prompt": str, "prompt_type": str, "version": int, "complete": bool,
                "config": dict, "history": list}
    for key, kind in expected.items():
        if key in ("prompt", "prompt_type") and key not in obj:
            return f"no {key}"
        if key in obj and not isinstance(obj[key], kind):
            return f"{key} is a {type(obj[key]).__name__}, not a {kind.__name__}"
    if obj["prompt_type"] not in ("text", "image"):
        return f"prompt_type {obj['prompt_type']!r} is not text or image"
    embed = obj.get("prompt_embed")
    if embed is not None and not (isinstance(embed, torch.Tensor) and embed.shape == stages.shape[1:]
                                  and torch.isfinite(embed).all()):
        return "prompt_embed is not a finite vector of the stages' width"
    return None


def check_stage_width(baked, embed_dim):
    """Refuse stages whose width differs from the model's embedding width."""
    width = baked["stages"].shape[1]
    if width != embed_dim:
        made_with = f" (baked with {baked['clip_model']})" if baked.get("clip_model") else ""
        raise UserError(f"{baked['path']} has stages of width {width}{made_with}, but this CLIP model "
                        f"embeds in {embed_dim}: pass the --clip-model it was baked with")


def load_baked_dir(baked_dir):
    """Every readable baked file in a folder; the others are skipped, saying so."""
    folder = Path(baked_dir)
    if not folder.is_dir():
        raise UserError(f"baked folder {folder} not found: bake some prompts first (bake.py, "
                        f"batch_bake.py) or pass --baked-dir")
    bakes = []
    for path in sorted(folder.glob("*.pt")):
        try:
            bakes.append(load_baked(path))
        except UserError as e:
            log(f"skipping: {e}")
    if not bakes:
        raise UserError(f"no usable baked files in {folder}: bake some with bake.py or batch_bake.py")
    return bakes


# --- image output

def quantize(image, levels=QUANT_LEVELS):
    """The pixel-art look: 16 levels, then a contrast stretch x * 1.1 - 0.1 (clamped)."""
    image = torch.round(image * (levels - 1)) / (levels - 1)
    return (image * 1.1 - 0.1).clamp(0, 1)


def check_folder(folder, flag):
    """Fail before any work when files cannot be made in folder (created if missing)."""
    folder = Path(folder)
    existing = next(p for p in [folder, *folder.parents] if p.exists())  # "." or "/" at worst
    if not existing.is_dir():
        raise UserError(f"{flag}: {existing} is a file, not a folder: choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: cannot write in {existing}: choose another {flag}")


def check_file(path, flag):
    """Fail before any work when an output file cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: give a file name")
    check_folder(path.parent, flag)


def check_output(path):
    """Fail before any work when the output PNG cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--out {path} is a folder: give a file name such as {path / 'output.png'}")
    if path.suffix.lower() != ".png":
        raise UserError(f"--out {path} must end in .png (the PNG records how it was made)")
    check_folder(path.parent, "--out")


def to_pixels(z, side=None):
    """The first image of z as saved: quantized, optionally nearest-upscaled; [H, W, 3] uint8."""
    image = quantize(to_image(z.detach()[:1].float()))
    if side is not None:
        image = F.interpolate(image, size=(side, side), mode="nearest")  # [1, 3, side, side]
    return image[0].permute(1, 2, 0).mul(255).round().byte().cpu().numpy()


def save_image(path, z, save_size, info):
    """Save z as a quantized, nearest-upscaled PNG; info goes into its text chunks."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    array = to_pixels(z, save_size)
    meta = PngInfo()
    for key, value in info.items():
        meta.add_text(key, value if isinstance(value, str) else json.dumps(value))
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG", pnginfo=meta))


def run_info(script, args, seed, **extra):
    """What a PNG records about its making: script, prompt, seed, model, settings."""
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    return {"software": f"staged-clip {script}", "seed": str(seed), "clip_model": args.clip_model,
            "settings": settings, **extra}


# --- logging

def wandb_mode(choice):
    """Resolve --wandb: auto is online with a configured login, else disabled (with a hint)."""
    if choice == "auto":
        choice = os.environ.get("WANDB_MODE", "online")
        if choice not in ("online", "offline", "disabled"):
            choice = "online"
        if choice == "online" and not _wandb_logged_in():  # wandb would ask for a login
            log("wandb: no login found, not logging (run `wandb login`, or pass --wandb offline)")
            return "disabled"
        return choice
    if choice == "online" and not _wandb_logged_in():
        raise UserError("--wandb online needs a wandb login: run `wandb login` or set WANDB_API_KEY, "
                        "or use --wandb offline")
    return choice


def _wandb_logged_in():
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def start_wandb(mode, project, name, config):
    """A wandb run, or None when disabled or when wandb cannot start (never prompts)."""
    if mode == "disabled":
        return None
    try:
        import wandb
        return wandb.init(project=project, name=name, config=config, mode=mode, reinit="finish_previous",
                          settings=wandb.Settings(silent=True, init_timeout=60, console="off"))
    except Exception as e:  # logging is a help, never a reason to lose a bake
        log(f"wandb: could not start ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"baking without logging")
        return None


def wandb_image(z, caption):
    """A wandb.Image of z as it would be saved (quantized)."""
    import wandb
    return wandb.Image(to_pixels(z), caption=caption)


# --- the bake driver (shared by bake.py and batch_bake.py)

class BakeInterrupted(Exception):
    """Ctrl-C during a bake; .path is the file saved (None before any step), .complete its state."""

    def __init__(self, path, complete=False):
        super().__init__(path)
        self.path, self.complete = path, complete

    def message(self, rest=""):
        """What to tell the user."""
        if self.complete:
            saved = f"the bake is complete and saved to {self.path}; its preview image was not written"
        elif self.path:
            saved = f"the stages learned so far are saved to {self.path} (marked incomplete)"
        else:
            saved = "no meta step had finished, so nothing was saved"
        return f"interrupted: {saved}{rest}"


def bake_config(args, seed):
    """The settings a baked file records."""
    return {"size": args.size, "steps": args.steps, "lr": args.lr, "cutn": args.cutn,
            "stages": args.stages, "meta_steps": args.meta_steps, "meta_lr": args.meta_lr,
            "stage_reg": args.stage_reg, "meta_grad": args.meta_grad, "batch": args.batch,
            "checkpoint": args.checkpoint, "precision": args.precision, "seed": seed,
            "style": args.style, "style_text": args.style_text, "negative_text": args.negative_text}


def bake_prompt(model, prompt, shift, args, seed, path, out, position=0):
    """Bake one prompt: meta-optimize its stages, save them to path and a preview to out.

    args.wandb must already be resolved by wandb_mode (so a bad choice fails before work).
    Ctrl-C saves the stages learned so far, marked incomplete, and raises BakeInterrupted.
    Returns the meta-loss history.
    """
    from tqdm import tqdm
    cfg = bake_config(args, seed)
    stages = torch.randn(args.stages, model.dim, device=model.device).requires_grad_()
    optimizer = torch.optim.AdamW([stages], lr=args.meta_lr)
    run = start_wandb(args.wandb, args.wandb_project, prompt.text[:64],
                      {**cfg, "prompt": prompt.text, "clip_model": args.clip_model})
    if run is None:
        args.wandb = "disabled"  # after one failed start, later bakes of a batch do not wait again
    control = None
    if run is not None:  # plain optimization toward the prompt, same total steps
        with rng_aside(model.device):  # a seed bakes the same stages with or without logging
            control = rollout(model, random_start(args.size, model.device), (prompt.embed + shift)[None],
                              args.steps * args.stages, args.lr, args.cutn)
    history = []

    def save(complete):
        save_baked(path, stages=stages, prompt=prompt, clip_model=args.clip_model, config=cfg,
                   history=history, complete=complete, clip_weights=model.weights_id)

    bar = tqdm(range(args.meta_steps), desc=prompt.text[:30], position=position, leave=position == 0,
               dynamic_ncols=True)
    try:
        for step in bar:
            loss, z = meta_step(model, stages, optimizer, prompt, shift, cfg, step / args.meta_steps)
            history.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}")
            if run is not None:
                record = {"meta_loss": loss}
                if step % args.log_every == 0 or step == args.meta_steps - 1:
                    record["baked"] = wandb_image(z, f"meta step {step}")
                    record["control"] = wandb_image(control, "plain optimization")
                run.log(record, step=step)
    except KeyboardInterrupt:
        if history:
            save(complete=False)
        raise BakeInterrupted(path if history else None) from None
    except UserError as e:  # a NaN loss: the stages from before it are still worth keeping
        if history:
            save(complete=False)
            raise UserError(f"{e} (the {len(history)} meta step(s) before it are saved to {path}, "
                            f"marked incomplete)") from None
        raise
    finally:
        bar.close()
        if run is not None:
            run.finish()
    save(complete=True)
    start = random_start(args.size, model.device)
    progress = Progress.of(args, args.stages, start, out)
    try:
        z = rollout(model, start, shape_targets(stages, shift), args.steps, args.lr, args.cutn,
                    callback=progress and (lambda stage, step, loss, z: progress.step(stage, step, z)))
    except KeyboardInterrupt:
        raise BakeInterrupted(path, complete=True) from None
    if progress is not None:
        progress.save()
    save_image(out, z, args.save_size, run_info("bake.py", args, seed, prompt=prompt.text,
                                                  baked_file=str(path)))
    return history
