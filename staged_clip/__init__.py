"""Staged CLIP guidance: an RGB tensor optimized by Adam through stages, each aimed at its own
CLIP embedding, and the bake that learns those embeddings. The scripts use it through common.py.

The modules, bottom to top (each imports only from the lines above it):
  errors, settings   user errors and status lines; the frozen Settings and every default and
                     choice the command line shows (neither imports torch)
  cli                a script's main: user errors as one line, SIGTERM as Ctrl-C, an
                     interrupted run's exit status (130, 143)
  jobs               a durable queue of jobs in SQLite (for a server): positions, claims in
                     one transaction, batches by key, cancel, recovery after a crash
  randomness, distributed, memory, cutouts, stats, palettes, readout, plot
                     seeds; one bake's work shared among torchrun's processes; peak memory;
                     what CLIP sees of an image; win rates, intervals, paired differences,
                     McNemar's test; palettes (named, listed, from an image) and what they do
                     to an image; whether a judge reads an image as its prompt (the drawn
                     world's captions), or its pixels do; line charts drawn with PIL
  models, prompts, params, starts
                     CLIP loaded and frozen at a precision; prompts, embeddings, targets; what
                     Adam optimizes (rgb, pyramid, fourier, at any aspect); where a run's
                     images start (its seeds or variations' seeds, a start image)
  structure          a prompt's parts (the objects a scene names) and its colourless layout
  losses, knobs      the spherical distance, the renderer's loss and the bake's; the per-stage
                     knobs a bake may learn (learning rate, style, part of the prompt, a
                     scene's first object, its layout) and the targets made of them
  output             atomic files, the PNG that records its making (Output; indexed in a
                     palette, at its own grid, variations and their contact sheet), progress frames
  render, scoring, wandb_log
                     the renderer (rollout, differentiable_rollout); an evaluation's starts
                     and how a judge scores an image; wandb
  es, startup        the ES estimator's maths; a run's start (device, threads, CLIP, seed)
  tasks              what a bake aims at: one prompt, or a shared bake's list (pairs drawn on
                     some, the gate validating on held-out ones)
  flags, runs, gate, learners, chaos
                     the command line's flags, and what parsed flags make (a started run, its
                     settings: the one reader of them); the validation gate; the estimators,
                     one class each (LEARNERS); the chaos probe
  baked, benchmark   baked files (saving, safe loading, same-bake checks, nearest bakes); timing
  recipes            what the rendering scripts make of their flags (parsers, a Plan: targets,
                     learning-rate scale, settings, what the PNG records), shared with the server
  orders, worker     what a client may ask the server, checked, as its script's command line;
                     the worker that renders the queue's jobs, a batch per renderer, as the scripts do
  server, serving, servebench
                     serve.py's web app (the API, server-sent events, the page in page/), its
                     start (a token beyond loopback, CLIP loaded once per device, uvicorn) and
                     bench.py --serve (clients over loopback against the same jobs as commands)
  baking, methods    a bake (Baker, Bake: one prompt's, or shared over a list); the ways an
                     evaluation makes an image
  batch, tuning      baking a list (shards, resuming, failures); the tuned baselines' learning-rate sweeps
  report             the evaluation's tables, grids and step-budget curve, and writing them
  evaluation         measuring the method: bakes, every method from held-out starts (a prompt's
                     starts as one batch), scores and readouts, at one step budget or several

Where the next thing goes:
- an estimator: a Learner subclass in learners.py (step, current, and what the bake asks of
  it: gate_every, fields, shares_processes, learns_shared, learns_knobs), its name in settings.META_GRADS, its
  settings as Settings fields with their flags in flags.py;
- a knob a bake learns per stage: a Knob in knobs.KNOBS (its file key, sigma and learn
  fields in Settings, with flags), and its effect in knobs.targets or the renderer;
- a parametrization: a class with encode and decode in params.py, its name in settings.PARAMS;
- an evaluation method: a kind of methods.Method (its name), what it renders in methods.recipe,
  and its place in methods.methods_of (a baseline: also in methods.BASELINES).
"""

import warnings

# The clip package imports pkg_resources, which warns on every start; the warning is
# about clip's packaging, not about anything a user can act on.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
