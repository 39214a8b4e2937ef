"""Baked files: where they go, saving and loading them safely, and choosing among them."""

import datetime
import hashlib
import re
import unicodedata
from pathlib import Path

import torch
import torch.nn.functional as F

from . import knobs, learners, losses, output, prompts
from .errors import READ_ERRORS, UserError, log, unreadable_reason
from .output import atomic_write
from .settings import SPEED_ONLY, Settings

BAKED_FORMAT = "staged-clip-bake"
BAKED_VERSION = 1


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
        stem = slugify(Path(prompt).stem if prompts.is_image_path(prompt) else prompt)
        if stem.replace("_", " ") != prompt:  # the slug lost something (case, punctuation, a folder)
            stem += "-" + hashlib.sha1(prompt.encode()).hexdigest()[:8]  # so names stay apart
    return Path(baked_dir) / f"{stem}.pt"


def save_baked(path, contents):
    """Atomically write a baked file: a plain dict, loadable with weights_only=True.

    contents: prompt, prompt_type, clip_model, stages [S, D], config, history, complete; and,
    where known, clip_weights (the model's weights_id, so that a bake is known not to match
    a model retrained under the same name), prompt_embed [D], the learned knobs [S] each
    (knobs.py: lr_scale, style_scale, part_weight), validation (the gate's history) and
    seconds (how long the bake took); a shared bake adds kind "shared", prompts and held_out
    (the texts it learned from and validated on), and its stages are zeros. Optional fields that are None are left out. The file adds its format,
    version, width, time of writing, and what its numbers depend on (output.provenance).
    """
    tensors = {"stages", "prompt_embed", *(knob.key for knob in knobs.KNOBS)}
    data = {"format": BAKED_FORMAT, "version": BAKED_VERSION, "embed_dim": int(contents["stages"].shape[1])}
    for key, value in contents.items():
        if value is None and key not in ("prompt", "prompt_type", "stages", "config", "history", "complete"):
            continue
        if key in tensors:
            value = value.detach().float().cpu().clone()
        data[key] = value
    data.update(config=dict(contents["config"]), history=[float(x) for x in contents["history"]],
                complete=bool(contents["complete"]),
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                **output.provenance())
    if data.get("validation") is not None:
        data["validation"] = list(data["validation"])
    if data.get("seconds") is not None:
        data["seconds"] = float(data["seconds"])
    atomic_write(path, lambda tmp: torch.save(data, tmp))


def load_baked(path, embed_dim=None):
    """Read a baked file safely (weights_only): a dict as written by save_baked.

    Also reads the original's bare [S, D] tensors (CUDA or requires_grad included);
    their prompt is the file name with underscores turned back into spaces. With
    embed_dim, stages of another width are refused. Anything else is a UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"baked file {path} not found: check the path, or bake it with bake.py")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except READ_ERRORS as e:
        raise UserError(f"{path} is not a readable baked file ({unreadable_reason(path, e)}): "
                        f"bake it again with bake.py") from None
    if isinstance(obj, torch.Tensor):
        obj = {"format": "legacy", "version": 0, "prompt": path.stem.replace("_", " "),
               "prompt_type": "text", "stages": obj}
    elif not (isinstance(obj, dict) and obj.get("format") == BAKED_FORMAT):
        raise UserError(f"{path} is not a baked file: bake it with bake.py")
    problem = baked_problem(obj)
    if problem:
        raise UserError(f"{path} is a damaged baked file ({problem}): bake it again with bake.py")
    if obj.get("version", BAKED_VERSION) > BAKED_VERSION:
        raise UserError(f"{path} has baked-file version {obj['version']}, newer than this tool "
                        f"reads ({BAKED_VERSION}): update the scripts")
    obj = {"clip_model": None, "config": {}, "history": [], "complete": True, "created": None, **obj}
    obj["embed_dim"] = obj["stages"].shape[1]
    obj["stages"] = obj["stages"].detach().float()
    for knob in knobs.KNOBS:
        obj[knob.key] = obj[knob.key].detach().float() if obj.get(knob.key) is not None else None
    obj["path"] = str(path)
    if embed_dim is not None:
        check_stage_width(obj, embed_dim)
    return obj


def baked_problem(obj):
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
    for knob in knobs.KNOBS:
        value = obj.get(knob.key)
        if value is not None and not (isinstance(value, torch.Tensor) and value.shape == stages.shape[:1]
                                      and torch.isfinite(value).all() and (value >= 0).all()
                                      and (not knob.exponential or (value > 0).all())):
            return f"{knob.key} is not a {'positive ' if knob.exponential else ''}number for each stage"
    if obj.get("kind", "prompt") not in ("prompt", "shared"):
        return f"kind {obj['kind']!r} is not prompt or shared"
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


def differences(settings, config, seed=False):
    """The settings a baked file's config was made with that differ from these: [(name, theirs, ours)].

    Its seed and speed-only settings do not count (seed=True: its seed does), nor do
    settings that play no part in the bake (another estimator's, the gate's where it is off,
    a pyramid's for another parametrization); its gate counts as the one it ran. Older
    files lack settings added since: those count as made at their defaults.
    """
    theirs = Settings.from_config(config)
    learner = learners.learner_of(settings)
    skip = {*SPEED_ONLY, "validate_every"} | ({"seed"} if not seed else set())
    skip.update(field for other in learners.LEARNERS.values() if other is not learner for field in other.fields)
    if not learner.gate(settings):
        skip.add("validation_starts")
    if settings.param != "pyramid":
        skip.add("pyramid_levels")
    if settings.palette is None:
        skip.update(("palette_weight", "palette_hard"))
    found = [(name, value, getattr(settings, name)) for name, value in vars(theirs).items()
             if name not in skip and value != getattr(settings, name)]
    other = learners.LEARNERS.get(theirs.meta_grad)
    gate_every = other.gate(theirs) if other is not None else None
    if "meta_grad" not in {name for name, _, _ in found} and gate_every != learner.gate(settings):
        found.append(("validate_every", gate_every, learner.gate(settings)))
    return found


def stale_reason(path, text, settings, model, seed=False):
    """Why path does not hold a complete bake of this prompt with these settings and this model
    (a Clip), in a few words; None where it does. seed=True: its seed must match too."""
    if not path.is_file():
        return "not baked yet"
    try:
        bake = load_baked(path)
    except UserError:
        return "unreadable"  # bake it again (the write replaces it atomically)
    if not bake["complete"]:
        return "an interrupted bake"
    if bake["prompt"] != text:
        return f"a bake of another prompt ({bake['prompt']!r})"
    if not model.made(bake):
        return "baked with another model"
    changed = differences(settings, bake["config"], seed)
    if changed:
        return "baked with other settings: " + ", ".join(f"{name} {was} (now {now})" for name, was, now in changed)
    return None


def baked_prompt_embed(model, bake):
    """A bake's prompt embedding under this model (a UserError where it has none)."""
    check_stage_width(bake, model.dim)
    if model.made(bake) and bake.get("prompt_embed") is not None:
        return bake["prompt_embed"].to(model.device)
    return prompts.load_prompt(model, bake["prompt"]).embed  # weighted parts and images too


def of_model(bakes, model):
    """The bakes made with this model, naming none (the original's bare tensors), or of another
    width (nearest_bakes names those); one line says how many others there were: another CLIP
    model's stage directions of the same width mean nothing to this one."""
    def foreign(b):
        return b.get("clip_model") not in (None, model.name) and b["stages"].shape[1] == model.dim

    others = [b for b in bakes if foreign(b)]
    if others:
        names = ", ".join(Path(b["path"]).name for b in others[:3]) + (", ..." if len(others) > 3 else "")
        models = ", ".join(sorted({b["clip_model"] for b in others}))
        log(f"skipping {len(others)} baked file(s) ({names}) made with another CLIP model ({models}), "
            f"not {model.name}")
    return [b for b in bakes if not foreign(b)]


def nearest_bakes(model, prompt_embed, bakes, k, where="the baked folder"):
    """The k bakes whose prompts lie nearest to prompt_embed: [(distance, bake)].

    All of one stage count (that of the nearest), so their paths can be composed. Bakes
    of another width, whose prompt cannot be embedded, or made with another CLIP model (whose
    stage directions mean nothing to this one; the original's bare tensors name none), are
    skipped; one line says how many and why.
    """
    candidates, skipped = [], []
    for bake in of_model(bakes, model):
        if knobs.is_shared(bake):
            continue  # no prompt of its own
        try:
            embed = baked_prompt_embed(model, bake)
        except UserError as e:
            skipped.append((bake, e))
            continue
        candidates.append((losses.spherical_distance(prompt_embed, embed).item(), bake))
    if skipped:
        widths = sorted({b["stages"].shape[1] for b, _ in skipped if b["stages"].shape[1] != model.dim})
        names = ", ".join(Path(b["path"]).name for b, _ in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        why = (f"stages of width {', '.join(map(str, widths))}, not this model's {model.dim}" if widths
               else str(skipped[0][1]))
        log(f"skipping {len(skipped)} baked file(s) in {where} ({names}): {why}")
    if not candidates:
        raise UserError(f"no usable baked files in {where}: bake some with bake.py")
    candidates.sort(key=lambda c: c[0])
    n_stages = len(candidates[0][1]["stages"])
    return [c for c in candidates if len(c[1]["stages"]) == n_stages][:k]


def compose_path(paths, mode, raw):
    """One path of stages from k paths [k, S, D], and its knobs from theirs, raw [k, S, K]
    (knobs.py; neutral for a file without): per-stage mean (of the raw knobs, so of the
    learning-rate multipliers the geometric mean), or a random splice (each stage's knobs
    from the path it came from). Returns (path [S, D], raw knobs [S, K]).
    """
    paths = F.normalize(paths, dim=-1)
    if mode == "mean":
        return paths.mean(0), raw.mean(0)  # each stage averaged over the paths, not over everything
    pick = torch.randint(len(paths), (paths.shape[1],))  # [S]: which path gives each stage
    return paths[pick, torch.arange(paths.shape[1])], raw[pick, torch.arange(paths.shape[1])]


def compose_bakes(bakes, mode, device):
    """One path of stages [S, D] and its raw knobs [S, K] from bakes of S stages each (compose_path
    of their stages and knobs), on device."""
    raw = torch.stack([knobs.raw_of(b, len(b["stages"]), device) for b in bakes])
    return compose_path(torch.stack([b["stages"] for b in bakes]).to(device), mode, raw)


def compose_replay(bakes, prompt, shift, mode, mix, parts=None):
    """What auto-microwaving renders from bakes of S stages each: their paths composed (compose_bakes,
    "mean" or "splice"), each stage turned towards the prompt (a prompts.Prompt) by mix, and
    their composed knobs applied (parts: the prompt's [S, D], knobs.part_embeds, or None).
    Returns (targets [S, D], learning-rate multipliers [S] or None)."""
    path, raw = compose_bakes(bakes, mode, prompt.embed.device)  # [S, D], [S, K]
    return knobs.targets(prompts.lerp_unit(path, prompt.embed, mix), shift, raw, parts), knobs.lr_scale(raw)
