"""What normal.py, microwave.py and auto_microwave.py make of their flags: their parsers, what
each reads before CLIP loads, and a Plan (the stage targets, the learning-rate scale, the frozen
Settings and what the PNG records). The scripts and the server both go through here, so that
an image the server makes is the one its command makes.
"""

from dataclasses import dataclass

from . import flags
from .errors import log

RENDERERS = ("normal.py", "microwave.py", "auto_microwave.py")


def parser(script, doc=None):
    """The flags of a rendering script (one of RENDERERS), with doc as its description."""
    p = flags.make_parser(doc)
    if script == "microwave.py":
        p.add_argument("prompt", nargs="?", metavar="PROMPT", help="a prompt to mix into each stage (optional)")
        p.add_argument("baked", metavar="BAKED.pt", help="the baked file to replay")
    else:
        p.add_argument("prompt", help="text (weighted parts: 'a | b:0.5 | c:-1') or an image file")
    flags.add_common_args(p, script)
    flags.add_start_args(p)
    if script == "auto_microwave.py":
        p.add_argument("--baked-dir", default="baked", help="folder of baked files to draw from")
        p.add_argument("--k", type=flags.positive_int, default=2, help="how many nearest baked prompts to use")
    if script != "normal.py":
        p.add_argument("--mix", type=flags.unit_float, default=0.7 if script == "auto_microwave.py" else 0.5,
                       help="weight of the prompt in each stage's target (the path gets 1 - mix)"
                       if script == "auto_microwave.py" else
                       "weight of the prompt in each stage's target (with a prompt and a prompt's bake)")
    if script == "auto_microwave.py":
        p.add_argument("--mode", choices=["mean", "splice"], default="mean",
                       help="mean: per-stage mean of the chosen paths; splice: each stage from one of them")
        flags.add_far_arg(p)
    return p


def bake_parser(doc=None):
    """bake.py's flags: a prompt's bake, or a shared one over a list (--prompts)."""
    p = flags.make_parser(doc)
    p.add_argument("prompt", nargs="?", help="text (weighted parts: 'a | b:0.5 | c:-1') or an image file")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="learn one shared bake over the prompts of FILE (one a line) instead of a prompt's: "
                        "saved as <baked-dir>/shared_<FILE's stem>.pt")
    flags.add_common_args(p, "bake.py")
    g = flags.add_bake_args(p)
    flags.add_init_arg(g)
    p.add_argument("--name", default=None, help="baked file name (default: a slug of the prompt)")
    return p


def parse(script, argv=None, doc=None):
    """A script's flags parsed (one of RENDERERS, or bake.py); argparse's one-line error and exit
    status 2 on bad ones."""
    if script == "bake.py":
        p = bake_parser(doc)
        args = p.parse_args(argv)
        if (args.prompt is None) == (args.prompts is None):
            p.error("give a prompt, or --prompts FILE for a shared bake (not both)")
        if args.prompts is not None and args.init_from is not None:
            p.error("--init-from starts a prompt's bake from a shared bake; a shared bake (--prompts) starts neutral")
        return args
    p = parser(script, doc)
    if script != "microwave.py":
        return p.parse_args(argv)
    args, extra = p.parse_known_args(argv)
    if extra:
        loose = [x for x in extra if not x.startswith("-")]
        p.error("give a baked file, or a prompt and a baked file (quote a prompt with spaces)" if loose
                else f"unrecognized arguments: {' '.join(extra)}")
    if args.prompt is None and not flags.looks_baked(args.baked):
        p.error(f"a baked file is missing: {args.baked!r} is not one; give the prompt and then a baked file, "
                f"e.g. microwave.py {args.baked!r} baked/NAME.pt")
    return args


def read_inputs(script, args):
    """What a script reads before CLIP loads, so that a bad file fails first: microwave.py's baked
    file (checked against its prompt), auto_microwave.py's folder of bakes; None for normal.py."""
    from . import baked, knobs
    if script == "microwave.py":
        bake = baked.load_baked(args.baked)
        knobs.check_replay(bake, args.prompt is not None)
        return bake
    if script == "auto_microwave.py":
        return baked.load_baked_dir(args.baked_dir)
    return None


@dataclass(frozen=True)
class Plan:
    """A render's recipe: targets [S, D], the bake's per-stage learning-rate multipliers (None: 1),
    the Settings, the progress bar's word, what the PNG records beyond the settings (info), and
    the line the script prints before the saved paths."""

    targets: object
    scale: object
    settings: object
    desc: str
    info: dict
    said: str = "saved"


def plan(script, args, run, inputs=None):
    """The Plan of a rendering script's run (args: its flags; run: a runs.Run; inputs: read_inputs')."""
    from . import prompts, runs
    model = run.model
    if script == "microwave.py":
        return microwave(args, run, inputs)
    if script == "auto_microwave.py":
        return auto(args, run, inputs)
    settings = runs.settings_of(args, run)
    prompt = prompts.load_prompt(model, args.prompt)
    targets = (prompt.embed + prompts.style_shift(model, settings))[None]  # [1, D]: one stage
    return Plan(targets, None, settings, "normal", {"prompt": prompt.text})


def microwave(args, run, bake):
    """microwave.py's Plan: the bake's stages replayed, mixed with the prompt where one is given."""
    from . import baked, knobs, prompts, runs
    model = run.model
    settings = runs.settings_of(args, run, bake["config"], args.baked)
    baked.check_stage_width(bake, model.dim)
    if bake["clip_model"] is not None and not model.made(bake):
        other = "other weights of the same name" if bake["clip_model"] == model.name else bake["clip_model"]
        log(f"note: {args.baked} was baked with {other}; its stages may mean little to {model.name}")
    if not bake["complete"]:
        log(f"note: {args.baked} is an interrupted bake; its stages may be unfinished")
    info = {"baked_file": args.baked, "baked_prompt": bake["prompt"]}
    prompt = None
    if args.prompt is not None:
        prompt = prompts.load_prompt(model, args.prompt)
        info["prompt"] = prompt.text
    # a shared bake replays the prompt itself as every stage, so --mix plays no part
    targets, scale = knobs.replay(model, bake, prompts.style_shift(model, settings), prompt, args.mix)
    said = f"microwaved {bake['prompt']!r} ({len(targets)} stages){f' for {prompt.text!r}' if prompt else ''};"
    return Plan(targets, scale, settings, "microwave", info, said + " saved")


def shared_base(model, bakes):
    """The folder's shared bake for this model (the first by name), or None."""
    from .knobs import is_shared
    return next((b for b in bakes if is_shared(b) and b["stages"].shape[1] == model.dim and model.made(b)), None)


def auto(args, run, bakes):
    """auto_microwave.py's Plan: the nearest bakes' stages composed for the prompt, or where they are
    all farther than --far, the folder's shared bake replayed for it."""
    from . import baked, knobs, prompts, runs
    model = run.model
    prompt = prompts.load_prompt(model, args.prompt)
    base = shared_base(model, bakes)
    own = [b for b in baked.of_model(bakes, model) if not knobs.is_shared(b)]
    chosen = baked.nearest_bakes(model, prompt.embed, own, args.k, args.baked_dir) if own or base is None else []
    if base is not None and (not chosen or chosen[0][0] > args.far):
        far = f"the nearest baked prompt lies {chosen[0][0]:.4f} away (over --far {args.far})" if chosen else \
            "no prompt's bake here"
        print(f"{far}: replaying the shared bake {base['path']} for the prompt")
        settings = runs.settings_of(args, run, base["config"], base["path"])
        targets, scale = knobs.replay(model, base, prompts.style_shift(model, settings), prompt)
        used = {"baked_file": base["path"]}
    else:
        targets, scale, settings = compose(args, run, prompt, chosen)
        used = {"baked_prompts": [b["prompt"] for _, b in chosen]}
    return Plan(targets, scale, settings, "auto-microwave", {"prompt": prompt.text, **used})


def compose(args, run, prompt, chosen):
    """The nearest bakes' paths composed and turned towards the prompt: (targets, lr_scale, settings)."""
    from . import baked, knobs, prompts, runs
    model = run.model
    n_stages = len(chosen[0][1]["stages"])
    print(f"nearest baked prompts ({args.mode}), by spherical distance to the prompt (lower is nearer):")
    for dist, bake in chosen:
        print(f"  {dist:.4f}  {bake['prompt']!r}  ({bake['path']})")
    if len(chosen) < args.k:
        log(f"note: only {len(chosen)} baked file(s) with {n_stages} stages; using those")
    near = [b for _, b in chosen]
    settings = runs.settings_of(args, run, near[0]["config"], near[0]["path"])  # the renderer as the nearest's
    parts = knobs.part_embeds(model, prompt, n_stages) if prompt.kind == "text" else None
    targets, scale = baked.compose_replay(near, prompt, prompts.style_shift(model, settings), args.mode, args.mix,
                                          parts)
    return targets, scale, settings


def make(script, args):
    """A rendering script's whole run from its parsed flags: read its inputs, start (load CLIP, seed),
    plan, render with a progress bar, save the PNGs and say where."""
    from . import render, runs
    inputs = read_inputs(script, args)  # a bad file fails before CLIP loads
    run = runs.start(args, script)
    recipe = plan(script, args, run, inputs)
    z, loss, stop = render.render(run.model, recipe.targets, recipe.settings, run.output, desc=recipe.desc,
                                  lr_scale=recipe.scale, start=run.start)
    paths = run.save(z, recipe.settings, stop, loss=loss, **recipe.info)
    print(f"{recipe.said} {', '.join(paths)}")
