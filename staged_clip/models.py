"""CLIP: loading it (released, local, shipped toy or random weights), freezing it, and its precision."""

import contextlib
import copy
import functools
import hashlib
import os
import socket
import warnings
from contextlib import contextmanager
from pathlib import Path

import clip
import torch
import torch.nn.functional as F
from clip.model import CLIP, build_model

from .errors import READ_ERRORS, UserError, log, unreadable_reason
from .settings import DEFAULT_CLIP_MODEL

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DOWNLOAD_TIMEOUT = 20  # seconds; without a network the download must fail fast, not hang
# Architectures for "random:NAME": the real shapes with random weights, built offline.
# (embed_dim, image_resolution, vision_layers, vision_width, patch, context, vocab,
#  text_width, text_heads, text_layers), as in openai/CLIP's released checkpoints.
RANDOM_ARCHS = {
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # of settings.PRECISIONS
# Small CLIPs trained on a drawn world of coloured shapes and its scenes of two (the toy package), shipped
# for offline use.
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
TOY_MODELS = {name: MODELS_DIR / f"{name}.pt" for name in ("toy", "toy-scorer", "toy-judge", "scene", "scene-scorer",
                                                            "scene-judge")}
NORMS = (torch.nn.LayerNorm, torch.nn.BatchNorm2d, torch.nn.GroupNorm)
# CPU flags (as Linux lists them) of instructions that multiply in bf16 or fp16: without
# them a CPU converts, and a bf16 matrix product took 40 times an fp32 one on an AVX2 CPU
NATIVE_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


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


@contextmanager
def math_attention():
    """Run attention on the math kernel: the fused kernels have no double backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        yield


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


def is_patch_conv(conv):
    """Whether a module is a ViT's patch convolution (square kernel = stride, no bias or padding)."""
    return (isinstance(conv, torch.nn.Conv2d) and conv.bias is None and conv.padding == (0, 0)
            and conv.kernel_size == conv.stride and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.groups == 1 and conv.dilation == (1, 1))


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
        if not isinstance(module, NORMS):
            for name, param in module.named_parameters(recurse=False):
                setattr(module, name, torch.nn.Parameter(param.detach().to(dtype), requires_grad=False))
    return low


class Clip:
    """A frozen CLIP model with what the renderer needs to know about it.

    precision ("fp32", "fp16" or "bf16") runs CLIP's image tower under autocast; losses
    and the optimized image stay in float32. tower is the image tower the renderer runs:
    the model's own at fp32, a copy with its weights stored at the lower precision
    otherwise (stored_in; made when the precision is set, so the weights must not change
    after). compiled_loss is the torch.compile'd loss of the plain renderer (set by
    render.use_compile), or None for eager.
    """

    def __init__(self, model, name, device):
        self.model = model.float().eval().requires_grad_(False).to(device)
        if is_patch_conv(getattr(model.visual, "conv1", None)):  # a ViT (not a ModifiedResNet)
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
                with warnings.catch_warnings(), torch.autocast(self.device.type, dtype=DTYPES[name]):
                    warnings.simplefilter("ignore")  # autocast warns, and turns itself off, where unsupported
                    dtype = (torch.ones(2, 2, device=self.device) @ torch.ones(2, 2, device=self.device)).dtype
            except (RuntimeError, ValueError, AssertionError) as e:
                raise UserError(f"--precision {name} is not supported on {self.device.type} "
                                f"({str(e).splitlines()[0][:60]}): use --precision fp32") from None
            if dtype != DTYPES[name]:
                raise UserError(f"--precision {name} is not supported on {self.device.type} "
                                f"(autocast gave {dtype}): use --precision fp32")
            if name not in self._towers:  # the first time only
                self._towers[name] = stored_in(self.model.visual, DTYPES[name])
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
            stack.enter_context(torch.autocast(self.device.type, dtype=DTYPES[self.precision]))
            if self.device.type == "cpu":
                stack.enter_context(math_attention())
            yield


def offline_hint(name):
    """What to do when a released model cannot be downloaded."""
    untrained = f", or random:{name} for untrained weights" if name in RANDOM_ARCHS else ""
    return (f"could not download CLIP model {name!r} (no network?): pass --clip-model with the path "
            f"of a local checkpoint (e.g. a copy of ~/.cache/clip/*.pt from a machine with a network)"
            f"{untrained}, or toy (a small offline model of drawn shapes)")


def download(name):
    """The local path of a released model, downloaded once into ~/.cache/clip.

    clip.load would download and build the model in one go; its download step alone is
    the private clip.clip._download, used here, and only here, so that the weights go
    through this package's own loader (the patch embedding, the fingerprint, the errors).
    """
    root = os.path.expanduser("~/.cache/clip")
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return clip.clip._download(clip.clip._MODELS[name], root)
    except (OSError, ValueError):
        raise UserError(offline_hint(name)) from None
    except RuntimeError:  # checksum mismatch after a download
        raise UserError(f"the download of {name!r} is corrupt: delete ~/.cache/clip/*.pt "
                        f"and run again") from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def state_dict_from_file(path):
    """Read a CLIP state dict from a plain state-dict file or a TorchScript archive; where it is
    neither, a UserError naming why each way of reading it failed."""
    with warnings.catch_warnings():  # torch warns about TorchScript archives and jit.load
        warnings.simplefilter("ignore")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except READ_ERRORS as e:
            obj, as_dict = None, unreadable_reason(path, e)
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        if obj is not None:
            as_dict = f"it holds a {type(obj).__name__}, not a dict of tensors"
        try:  # openai's released checkpoints are TorchScript archives
            return torch.jit.load(path, map_location="cpu").state_dict()
        except READ_ERRORS as e:
            as_script = torch_reason(e)
    raise UserError(f"{path} is not a CLIP checkpoint: as a state dict, {as_dict}; as a TorchScript archive, "
                    f"{as_script}: check the path, or delete it and download again")


def torch_reason(error):
    """The gist of torch's error on reading an archive: its first line, without the reader's jargon."""
    line = str(error).splitlines()[0] if str(error) else type(error).__name__
    return line.split(". This is an internal")[0].removeprefix("PytorchStreamReader ")[:100]


def load_clip(name=DEFAULT_CLIP_MODEL, device="cpu"):
    """Load a frozen CLIP by released name, local checkpoint path, toy name, or random:ARCH.

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
                            f"'git checkout -- models' or train it with 'python3 -m toy train'")
    elif os.path.isfile(name):
        path = name
    elif name in clip.available_models():
        path = download(name)
    else:
        raise UserError(f"unknown CLIP model {name!r}: use a path to a checkpoint file, one of "
                        f"{', '.join(clip.available_models())}, {', '.join(TOY_MODELS)}, or random:ARCH")
    state = {k: v.float() for k, v in state_dict_from_file(path).items()}
    try:
        model = build_model(dict(state)).float()
        model.load_state_dict({k: v for k, v in state.items()
                               if k not in ("input_resolution", "context_length", "vocab_size")})
    except (KeyError, RuntimeError, ValueError, IndexError, TypeError, AttributeError) as e:  # not CLIP's layout
        raise UserError(f"{path} does not hold CLIP weights ({type(e).__name__}): "
                        f"pass a CLIP checkpoint") from None
    return Clip(model, name, device)
