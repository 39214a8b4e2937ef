#!/usr/bin/env python3
"""Microwave a baked file: replay its stages on a fresh image, optionally mixed with a prompt.

Examples:
  python microwave.py baked/a_red_apple.pt
  python microwave.py "a green apple" baked/a_red_apple.pt --out apple.png
  python microwave.py "a green apple" baked/shared_prompts.pt   # a shared bake needs the prompt
"""

import common


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="a prompt to mix into each stage (optional)")
    p.add_argument("baked", metavar="BAKED.pt", help="the baked file to replay")
    common.add_common_args(p, "microwave.py")
    common.add_start_args(p)
    p.add_argument("--mix", type=common.unit_float, default=0.5,
                   help="weight of the prompt in each stage's target (with a prompt and a prompt's bake)")
    args, extra = p.parse_known_args(argv)
    if extra:
        loose = [x for x in extra if not x.startswith("-")]
        p.error("give a baked file, or a prompt and a baked file (quote a prompt with spaces)" if loose
                else f"unrecognized arguments: {' '.join(extra)}")
    if args.prompt is None and not common.looks_baked(args.baked):
        p.error(f"a baked file is missing: {args.baked!r} is not one; give the prompt and then a baked file, "
                f"e.g. microwave.py {args.baked!r} baked/NAME.pt")
    return args


@common.cli
def main(argv=None):
    args = parse_args(argv)
    baked = common.load_baked(args.baked)  # a bad file fails before CLIP loads
    common.check_replay(baked, args.prompt is not None)
    run = common.start(args, "microwave.py")
    settings, model = common.settings_of(args, run, baked["config"], args.baked), run.model
    common.check_stage_width(baked, model.dim)
    if baked["clip_model"] is not None and not model.made(baked):
        other = "other weights of the same name" if baked["clip_model"] == model.name else baked["clip_model"]
        common.log(f"note: {args.baked} was baked with {other}; its stages may mean little to {model.name}")
    if not baked["complete"]:
        common.log(f"note: {args.baked} is an interrupted bake; its stages may be unfinished")
    info = {"baked_file": args.baked, "baked_prompt": baked["prompt"]}
    prompt = None
    if args.prompt is not None:
        prompt = common.load_prompt(model, args.prompt)
        info["prompt"] = prompt.text
    # a shared bake replays the prompt itself as every stage, so --mix plays no part
    targets, scale = common.replay_bake(model, baked, common.style_shift(model, settings), prompt, args.mix)
    z, loss, stop = common.render(model, targets, settings, run.output, desc="microwave", lr_scale=scale,
                                  start=run.start)
    paths = run.save(z, settings, stop, loss=loss, **info)
    print(f"microwaved {baked['prompt']!r} ({len(targets)} stages){f' for {prompt.text!r}' if prompt else ''}; "
          f"saved {', '.join(paths)}")


if __name__ == "__main__":
    main()
