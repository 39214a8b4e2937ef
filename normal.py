#!/usr/bin/env python3
"""Plain CLIP-guided optimization of an RGB tensor toward a prompt (the control).

Examples:
  python normal.py "a red apple" --out apple.png
  python normal.py "a red apple" --palette pico8 --size 48 32 --variations 4 --out apple.png
"""

import common


def parse_args(argv=None):
    return common.parse_script("normal.py", argv, __doc__)


@common.cli
def main(argv=None):
    common.make_image("normal.py", parse_args(argv))


if __name__ == "__main__":
    main()
