#!/usr/bin/env python3
"""Auto-microwave an unseen prompt: compose stages from the nearest baked prompts, or where they
are all far from it, replay a shared bake for it.

Example: python auto_microwave.py "a yellow pear" --baked-dir baked --out pear.png
"""

import common


def parse_args(argv=None):
    return common.parse_script("auto_microwave.py", argv, __doc__)


@common.cli
def main(argv=None):
    common.make_image("auto_microwave.py", parse_args(argv))


if __name__ == "__main__":
    main()
