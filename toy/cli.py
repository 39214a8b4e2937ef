"""Train and measure the small offline CLIP ("toy") on a drawn world of captioned shapes.

The world: one shape (circle, square, triangle) in one colour at one place (left,
right, top, bottom, center) on a muted background of another colour, with captions such as
"a red circle on the left". The model is OpenAI's clip.model.CLIP with its tokenizer,
only small: a ModifiedResNet vision tower at 64 px (or with --patch a vision transformer,
as toy-judge's) and a 2-layer text tower.

  python3 -m toy train --seed 0 --threads 1 --out models/toy.pt      # the shipped toy (about 30 min on 1 core)
  python3 -m toy zero-shot toy                                      # accuracy on held-out drawings
  python3 -m toy zero-shot toy-judge                                # the judge of another architecture
  python3 -m toy guided --clip-model toy --scorer toy-scorer        # what normal.py draws with it
  python3 -m toy prompts --seed 0                                   # the scene world's prompt lists
"""

import argparse

from staged_clip.cli import cli
from staged_clip.flags import (Formatter, decay_float, make_parser, nonnegative_float, nonnegative_int,
                               positive_float, positive_int, seed_int, unit_float)
from staged_clip.startup import use_threads
from staged_clip.models import load_clip
from staged_clip.settings import SCRIPT_DEFAULTS

from . import measure, scene_training, scenes, training, world


def _other_kinds(text):
    """--other-kinds: a comma-separated list of world.OTHER_KINDS names."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    if not kinds or any(k not in world.OTHER_KINDS for k in kinds):
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list from {', '.join(world.OTHER_KINDS)}")
    return kinds


def add_train(sub):
    t = sub.add_parser("train", formatter_class=Formatter,
                       help="train a toy CLIP (from scratch, or on from saved weights) and save it")
    t.add_argument("--seed", type=seed_int, default=0, help="seed of the weights and of the drawings")
    t.add_argument("--steps", type=positive_int, default=2400, help="training steps")
    t.add_argument("--batch", type=positive_int, default=128, help="images per step")
    t.add_argument("--width", type=positive_int, default=None,
                   help=f"width of the vision tower (its cost grows about as the square; default "
                        f"{training.ARCH['vision_width']}, or {training.VIT['vision_width']} with --patch)")
    t.add_argument("--patch", type=positive_int, default=None, metavar="PX",
                   help="make the image tower a vision transformer on PX x PX patches (toy-judge: 8) "
                        "instead of a ModifiedResNet")
    t.add_argument("--layers", type=positive_int, default=None,
                   help=f"blocks of the vision transformer (with --patch; default {training.VIT['vision_layers']})")
    t.add_argument("--init", metavar="MODEL",
                   help="go on training from these weights (toy, or a file saved by train) instead of fresh ones; "
                        "the schedule starts again (use a lower --lr, and --nudge-from 0 after a nudged run)")
    t.add_argument("--lr", type=positive_float, default=1e-3, help="peak AdamW learning rate (cosine decay)")
    t.add_argument("--ema", type=decay_float, default=0.0, metavar="DECAY",
                   help="save an exponential moving average of the weights with this decay per step (0: the last weights)")
    t.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default: the cores no other process keeps busy; training repeats exactly "
                        "for a given count and CPU)")
    t.add_argument("--out", default="models/toy.pt", help="where to save the fp16 state dict")
    t.add_argument("--eval-n", type=positive_int, default=600, help="fresh images per zero-shot test")
    w = t.add_argument_group("what is drawn (shares are of images or of groups of 16)")
    w.add_argument("--unnamed", type=unit_float, default=0.0,
                   help="share of colour groups drawn in colours no caption names (shape apart from colour)")
    w.add_argument("--patchwork", type=unit_float, default=0.0,
                   help="share of groups whose shapes are filled with a patchwork of random colours")
    w.add_argument("--random-colours", type=unit_float, default=0.0,
                   help=f"share of groups whose shapes each get a random solid colour at least {world.FAR} (RGB) "
                        "from every named colour")
    w.add_argument("--any-colours", type=unit_float, default=0.3,
                   help="share of groups whose shapes each get a random colour from anywhere but near a held-out "
                        "pair's colour in that shape, with no colour in their captions")
    w.add_argument("--other-shapes", type=unit_float, default=0.2,
                   help="share of named-colour shapes drawn as shapes no caption names (colour apart from shape)")
    w.add_argument("--other-kinds", type=_other_kinds, default="diamond,wedge", metavar="KINDS",
                   help=f"which shapes --other-shapes draws, comma-separated from {', '.join(world.OTHER_KINDS)}")
    w.add_argument("--mirrored", type=unit_float, default=0.15,
                   help="share of shapes drawn twice, left and mirrored right, true of no place caption "
                        "(teaches that a symmetric image is on neither side)")
    w.add_argument("--mirror-opacity", type=unit_float, default=0.3, metavar="LOW",
                   help="least opacity of the second copy of a --mirrored shape, each drawn from LOW to 1 "
                        "(teaches that a fainter second copy also takes the shape off its side)")
    w.add_argument("--stacked", type=unit_float, default=0.0, metavar="SHARE",
                   help="share of the --mirrored shapes drawn at the top with an upright copy at the bottom instead "
                        "of left and right (teaches that a second copy above or below also takes the shape off its side)")
    w.add_argument("--muted", type=unit_float, default=world.MUTED,
                   help="least share of grey in a background's colour (vivid colour then means the shape); "
                        "the zero-shot test draws with the default")
    w.add_argument("--gray", type=unit_float, default=0.2, help="share of images turned grayscale")
    w.add_argument("--saturate", type=nonnegative_float, default=1.0, metavar="S",
                   help="stretch each named colour's saturation by a random factor from 1 to 1 + S")
    w.add_argument("--desaturate", type=unit_float, default=0.0, metavar="D",
                   help="let that factor go down to 1 - D: greyer colours, whose shapes stand out less")
    w.add_argument("--messy", type=unit_float, default=0.0,
                   help="share of images on vivid blotches, captioned by the renderer's negative style text "
                        "(its style text captions the rest); 0: the two texts are taught to mean the same")
    c = t.add_argument_group("scenes of two objects (toy/scenes.py)")
    c.add_argument("--scenes", type=nonnegative_int, default=0, metavar="N",
                   help="scene images added to each batch (0: none, the single-object world alone)")
    c.add_argument("--scene-captions", choices=scene_training.MODES, default="web",
                   help="web: partial captions, in-batch negatives only, as CLIP was taught (a guide that binds "
                        "weakly); complete: every object named, each scene's swaps and drops as hard negatives "
                        "(judges that bind)")
    c.add_argument("--plain", type=unit_float, default=0.0, metavar="SHARE",
                   help="share of the scenes drawn on a flat background (white, black, grey or any colour far "
                        "from the objects') instead of the world's muted ones")
    n = t.add_argument_group("what is taught")
    n.add_argument("--adversarial", type=unit_float, default=0.01, metavar="EPS",
                   help="train on images nudged by up to EPS per channel (0 to 1) against the model, one "
                        "signed-gradient step each (about 1.6x the time; smoother guided images); 0: off")
    n.add_argument("--nudge-from", type=unit_float, default=0.33, metavar="FRACTION",
                   help="start --adversarial after this fraction of the steps (the first ones learn clean drawings)")
    n.add_argument("--nudged", type=unit_float, default=1.0, metavar="SHARE",
                   help="share of each batch that --adversarial nudges (the rest is learnt as drawn)")
    n.add_argument("--shape-blind", type=positive_int, default=None, metavar="K",
                   help="images shrunk below K px (then upscaled) teach nothing about shape")
    n.add_argument("--unseen-pairs", choices=("negative", "unknown"), default="negative",
                   help="captions naming a shape (colour) never seen in an image's colour (shape) in training: "
                        "negatives for it, or left out as unknown")
    n.add_argument("--vivid-twins", type=nonnegative_int, default=0, metavar="K",
                   help="the first K images of each batch again on vivid backgrounds, taught to fit their captions "
                        "worse than the originals")


def add_zero_shot(sub):
    z = sub.add_parser("zero-shot", formatter_class=Formatter, help="zero-shot accuracy of a checkpoint on freshly drawn images")
    z.add_argument("clip_model", help="a shipped model (toy, toy-scorer, toy-judge, scene, scene-scorer, "
                                      "scene-judge) or a checkpoint path")
    z.add_argument("--seed", type=seed_int, default=1234, help="seed of the drawings")
    z.add_argument("-n", type=positive_int, default=600, help="fresh images per test")
    z.add_argument("--muted", type=unit_float, default=world.MUTED,
                   help="least share of grey in the drawings' backgrounds (0: as vivid as in earlier versions' world)")
    z.add_argument("--scenes", action="store_true",
                   help="also scenes of two objects: binding (the true caption against its swaps) and object recall "
                        "(against a caption missing one object), with 95%% intervals")
    z.add_argument("--json", default=None, metavar="PATH", help="also write the scene figures as JSON (with --scenes)")


def add_guided(sub):
    g = sub.add_parser("guided", formatter_class=Formatter, help="measure the images normal.py draws with a toy model")
    g.add_argument("--clip-model", default="toy", help="the guiding model")
    g.add_argument("--scorer", default="toy-scorer", help="model that judges the shape ('' for none)")
    g.add_argument("--seeds", type=positive_int, default=4,
                   help="seeds 0..N-1 for each of the 24 prompts (4: 96 runs; at 48, one run is 2%%)")
    plain = SCRIPT_DEFAULTS["normal.py"]
    g.add_argument("--size", type=positive_int, default=plain["size"], help="normal.py's --size")
    g.add_argument("--steps", type=positive_int, default=plain["steps"], help="normal.py's --steps")
    g.add_argument("--cutn", type=positive_int, default=plain["cutn"], help="normal.py's --cutn")
    g.add_argument("--no-style", action="store_true", help="turn off target shaping, as normal.py --no-style")
    g.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default: the cores no other process keeps busy)")
    g.add_argument("--grid", help="save every image in one PNG (rows: colours; columns: places x seeds)")


def add_prompts(sub):
    q = sub.add_parser("prompts", formatter_class=Formatter,
                       help="write the scene world's prompt lists (prompts_scenes.txt, prompts_scenes_test.txt)")
    q.add_argument("--seed", type=seed_int, default=0, help="seed of the sample")
    q.add_argument("--folder", default=".", help="where to write the two lists")


def write_prompts(args):
    """The scene prompt lists, sampled by seed, written to args.folder."""
    from pathlib import Path
    from staged_clip.output import check_folder, write_text
    check_folder(args.folder, "--folder")
    learn, test = scenes.sample_prompts(args.seed)
    held = sum(scenes.held_out(scenes.parse(t)) for t in test)
    counts = dict(scenes=len(learn) - 10, singles=10, test=len(test), held=held, seed=args.seed)
    for name, kind, lines in (("prompts_scenes.txt", "learn", learn), ("prompts_scenes_test.txt", "test", test)):
        write_text(Path(args.folder) / name, scenes.PROMPT_HEADERS[kind].format(**counts) + "\n".join(lines) + "\n")
        print(f"wrote {Path(args.folder) / name} ({len(lines)} prompts)")


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.prog = "python3 -m toy"
    sub = p.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_zero_shot(sub)
    add_guided(sub)
    add_prompts(sub)
    return p.parse_args(argv)


@cli
def main(argv=None):
    args = parse_args(argv)
    if args.command == "train" and args.width is None:
        args.width = training.ARCH["vision_width"] if args.patch is None else training.VIT["vision_width"]
    if args.command == "prompts":
        return write_prompts(args)
    use_threads(getattr(args, "threads", None))
    if args.command == "guided":
        measure.guided(args)
    elif args.command == "train":
        training.train(args)
    elif args.command == "zero-shot":
        model = load_clip(args.clip_model)
        measure.report(model, args.seed, args.n, args.muted)
        if args.scenes:
            found = measure.scene_report(model, args.seed, args.n, args.muted)
            measure.print_scenes(found)
            if args.json:
                import json
                from staged_clip.output import write_text
                write_text(args.json, json.dumps({"clip_model": args.clip_model, "seed": args.seed, "n": args.n,
                                                  **found}, indent=2) + "\n")

