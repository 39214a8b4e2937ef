#!/usr/bin/env python3
"""Bake every prompt of a list (one a line; blank lines and # comments ignored), loading CLIP once.

Example: python batch_bake.py prompts.txt --baked-dir baked
"""

from pathlib import Path

import common


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompts_file", nargs="?", default="prompts.txt", help="file of prompts, one a line")
    common.add_common_args(p, size=128, steps=30, cutn=1, out=None)  # images go beside the bakes
    common.add_bake_args(p)
    return p.parse_args(argv)


def read_prompts(path):
    """The prompts of a list file: stripped lines, without blanks, # comments or repeats."""
    path = Path(path)
    if not path.is_file():
        raise common.UserError(f"prompts file {path} not found: give a file with one prompt a line")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise common.UserError(f"cannot read {path} ({type(e).__name__}): save it as UTF-8 text") from None
    prompts = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#") and line not in prompts:
            prompts.append(line)
    if not prompts:
        raise common.UserError(f"{path} holds no prompts: write one prompt a line")
    return prompts


@common.cli
def main(argv=None):
    from tqdm import tqdm
    args = parse_args(argv)
    args.wandb = common.wandb_mode(args.wandb)
    prompts = read_prompts(args.prompts_file)
    paths = [common.baked_path(args.baked_dir, text) for text in prompts]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            other = prompts[paths.index(path)]
            raise common.UserError(f"{other!r} and {prompts[i]!r} would both be baked to {path}: "
                                   f"reword one of them")
    model, seed = common.start(args, writes_baked=True)
    parsed = [common.load_prompt(model, text) for text in prompts]  # every prompt checked up front
    shift = common.style_shift(model, args.style, args.style_text, args.negative_text)
    bar = tqdm(list(enumerate(parsed)), desc="prompts", position=0, dynamic_ncols=True)
    for i, prompt in bar:
        bar.set_postfix_str(prompt.text[:40])
        path = paths[i]
        common.seed_everything(seed + i, announce=False)  # recorded in the baked file
        try:
            history = common.bake_prompt(model, prompt, shift, args, seed + i, path,
                                         path.with_suffix(".png"), position=1)
        except common.BakeInterrupted as stop:
            bar.close()
            raise SystemExit(stop.message(f"; {len(parsed) - i - 1} prompt(s) not started")) from None
        common.log(f"baked {prompt.text!r}: final meta loss {history[-1]:.4f} -> {path}")
    bar.close()
    print(f"baked {len(parsed)} prompt(s) into {args.baked_dir}")


if __name__ == "__main__":
    main()
