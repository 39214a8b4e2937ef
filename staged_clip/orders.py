"""What a client may ask the server for, checked field by field, and the command line that the
asked-for job is: the same flags the script would be given, so that a served image is the one
that command makes. Nothing a request says becomes a path: a bake is named, never located.

A request is refused (Refused: an HTTP status and one line) before anything is queued.
"""

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

METHODS = {"normal": "normal.py", "microwave": "microwave.py", "auto": "auto_microwave.py"}
RENDER_FIELDS = ("prompt", "method", "bake", "size", "steps", "seed", "variations", "palette", "dither")
BAKE_FIELDS = ("prompt", "name", "size", "stages", "steps", "meta_steps", "seed")
BATCH_FIELDS = ("method", "bake", "size", "steps", "palette", "dither")  # one renderer: one batch
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # a bake's name: a file stem, no folders, no dots
COLOUR = re.compile(r"#(?:[0-9A-Fa-f]{3}){1,2}")  # a served palette's colours each begin with '#': no word


class Refused(Exception):
    """A request refused: its HTTP status and one line saying why."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    """What one request may ask: the image's side, steps (a stage's), variations, a prompt's
    characters, a bake's stages and meta steps, a body's bytes."""

    size: int = 128
    steps: int = 500
    variations: int = 8
    prompt: int = 300
    stages: int = 10
    meta_steps: int = 100
    body: int = 64 * 1024


def whole(body, field, low, high, default=None):
    """body[field] as an integer in [low, high] (default where absent); Refused (422) otherwise."""
    value = body.get(field, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Refused(422, f"{field} must be a whole number from {low} to {high}, not {value!r}")
    return value


def text(body, field, limit, required=True):
    """body[field] as a text of 1 to limit characters; Refused (422) otherwise."""
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise Refused(422, f"{field} must be a text of 1 to {limit} characters")
    return value


def check_fields(body, allowed):
    """Refuse (400) a body that is no JSON object, or names a field this endpoint does not take."""
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise Refused(422, f"unknown field {unknown[0]!r}: the fields are {', '.join(allowed)}")


def check_prompt(body, limits, required=True):
    """The prompt as the scripts would read it (weighted parts), or Refused: image prompts are files,
    and no request names a file."""
    from . import prompts
    prompt = text(body, "prompt", limits.prompt, required)
    if prompt is None:
        return None
    if prompts.is_image_path(prompt.strip()):
        raise Refused(422, "prompt must be text: a served prompt cannot name an image file")
    try:
        prompts.parse_prompt(prompt)
    except UserError as e:
        raise Refused(422, f"prompt: {e}") from None
    return prompt


def check_palette(body):
    """A palette's name (as --palette takes it), or its colours written out ('#rrggbb,...'), read
    without ever looking for a file of that name."""
    from . import palettes
    value = body.get("palette")
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in (*palettes.NAMED, "none"):
        return value.strip().lower()
    colours = [c.strip() for c in value.split(",") if c.strip()] if isinstance(value, str) else []
    if not colours or not all(COLOUR.fullmatch(c) for c in colours):
        raise Refused(422, f"palette must be one of {', '.join(palettes.NAMED)}, none, or colours such as "
                           f"'#1a1c2c,#5d275d' (no files)")
    colours = list(dict.fromkeys(palettes.parse_colour(c) for c in colours))
    try:
        palettes.check_count(colours, "palette")
    except UserError as e:
        raise Refused(422, f"palette: {e}") from None
    return ",".join(colours)


def bake_name(value, baked_dir):
    """A bake named by a request: its file in baked_dir, which must be there (Refused otherwise)."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise Refused(422, "bake must be a bake's name as GET /api/bakes lists it (letters, digits, _ and -; "
                           "no paths)")
    path = Path(baked_dir) / f"{value}.pt"
    if not path.is_file():
        raise Refused(422, f"no bake named {value!r}: GET /api/bakes lists them")
    return path


def check_render(body, limits, baked_dir):
    """A render request ({prompt, method, bake?, size?, steps?, seed?, variations?, palette?, dither?})
    checked and completed (a seed drawn where none is given, so that a rerun makes the same image)."""
    check_fields(body, RENDER_FIELDS)
    method = body.get("method", "normal")
    if not isinstance(method, str) or method not in METHODS:
        raise Refused(422, f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "microwave" and body.get("bake") is None:
        raise Refused(422, "bake is needed for method microwave (GET /api/bakes lists them)")
    if method != "microwave" and body.get("bake") is not None:
        raise Refused(422, f"bake goes with method microwave, not {method}")
    request = {"method": method, "prompt": check_prompt(body, limits, required=method != "microwave"),
               "bake": body.get("bake"), "size": whole(body, "size", 8, limits.size),
               "steps": whole(body, "steps", 1, limits.steps), "seed": whole(body, "seed", 0, 2**63 - 1),
               "variations": whole(body, "variations", 1, limits.variations, 1),
               "palette": check_palette(body), "dither": body.get("dither", False)}
    if not isinstance(request["dither"], bool):
        raise Refused(422, "dither must be true or false")
    if request["bake"] is not None:
        bake_name(request["bake"], baked_dir)
    if request["seed"] is None:
        request["seed"] = secrets.randbelow(2**31)
    return request


def check_bake(body, limits, baked_dir):
    """A bake request ({prompt, name?, size?, stages?, steps?, meta_steps?, seed?}) checked and completed."""
    check_fields(body, BAKE_FIELDS)
    request = {"prompt": check_prompt(body, limits), "name": body.get("name"),
               "size": whole(body, "size", 8, limits.size), "stages": whole(body, "stages", 1, limits.stages),
               "steps": whole(body, "steps", 1, limits.steps),
               "meta_steps": whole(body, "meta_steps", 1, limits.meta_steps),
               "seed": whole(body, "seed", 0, 2**63 - 1)}
    if request["name"] is not None and (not isinstance(request["name"], str) or not NAME.fullmatch(request["name"])):
        raise Refused(422, "name must be 1 to 64 letters, digits, _ or - (a file stem; no paths)")
    from .baked import baked_path
    request["name"] = baked_path(baked_dir, request["prompt"], request["name"]).stem  # the file it will write
    if request["seed"] is None:
        request["seed"] = secrets.randbelow(2**31)
    return request


def batch_key(request):
    """The renderer a render request needs: requests with the same key run as one batch."""
    return "|".join(f"{field}={request.get(field)}" for field in BATCH_FIELDS)


def argv(request, where):
    """The script and its command line for a render request. where: the server's side of the
    command (clip_model, device, threads, out, baked_dir)."""
    script = METHODS[request["method"]]
    words, given = [], [] if request["prompt"] is None else [request["prompt"]]
    if request["method"] == "microwave":
        given.append(str(Path(where["baked_dir"]) / f"{request['bake']}.pt"))
    for field in ("size", "steps", "seed", "palette"):
        if request.get(field) is not None:
            words += [f"--{field}", str(request[field])]
    if request.get("variations", 1) > 1:
        words += ["--variations", str(request["variations"])]
    if request.get("dither"):
        words.append("--dither")
    if request["method"] == "auto":
        words += ["--baked-dir", str(where["baked_dir"])]
    return script, words + server_side(where) + ["--", *given]  # a prompt may begin with a dash


def bake_argv(request, where):
    """bake.py's command line for a bake request (where: as argv's)."""
    words = ["--baked-dir", str(where["baked_dir"]), "--wandb", "disabled"]
    for field in ("name", "size", "stages", "steps", "meta_steps", "seed"):
        if request.get(field) is not None:
            words += [f"--{field.replace('_', '-')}", str(request[field])]
    return words + server_side(where) + ["--", request["prompt"]]


def server_side(where):
    """The flags the server sets: its model, device, threads and where the image goes."""
    return ["--clip-model", where["clip_model"], "--device", where["device"], "--threads", str(where["threads"]),
            "--out", str(where["out"])]
