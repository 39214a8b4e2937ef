#!/usr/bin/env python3
"""Bake a prompt: meta-optimize the stage embeddings of a staged CLIP-guided run.

Or learn one shared bake over a prompt list (--prompts FILE): per-stage knobs (learning-rate
multipliers, ...) that replay for any prompt, which a prompt's bake can start from (--init-from).

Examples:
  python bake.py "a red apple" --clip-model ViT-B/32 --out apple.png
  python bake.py --prompts prompts.txt --meta-grad es --cutn 8             # -> baked/shared_prompts.pt
  python bake.py "a red apple" --init-from baked/shared_prompts.pt --meta-steps 10
  torchrun --standalone --nproc-per-node 4 bake.py "a red apple" --meta-grad es --seed 0   # pairs shared out
"""

from pathlib import Path

import common


def parse_args(argv=None):
    return common.parse_script("bake.py", argv, __doc__)


@common.cli
def main(argv=None):
    args = parse_args(argv)
    texts = common.read_prompts(args.prompts) if args.prompts else None  # a bad list fails before CLIP loads
    init = common.load_baked(args.init_from) if args.init_from else None
    name = args.name or (f"shared_{Path(args.prompts).stem}" if texts else None)
    path = common.baked_path(args.baked_dir, args.prompt or "", name)
    args.device = common.torchrun_device(args.device)
    run = common.start(args, "bake.py", writes_baked=True)
    settings, model = common.settings_of(args, run), run.model
    if init is not None:
        common.check_stage_width(init, model.dim)
        settings = common.starting_from(settings, init)
    rank, _, settings = common.join_processes(model.device, settings)  # under torchrun: one bake, pairs shared out
    baker = common.Baker(model, common.style_shift(model, settings), run.wandb, init=init)
    try:
        if texts:
            history = common.bake_shared(baker, texts, settings, path, run.output, args.prompts)
            what = f"a shared bake of {len(texts)} prompts"
        else:
            prompt = common.load_prompt(model, args.prompt)
            history = common.bake_prompt(baker, prompt, settings, path, run.output)
            what = repr(prompt.text)
    finally:
        common.leave_processes()
    if rank > 0:
        return
    print(f"baked {what}: final meta loss {history[-1]:.4f}; stages in {path}, image in {args.out}")


if __name__ == "__main__":
    main()
