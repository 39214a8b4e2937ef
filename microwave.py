#!/usr/bin/env python3
"""Microwave a baked file: replay its stages on a fresh image, optionally mixed with a prompt.

Examples:
  python microwave.py baked/a_red_apple.pt
  python microwave.py "a green apple" baked/a_red_apple.pt --out apple.png
  python microwave.py "a green apple" baked/shared_prompts.pt   # a shared bake needs the prompt
"""

import common


def parse_args(argv=None):
    return common.parse_script("microwave.py", argv, __doc__)


@common.cli
def main(argv=None):
    common.make_image("microwave.py", parse_args(argv))


if __name__ == "__main__":
    main()
