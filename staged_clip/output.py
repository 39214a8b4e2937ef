"""What a run writes: atomic files, the pixel-art PNG that records its making, and progress frames."""

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F

from .errors import UserError, log
from .losses import to_image

SAVE_SIZE = 512
QUANT_LEVELS = 16


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


def quantize(image, levels=QUANT_LEVELS):
    """The pixel-art look: 16 levels, then a contrast stretch x * 1.1 - 0.1 (clamped)."""
    image = (image * (levels - 1)).round() / (levels - 1)
    return (image * 1.1 - 0.1).clamp(0, 1)


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


def run_info(script, args, settings, device, **extra):
    """What a PNG records about its making: script, prompt, seed, model and every setting.

    The seed, device, thread count and renderer (learning rate, Adam's eps and moments, the
    parametrization) are the ones used, also where the user left them to be chosen or to
    be read from a bake.
    """
    used = {"seed": settings.seed, "device": str(device), "threads": settings.threads,
            **{k: getattr(settings, k) for k in ("lr", "inner_eps", "carry_moments", "param", "pyramid_levels")}}
    flags = {k: v for k, v in vars(args).items() if k != "out"}
    return {"software": f"staged-clip {script}", "seed": str(settings.seed), "clip_model": args.clip_model,
            "settings": {**flags, **{k: v for k, v in used.items() if k in flags}}, **extra}


@dataclass
class Output:
    """Where a run's image goes: the PNG, its side, and --save-progress (None: off)."""

    path: str
    save_size: int = SAVE_SIZE
    save_progress: int = None

    @classmethod
    def from_args(cls, args, path=None):
        """The output a script's flags ask for (path: another PNG than --out)."""
        return cls(path if path is not None else args.out, args.save_size, getattr(args, "save_progress", None))


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
    def of(cls, output, settings, stages, start):
        """The Progress an Output asks for (steps per stage from settings), or None."""
        if output.save_progress is None:
            return None
        return cls(output.save_progress, stages, settings.steps, output.save_size, start, output.path)

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
