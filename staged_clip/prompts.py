"""Prompts: text with weighted parts or an image file, their CLIP embeddings, and the targets made of them."""

import math
import os
import re
from pathlib import Path

import clip
import torch
import torch.nn.functional as F

from .errors import UserError, log
from .settings import Settings, sides

STYLE_WEIGHT = 0.5
NEGATIVE_WEIGHT = 0.5
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
COLON = re.compile(r"(?<!\\):")  # a colon that starts a weight: any but an escaped one, \:
COLON_HINT = "a number after a colon is a weight; write \\: for a colon in the text"


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


def load_image(path, shape, what="image prompt"):
    """An image file as a [1, 3, H, W] tensor in [0, 1]: resized to cover (H, W), centre-cropped.

    shape: a side (a square) or (H, W); what names the file in errors.
    """
    from PIL import Image, UnidentifiedImageError
    import torchvision.transforms.functional as TF
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} not found: check the path")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise UserError(f"cannot read {what} {path}: pass a PNG or JPEG file of reasonable size") from None
    height, width = sides(shape)
    scale = max(height / im.height, width / im.width)
    covering = [max(height, round(im.height * scale)), max(width, round(im.width * scale))]
    im = TF.center_crop(TF.resize(im, covering if height != width else height, antialias=True), [height, width])
    return TF.to_tensor(im).unsqueeze(0)  # [1, 3, H, W]


def parse_parts(text):
    """Split "a red apple | green:0.5 | text:-1" into [(text, weight, weight given?), ...].

    A part's weight is the number after its last colon: "photo: x:2" is ("photo: x", 2.0), and
    "time: 12:30" is ("time: 12", 30.0). A colon followed by a space ("a clock: noon") or
    escaped ("12\\:30") is text. Anything else after a colon is refused, as is an empty prompt.
    """
    parts = []
    for part in text.split("|"):
        colons = list(COLON.finditer(part))
        weight, given = 1.0, bool(colons)
        if colons:
            body, tail = part[:colons[-1].start()], part[colons[-1].end():]
            try:
                weight = float(tail)
                part = body
            except ValueError:
                if not tail[:1].isspace() or not tail.strip():
                    raise UserError(f"{tail.strip()!r} after the colon in {part.strip()!r} is not a weight "
                                    f"({COLON_HINT}, e.g. green:0.5)") from None
                given = False
            if not math.isfinite(weight):
                raise UserError(f"the weight {tail.strip()!r} in {text!r} is not a finite number: "
                                f"use e.g. :0.5 or :-1")
        part = part.replace("\\:", ":").strip()
        if part:
            parts.append((part, weight, given))
    if not parts:
        raise UserError("empty prompt: give some text, e.g. \"a red apple\", or an image file")
    return parts


def parse_prompt(text):
    """The parts of a text prompt with their weights: [(text, weight), ...] (see parse_parts)."""
    return [(part, weight) for part, weight, _ in parse_parts(text)]


def weights_note(text):
    """A line naming the parts of a prompt and their weights, where a colon gave one (else None).

    Refuses (UserError) a text prompt that cannot be read; an image prompt has no weights.
    """
    if is_image_path(text.strip()):
        return None
    parts = parse_parts(text)
    if not any(given for _, _, given in parts):
        return None
    return (f"note: {text!r} is read as " + ", ".join(f"{part!r} at weight {weight:g}" for part, weight, _ in parts)
            + f" ({COLON_HINT})")


def check_prompt(text, out=None):
    """Refuse a prompt that cannot be read, before any model loads, and name its weights where a
    colon gave some; an image prompt must not be the output (out) itself."""
    if is_image_path(text.strip()) and out is not None and Path(text.strip()).resolve() == Path(out).resolve():
        raise UserError(f"--out {out} is the image prompt itself: choose another --out")
    note = weights_note(text)
    if note:
        log(note)


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


def read_prompts(path, keep_going=False):
    """The prompts of a list file: stripped lines, without blanks, # comments or repeats.

    Every prompt is checked before any work starts. A bad one is refused (a UserError naming
    its line, "FILE:LINE: why"; several are each said first, one line each); with keep_going it
    is said and kept, so that the script can report it as failed and go on with the others.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file {path} not found: give a file with one prompt a line")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}): save it as UTF-8 text") from None
    prompts, bad = [], []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#") or line in prompts:
            continue
        prompts.append(line)
        try:
            check_prompt(line)
            if is_image_path(line) and not os.path.isfile(line):
                raise UserError(f"image prompt {line} not found: check the path")
        except UserError as e:
            bad.append(f"{path}:{number}: {e}")
    if not prompts:
        raise UserError(f"{path} holds no prompts: write one prompt a line")
    if bad and not keep_going:
        if len(bad) == 1:
            raise UserError(bad[0])
        for line in bad:
            log(line)
        raise UserError(f"{path}: {len(bad)} prompts cannot be read (above): fix or remove those lines")
    for line in bad:
        log(f"{line} (it will fail; the others go on)")
    return prompts


def style_shift(model, settings=None):
    """The vector added to every target [D]: +0.5 settings.style_text, -0.5 settings.negative_text
    (zero with settings.style off; settings: a Settings, None for its defaults)."""
    settings = settings or Settings()
    if not settings.style:
        return torch.zeros(model.dim, device=model.device)
    style_e, negative_e = embed_texts(model, [settings.style_text, settings.negative_text])
    return STYLE_WEIGHT * style_e - NEGATIVE_WEIGHT * negative_e


def shape_targets(stages, shift):
    """Targets from stage embeddings: unit stage + style shift; [S, D].

    The original adds the style texts to raw vectors, so a stage's arbitrary length
    decided how much the style counted; mixing unit vectors keeps the 0.5 weights honest.
    """
    return F.normalize(stages, dim=-1) + shift


def lerp_unit(a, b, t):
    """Linear mix of the unit vectors of a and b: (1 - t) * a^ + t * b^."""
    return torch.lerp(F.normalize(a, dim=-1), F.normalize(b, dim=-1), t)
