"""The scripts' one door to the staged_clip package: what bake, microwave, auto_microwave,
normal, batch_bake, evaluate and bench use, and nothing else.

The method in a few names: load_clip gives a frozen CLIP; load_prompt and style_shift
make a prompt's target; rollout optimizes an RGB tensor (or, by --param, a pyramid or a
spectrum of it) with Adam through the stages
(a fresh optimizer each, aiming at shape_targets(stages, shift)), measured by
spherical_distance; bake_prompt learns the stages by meta_step; save_baked and
load_baked keep them. Each name is documented where it is defined.
"""

from staged_clip import benchmark, chaos, evaluation
from staged_clip.baked import (already_baked, baked_path, check_stage_width, compose_path, load_baked,
                               load_baked_dir, nearest_bakes, save_baked, scales_of)
from staged_clip.baking import BakeInterrupted, bake_prompt, meta_step
from staged_clip.batch import bake_list, bake_paths, pick_shard, shard_arg, torchrun_device
from staged_clip.cli import (Formatter, add_bake_args, add_bake_settings, add_common_args, add_es_settings,
                             add_model_args, add_render_args, make_parser, nonnegative_int, number, positive_float,
                             positive_int, replay_settings, seed_int, start, unit_float, use_threads)
from staged_clip.cutouts import make_cutouts
from staged_clip.distributed import join as join_processes, leave as leave_processes, shared_seed
from staged_clip.errors import UserError, cli, log
from staged_clip.losses import bake_loss, image_loss, spherical_distance, stage_regularizer, total_variation
from staged_clip.models import PRECISIONS, Clip, load_clip, math_attention
from staged_clip.output import (Output, atomic_write, check_file, quantize, run_info, save_image, to_pixels,
                                write_text)
from staged_clip.params import PARAMS
from staged_clip.prompts import (NEGATIVE_TEXT, STYLE_TEXT, Prompt, embed_images, embed_texts, lerp_unit, load_prompt,
                                 parse_prompt, read_prompts, shape_targets, style_shift)
from staged_clip.randomness import seed_everything
from staged_clip.render import adamw_step, random_start, render, rollout
from staged_clip.settings import LR, META_GRADS, SCRIPT_DEFAULTS, Settings
from staged_clip.wandb_log import WandbLog

__all__ = [
    # the method
    "load_clip", "Clip", "load_prompt", "Prompt", "embed_texts", "embed_images", "style_shift", "shape_targets", "lerp_unit",
    "spherical_distance", "image_loss", "total_variation", "make_cutouts", "random_start", "adamw_step",
    "rollout", "render", "bake_loss", "stage_regularizer", "meta_step", "bake_prompt", "BakeInterrupted",
    "Settings", "LR", "META_GRADS", "PARAMS", "SCRIPT_DEFAULTS", "STYLE_TEXT", "NEGATIVE_TEXT", "PRECISIONS", "math_attention",
    # baked files
    "save_baked", "load_baked", "load_baked_dir", "baked_path", "check_stage_width", "already_baked",
    "nearest_bakes", "compose_path", "scales_of",
    # baking a list
    "read_prompts", "bake_list", "bake_paths", "pick_shard", "shard_arg", "torchrun_device",
    # processes
    "join_processes", "leave_processes", "shared_seed",
    # output
    "Output", "save_image", "run_info", "to_pixels", "quantize", "atomic_write", "write_text", "check_file",
    "WandbLog",
    # the command line
    "cli", "UserError", "log", "make_parser", "Formatter", "add_common_args", "add_model_args",
    "add_render_args", "add_bake_args", "add_bake_settings", "add_es_settings", "number", "positive_int",
    "nonnegative_int",
    "positive_float", "unit_float", "seed_int", "start", "replay_settings", "use_threads", "seed_everything", "parse_prompt",
    # measuring
    "evaluation", "benchmark", "chaos",
]
