"""python3 -m toy train|zero-shot|guided: see toy/cli.py."""

from toy.cli import main

main()
