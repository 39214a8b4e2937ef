"""Staged CLIP guidance: an RGB tensor optimized by Adam through stages, each aimed at its own
CLIP embedding, and the bake that learns those embeddings. The scripts use it through common.py.

Modules, from the bottom up: errors (user errors, status lines), randomness (seeds and
random state), models (loading CLIP, its precision), prompts (prompts, embeddings, targets),
cutouts, losses, settings (the one dataclass of the renderer's and bake's settings), output
(atomic files, PNGs, progress frames), render (the renderer and its differentiable twin),
baked (baked files), wandb_log, baking (the meta step and the bake), batch (baking a list),
cli (flags and a run's start), evaluation and benchmark (measuring the method and its speed).
"""

import warnings

# The clip package imports pkg_resources, which warns on every start; the warning is
# about clip's packaging, not about anything a user can act on.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
