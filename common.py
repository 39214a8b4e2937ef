"""The scripts' one door to the staged_clip package: what bake, microwave, auto_microwave, normal,
batch_bake, evaluate, bench and serve use, and nothing else (the tests import the modules that own
the rest). Each name is documented where it is defined; staged_clip/__init__.py maps the package.

The door opens lazily: a name's module is imported when a script first uses it, so that
parsing the flags, and --help, never waits for torch to load.
"""

import importlib as _importlib

_DOOR = {  # name -> module.attribute in staged_clip
    # the command line (no torch)
    "cli": "cli.cli", "make_parser": "flags.make_parser", "add_common_args": "flags.add_common_args",
    "add_timed_args": "flags.add_timed_args", "add_bake_args": "flags.add_bake_args",
    "positive_int": "flags.positive_int",
    "unit_float": "flags.unit_float", "name_list": "flags.name_list", "shard_arg": "flags.shard_arg",
    "add_init_arg": "flags.add_init_arg",
    "SCRIPT_DEFAULTS": "settings.SCRIPT_DEFAULTS",
    "TUNE_LRS": "settings.TUNE_LRS",
    "META_GRADS": "settings.META_GRADS", "PARAMS": "settings.PARAMS", "PRECISIONS": "settings.PRECISIONS",
    "UserError": "errors.UserError",
    # a run's start
    "start": "runs.start", "settings_of": "runs.settings_of",
    "torchrun_device": "batch.torchrun_device", "join_processes": "baking.join_processes",
    "leave_processes": "distributed.leave",
    # a rendering script's flags and run (recipes.py: shared with the server)
    "parse_script": "recipes.parse", "make_image": "recipes.make",
    # serving (serve.py)
    "add_serve_args": "serving.add_args", "serve": "serving.main", "bench_serve": "servebench.measure",
    "ServeBenchOptions": "servebench.Options",
    # prompts
    "load_prompt": "prompts.load_prompt", "read_prompts": "prompts.read_prompts",
    "style_shift": "prompts.style_shift",
    "palette_variant": "palettes.variant",
    # baking
    "Baker": "baking.Baker", "bake_prompt": "baking.bake_prompt", "bake_shared": "baking.bake_shared",
    "starting_from": "baking.starting_from", "is_shared": "knobs.is_shared",
    "bake_list": "batch.bake_list", "bake_paths": "batch.bake_paths",
    "pick_shard": "batch.pick_shard",
    # baked files
    "baked_path": "baked.baked_path", "load_baked": "baked.load_baked",
    "check_stage_width": "baked.check_stage_width",
    # files
    "check_file": "output.check_file", "write_text": "output.write_text", "provenance": "output.provenance",
    # measuring
    "Plan": "evaluation.Plan", "evaluate": "evaluation.evaluate", "START_SEED": "scoring.START_SEED",
    "MAX_STARTS": "scoring.MAX_STARTS", "probe_chaos": "chaos.probe_all", "write_report": "report.write",
    "BenchOptions": "benchmark.Options", "measure": "benchmark.measure", "device_name": "benchmark.device_name",
}
__all__ = list(_DOOR)


def __getattr__(name):
    """A name of the door, imported from its module on first use."""
    if name not in _DOOR:
        raise AttributeError(f"module 'common' has no attribute {name!r}")
    module, attribute = _DOOR[name].rsplit(".", 1)
    value = getattr(_importlib.import_module(f"staged_clip.{module}"), attribute)
    globals()[name] = value  # once found, an ordinary attribute
    return value


def __dir__():
    return sorted(__all__)
