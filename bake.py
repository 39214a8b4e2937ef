#!/usr/bin/env python3
"""Bake a prompt: meta-optimize the stage embeddings of a staged CLIP-guided run.

Examples:
  python bake.py "a red apple" --clip-model ViT-B/32 --out apple.png
  torchrun --standalone --nproc-per-node 4 bake.py "a red apple" --meta-grad es --seed 0   # pairs shared out
"""

import common


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompt", help="text (weighted parts: 'a | b:0.5 | c:-1') or an image file")
    common.add_common_args(p, "bake.py")
    common.add_bake_args(p)
    p.add_argument("--name", default=None, help="baked file name (default: a slug of the prompt)")
    return p.parse_args(argv)


@common.cli
def main(argv=None):
    args = parse_args(argv)
    path = common.baked_path(args.baked_dir, args.prompt, args.name)
    args.device = common.torchrun_device(args.device)
    run = common.start(args, "bake.py", writes_baked=True)
    settings, model = common.settings_of(args, run), run.model
    rank, processes = common.join_processes(model.device)  # under torchrun: one bake, its pairs shared out
    if processes > 1:
        settings = settings.replace(seed=common.shared_seed(settings.seed))
        common.seed_everything(settings.seed, announce=False)
        if not common.learner_of(settings).shares_processes and rank == 0:
            common.log(f"note: --meta-grad {settings.meta_grad} does not share a bake among processes; the "
                       f"{processes} processes all bake alike and the first writes")
    prompt = common.load_prompt(model, args.prompt)
    baker = common.Baker(model, common.style_shift(model, settings), run.wandb)
    try:
        history = common.bake_prompt(baker, prompt, settings, path, run.output)
    except common.BakeInterrupted as stop:
        raise SystemExit(stop.message()) from None
    finally:
        common.leave_processes()
    if rank > 0:
        return
    print(f"baked {prompt.text!r}: final meta loss {history[-1]:.4f}; stages in {path}, image in {args.out}")


if __name__ == "__main__":
    main()
