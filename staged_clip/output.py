"""What a run writes: atomic files, the pixel-art PNG that records its making, and progress frames."""

import dataclasses
import functools
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import palettes
from .errors import UserError, log
from .losses import to_image
from .settings import SAVE_SIZE

QUANT_LEVELS = 16
ROOT = Path(__file__).resolve().parent.parent  # the project's folder, whose commit a run records
# the settings a PNG records as the run used them, where the user left them to be chosen or read from a bake
# (not the palette: the flag keeps what the user named, "pico8" or a file; the colours get a chunk of their own)
USED = ("seed", "threads", "size", "height", "lr", "inner_eps", "carry_moments", "param", "pyramid_levels",
        "palette_weight", "palette_hard")
SHEET_CELL = 256  # px: the longer side of an image on a contact sheet


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


def upscaled(shape, side):
    """The saved size (H, W) of an image of this (H, W) whose longer side becomes `side`."""
    height, width = shape
    if height == width:
        return side, side
    longer = max(height, width)
    return max(1, round(side * height / longer)), max(1, round(side * width / longer))


def saved_look(palette=None):
    """What saving does to images in [0, 1]: quantize, or with a palette ("#rrggbb,...") its lookup."""
    if palette is None:
        return quantize
    colours = palettes.colours_of(palette)
    return lambda image: palettes.lookup(image, colours.to(image.device))


def to_pixels(z, side=None, palette=None, dither=False):
    """The first image of z as saved, [H, W, 3] uint8: quantized (16 levels a channel), or in its
    palette ("#rrggbb,...", ordered-dithered where asked); the longer side nearest-upscaled to side
    where given."""
    if palette is None:
        image = quantize(to_image(z.detach()[:1].float()))
    else:
        colours, index = palette_indices(z, palette, dither)
        image = colours[index].permute(0, 3, 1, 2)
    if side is not None:
        image = F.interpolate(image, size=upscaled(image.shape[-2:], side), mode="nearest")
    return image[0].permute(1, 2, 0).mul(255).round().byte().cpu().numpy()


def palette_indices(z, palette, dither=False):
    """The palette's colours [K, 3] and the index of each pixel's of the first image of z, [1, H, W]."""
    colours = palettes.colours_of(palette, z.device)
    return colours, palettes.indices(to_image(z.detach()[:1].float()), colours, dither)


def to_indexed(z, side=None, palette=None, dither=False):
    """The first image of z in its palette as an indexed PIL image (mode "P"), upscaled as to_pixels."""
    from PIL import Image
    index = palette_indices(z, palette, dither)[1][:, None].float()  # [1, 1, H, W]
    if side is not None:
        index = F.interpolate(index, size=upscaled(index.shape[-2:], side), mode="nearest")
    array = index[0, 0].round().byte().cpu().numpy()
    image = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
    image.putpalette([int(c[i:i + 2], 16) for c in palette.split(",") for i in (1, 3, 5)])
    return image


def png_info(info):
    """PIL's PngInfo of a dict: text chunks, JSON where a value is not text."""
    from PIL.PngImagePlugin import PngInfo
    meta = PngInfo()
    for key, value in info.items():
        meta.add_text(key, value if isinstance(value, str) else json.dumps(value))
    return meta


def save_image(path, z, save_size, info, palette=None, dither=False):
    """Save z as a PNG: quantized (RGB) or, with a palette, indexed; its longer side nearest-upscaled to
    save_size (None: the image's own grid); info goes into its text chunks."""
    from PIL import Image
    if palette is None:
        image = Image.fromarray(to_pixels(z, save_size))
    else:
        image = to_indexed(z, save_size, palette, dither)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=png_info(info)))


def beside(path, suffix):
    """A file named after path, with a suffix to its stem: out.png -> out_<suffix>.png."""
    path = Path(path)
    return path.with_name(f"{path.stem}_{suffix}{path.suffix}")


@functools.cache
def commit():
    """The project's git commit (with -dirty where tracked files changed), or "unknown"."""
    def git(*words):
        return subprocess.run(["git", "-C", str(ROOT), *words], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("diff", "--quiet", "HEAD").returncode == 1
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def provenance():
    """What a result's pixels depend on beyond its settings: the torch version and the project's commit."""
    return {"torch": str(torch.__version__), "commit": commit()}


@dataclass(frozen=True)
class Output:
    """Where a run's image goes and what its PNG records: the path (None: the script decides),
    its side, --save-progress (None: off), the script, its parsed flags (without --out), and
    when the run began."""

    path: str = None
    save_size: int = SAVE_SIZE
    save_progress: int = None
    script: str = None
    dither: bool = False  # ordered dithering into the palette, as the image is saved
    native: bool = False  # also save the image at its own grid, as OUT_native.png
    flags: dict = dataclasses.field(default_factory=dict)
    began: float = dataclasses.field(default_factory=time.time)

    def at(self, path):
        """This output, for another image (a bake's preview) whose making begins now, without progress frames."""
        return dataclasses.replace(self, path=str(path), save_progress=None, began=time.time())

    def record(self, settings, device, **extra):
        """What a PNG records about its making: the script, prompt, seed, model and every setting
        (as used, where the user left one to be chosen or read from a bake), the torch version,
        the project's commit and the seconds since the run began; extra: more text chunks."""
        used = {"device": str(device), **{k: getattr(settings, k) for k in USED}}
        if settings.palette is not None:  # the colours, whatever --palette named (an image's k-means, a bake's)
            extra = {"palette": settings.palette.split(","), "dither": self.dither, **extra}
        return {"software": f"staged-clip {self.script}", "seed": str(settings.seed),
                "clip_model": self.flags.get("clip_model"),
                "settings": {**self.flags, **{k: v for k, v in used.items() if k in self.flags}}, **extra,
                **provenance(), "seconds": round(time.time() - self.began, 3)}

    def save(self, z, settings, device, **extra):
        """Save z's first image as this output's PNG, recording its making (record), and with
        --save-native the same at its own grid beside it (OUT_native.png). Returns the paths."""
        info = self.record(settings, device, **extra)
        save_image(self.path, z, self.save_size, info, settings.palette, self.dither)
        if not self.native:
            return [self.path]
        save_image(beside(self.path, "native"), z, None, info, settings.palette, self.dither)
        return [self.path, str(beside(self.path, "native"))]

    def save_variations(self, z, settings, device, seeds, **extra):
        """Save each image of z [N, ...] as OUT_1.png ... OUT_N.png, each recording its own seed, and
        a contact sheet of them, OUT_sheet.png. Returns the paths of the images and the sheet.

        The loss of the last step, summed over the batch, is no one image's: not recorded."""
        extra.pop("loss", None)
        paths = []
        for i, seed in enumerate(seeds):
            one = dataclasses.replace(self, path=str(beside(self.path, str(i + 1))))
            paths.append(one.save(z[i:i + 1], settings.replace(seed=seed), device, **extra)[0])
        sheet = contact_sheet([to_pixels(z[i:i + 1], SHEET_CELL, settings.palette, self.dither)
                               for i in range(len(seeds))], [f"seed {s}" for s in seeds])
        info = {**self.record(settings, device, **extra), "seeds": [str(s) for s in seeds], "images": paths}
        atomic_write(beside(self.path, "sheet"), lambda tmp: sheet.save(tmp, format="PNG", pnginfo=png_info(info)))
        return paths + [str(beside(self.path, "sheet"))]


def contact_sheet(arrays, labels, gap=8, label_height=14):
    """Images ([H, W, 3] uint8 each) side by side in a near-square grid, each labelled beneath: a PIL image."""
    import math
    from PIL import Image, ImageDraw
    columns = math.ceil(math.sqrt(len(arrays)))
    rows = math.ceil(len(arrays) / columns)
    cell_h = max(a.shape[0] for a in arrays) + label_height
    cell_w = max(a.shape[1] for a in arrays)
    sheet = Image.new("RGB", (columns * (cell_w + gap) + gap, rows * (cell_h + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (array, label) in enumerate(zip(arrays, labels)):
        x, y = gap + (i % columns) * (cell_w + gap), gap + (i // columns) * (cell_h + gap)
        sheet.paste(Image.fromarray(array), (x, y))
        draw.text((x, y + array.shape[0] + 2), label, fill="black")
    return sheet


class Progress:
    """The frames of a run for --save-progress: the start, then every N steps or each stage's end.

    Each frame is written as it is made (OUT_progress/NNNN.png; frames of an earlier run
    there are removed first), and save() makes OUT_progress.gif of them.
    """

    def __init__(self, every, stages, steps, save_size, start, out, palette=None):
        if every == 0:  # after every stage; a single stage is cut into ten
            every = steps if stages > 1 else max(1, steps // 10)
        self.every, self.steps, self.save_size, self.palette = every, steps, save_size, palette
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
        return cls(output.save_progress, stages, settings.steps, output.save_size, start, output.path,
                   settings.palette)

    def add(self, z):
        from PIL import Image
        image = Image.fromarray(to_pixels(z, self.save_size, self.palette))
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
