"""What a script's parsed flags make: a started Run (its model, output, seed and start images) and
the frozen Settings. With flags.py, the one place that reads argparse's Namespace: below it,
nothing sees it (a PNG records a copy of the flags' values: output.Output.flags).
"""

import dataclasses
from dataclasses import dataclass

from .errors import Interrupted, UserError, log
from .settings import NO_PALETTE, ORIGINAL_REPLAY_SIZE, RENDERER_OF_BAKE, SAVE_SIZE, Settings, replayed


@dataclass(frozen=True)
class Run:
    """A started run: its model (a models.Clip), where its image goes (an output.Output), its
    wandb logging (a wandb_log.WandbLog; None for a script that does not log), its seed and
    threads, and where its images start (a starts.Start: their seeds, a start image)."""

    model: object
    output: object
    wandb: object
    seed: int
    threads: int
    start: object = None

    def save(self, z, settings, stop=None, **extra):
        """Save the run's images as its PNGs (variations: each, and their contact sheet); returns the paths.

        stop: where render was interrupted (an errors.Interrupted), or None. An interrupted run's
        PNGs record it ("interrupted": "step K of N"), and once they are written it is raised
        again, naming them, so that the script exits 130 (143 on SIGTERM) instead of 0.
        """
        if self.start is not None and self.start.path is not None:
            extra = {"init_image": self.start.path, **extra}
        if stop is not None:
            extra = {**extra, "interrupted": stop.what}
        if self.start is not None and len(self.start.seeds) > 1:
            paths = self.output.save_variations(z, settings, self.model.device, self.start.seeds, **extra)
        else:
            paths = self.output.save(z, settings, self.model.device, **extra)
        if stop is not None:
            raise Interrupted(f"at {stop.what}; the image so far is saved to {', '.join(paths)} (its PNG "
                              f"records \"interrupted\": \"{stop.what}\")", stop.signum)
        return paths


def start(args, script, writes_baked=False):
    """What every script does first: check what it writes and reads, then pick device and threads,
    load CLIP and seed (startup.launch). script names the run in its PNGs (output.Output.record).

    Every check that needs no model comes before the model loads; seeding comes after, so
    that a seed means the same run whatever loading drew. Returns a Run.
    """
    from . import output, starts, startup  # here, not above: --help must not wait for torch
    out, wandb = prepare(args, script, writes_baked)
    output.provenance()  # read now, once, rather than while an interrupted bake saves
    model, seed, threads = startup.launch(args.clip_model, args.device, args.seed, args.threads, args.precision,
                                          args.compile)
    flags = vars(args)
    begin = starts.Start.of(seed, flags.get("variations", 1), flags.get("init_image"), flags.get("init_noise", 0.0))
    return Run(model, out, wandb, seed, threads, begin)


def started(args, script, model, threads):
    """A Run on a model already loaded (the server's), its seed args.seed, each image drawn from its
    own generator: start's checks and Run, without loading or seeding anything."""
    from . import starts
    out, wandb = prepare(args, script)
    flags = vars(args)
    return Run(model, out, wandb, args.seed, threads, starts.Start.of(args.seed, flags.get("variations", 1)))


def prepare(args, script, writes_baked=False):
    """start's part before the model: the run's output.Output and wandb_log.WandbLog (None for a script
    that does not log), once what the run reads and writes is checked (check_inputs)."""
    from . import output, starts, wandb_log
    flags = vars(args)
    out = output.Output(flags.get("out"), flags.get("save_size", SAVE_SIZE), flags.get("save_progress"), script,
                        dither=flags.get("dither", False), native=flags.get("save_native", False),
                        flags={k: v for k, v in flags.items() if k != "out"})
    wandb = wandb_log.WandbLog(wandb_log.wandb_mode(args.wandb), args.wandb_project,
                               args.log_every) if "wandb" in flags else None
    check_inputs(args, out, writes_baked)
    if flags.get("init_image") is not None:  # read now to fail early; read again at the size rendered
        starts.load_start_image(args.init_image, shape_of(args) if args.size else 8)
    return out, wandb


def shape_of(args):
    """The image's (height, width) as the flags give it (--size W [H], --width, --height); None where
    --size is left to a replayed bake (auto_microwave.py)."""
    return (args.height or args.size, args.size) if args.size else None


def check_inputs(args, out, writes_baked):
    """start's checks of what a run reads and writes, before any model loads; resolves --palette to
    its colours (or NO_PALETTE for 'none'; None where not given) in place."""
    from . import output, palettes, params, prompts
    flags = vars(args)
    if out.path is not None:
        output.check_output(out.path)
    if writes_baked:
        output.check_folder(args.baked_dir, "--baked-dir")
    if flags.get("prompt") is not None:
        prompts.check_prompt(args.prompt, out.path)
    if flags.get("checkpoint") and args.carry_moments:
        raise UserError("--checkpoint reruns each stage alone, so it cannot carry Adam's moments between stages: "
                        "drop one of --checkpoint and --carry-moments")
    if args.param is not None and args.size:
        params.check(args.param, shape_of(args), args.pyramid_levels)
    if args.palette is not None:
        args.palette = palettes.resolve(args.palette, args.palette_size) or NO_PALETTE


def settings_of(args, run, bake=None, source=None):
    """The frozen Settings of a run: its flags, with the seed and threads it started with.

    bake: the config of a bake being replayed, whose renderer (learning rate, Adam's eps and
    moments, parametrization, palette; auto_microwave.py's size) holds where the flags leave it
    (None), said in one line (source names the bake), as is a --param or --palette other than its own.
    """
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
              if f.name in vars(args) and f.name not in ("seed", "threads")}
    if bake is not None:
        fields = from_bake(args, fields, bake, source)
    if fields.get("palette") == NO_PALETTE:
        fields["palette"] = None
    if getattr(args, "dither", False) and fields.get("palette") is None:
        log("note: --dither acts only with a palette (--palette); saving without it")
    return Settings(**fields, seed=run.seed, threads=run.threads)


def from_bake(args, fields, bake, source):
    """The fields of a replay's Settings with what the flags left to its bake (config) taken from it, and
    one line at the start saying what was taken."""
    given = dict(fields)
    fields = {**fields, **replayed(fields, bake)}
    if fields.get("size") is None:  # the size the bake was learned at (auto_microwave.py)
        fields.update(size=bake.get("size", ORIGINAL_REPLAY_SIZE), height=bake.get("height"))
        if args.param is not None:
            from . import params
            params.check(args.param, (fields["height"] or fields["size"], fields["size"]), args.pyramid_levels)
    taken = [said(name, fields[name]) for name in (*RENDERER_OF_BAKE, "size")
             if given.get(name) is None and name in fields and said(name, fields[name])]
    log(f"from {source}: {bake.get('stages', 'its')} stages and their knobs"
        + (f", {', '.join(taken)}" if taken else "") + " (a flag overrides each)")
    made = bake.get("param", "rgb")
    if args.param is not None and args.param != made:
        log(f"note: {source} was baked with --param {made}; replaying it with --param {args.param}")
    made = bake.get("palette")
    if args.palette is not None and (None if args.palette == NO_PALETTE else args.palette) != made:
        log(f"note: {source} was baked {'in ' + palette_name(made) if made else 'without a palette'}; "
            f"replaying it {'in ' + palette_name(args.palette) if args.palette != NO_PALETTE else 'without one'}")
    return fields


def said(name, value):
    """A setting taken from a bake as its line says it ("--lr 0.96"), or "" where not worth a word."""
    if name == "palette":
        return f"--palette {palette_name(value).removeprefix('the palette ')}" if value else "no palette"
    if name in ("palette_weight", "palette_hard", "pyramid_levels") or value is None:
        return ""
    if name == "carry_moments":
        return "Adam's moments carried between stages" if value else "Adam restarted each stage"
    return f"--{name.replace('_', '-')} {value}"


def palette_name(palette):
    """A palette's name where it is a named one, else its number of colours."""
    from .palettes import NAMED
    names = [name for name, colours in NAMED.items() if colours == palette]
    return f"the palette {names[0]}" if names else f"a palette of {len(palette.split(','))} colours"
