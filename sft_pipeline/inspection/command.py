"""The ``inspect`` sub-command of ``sft-pipeline`` (registered by ``sft_pipeline/cli.py``)."""

from __future__ import annotations

import argparse
import sys

from sft_pipeline.errors import InputError
from sft_pipeline.inspection.paint import COLOUR_CHOICES, Painter, wants_colour

SEPARATOR = "─" * 72
EXAMPLE = "sft-pipeline inspect tiny_chat.jsonl:2 --config deployments/configs/tiny.yaml"


def add_command(sub, add_config_args) -> None:
    p = sub.add_parser("inspect", help="trace one row through every stage's outputs (or --random N of them)",
                       description=f"Trace one row through every stage's outputs on disk, e.g. {EXAMPLE}")
    p.add_argument("row", nargs="?", help="a row id (or a unique prefix of one), or SOURCE:RECORD (0-based record "
                                          "index, as ingest stores it; also names a rejected row)")
    p.add_argument("--run", help="a run folder: an evaluate folder (its run.json), a stage folder, or an output "
                                 "root (its newest stage folder); default: the stage folders of --config's run")
    add_config_args(p)
    p.add_argument("--random", type=int, metavar="N", help="show N rows drawn at random (with --seed)")
    p.add_argument("--where", action="append", default=[], metavar="STAGE=DECISION",
                   help="with --random: only rows with this decision, e.g. filter=dropped, tokenize=heldout, "
                        "tokenize=shortened, ingest=rejected, score=too_short (repeatable: all must hold)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random's draw")
    p.add_argument("--color", "--colour", dest="colour", choices=COLOUR_CHOICES, default="auto",
                   help="colours on a terminal (auto), always, or never (plain marks such as ⟦...⟧)")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from sft_pipeline.inspection import open_run, pick, show

    if (args.row is None) == (args.random is None):
        raise InputError("inspect: give a ROW or --random N (not both)")
    if args.where and args.random is None:
        raise InputError("inspect: --where selects rows for --random N")
    if args.random is not None and args.random < 1:
        raise InputError(f"inspect: --random {args.random}: give a number of rows of at least 1")
    files = open_run(args.run, args.config, args.overrides)
    colour = wants_colour(args.colour, sys.stdout)
    rows = [args.row] if args.row is not None else pick(files, args.random, args.where, args.seed)
    if not rows:
        print(f"no row matches {' and '.join(Painter(False)(w) for w in args.where)}")
        return 0
    for k, row in enumerate(rows):
        if k:
            print(SEPARATOR)
        sys.stdout.write(show(files, row, colour))
    if args.random is not None and len(rows) < args.random:
        print(f"({len(rows)} of the {args.random} rows asked for: no more match)")
    return 0
