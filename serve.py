#!/usr/bin/env python3
"""Serve CLIP-guided pixel art over HTTP: one process keeps CLIP loaded, queues requests durably
(SQLite under --data: a crash loses no accepted job), renders the jobs that share a renderer as
one batch, and has a page at / for a browser. The API is in docs/serve.md.

Examples:
  python serve.py --clip-model toy                     # http://127.0.0.1:8000/
  python serve.py --host 0.0.0.0 --token SECRET --devices cuda:0,cuda:1
  curl -X POST localhost:8000/api/jobs -H 'Content-Type: application/json' \\
       -d '{"prompt": "a red circle", "size": 32, "steps": 40, "seed": 1}'
"""

import common


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    common.add_serve_args(p)
    return p.parse_args(argv)


@common.cli
def main(argv=None):
    common.serve(parse_args(argv))


if __name__ == "__main__":
    main()
