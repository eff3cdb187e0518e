"""Library commands of `sft-pipeline` (no orchestrator): ingest, filter, report.

`flows/cli.py` adds the Prefect-backed `run` command and is the console entry point.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from sft_pipeline import constants as C
from sft_pipeline.errors import PipelineError

EXIT_USER_ERROR = 2
DEFAULT_CONFIG = "deployments/configs/default.yaml"


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.SUB=VALUE",
                   help="override a config value (repeatable)")


def cmd_ingest(args: argparse.Namespace) -> int:
    from sft_pipeline.config import IngestConfig, SourceConfig
    from sft_pipeline.ingest import format_summary
    from sft_pipeline.ingest.output import ingest_into

    out = Path(args.out)
    cfg = IngestConfig(sources=[SourceConfig(path=p, format=args.format) for p in args.inputs])
    print(format_summary(ingest_into(cfg, out)))
    print(f"wrote {out / C.CONVERSATIONS_FILE} and {out / C.REJECTS_FILE}")
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    """Re-filter from stored scores: ingest and score are not recomputed."""
    from sft_pipeline import stages
    from sft_pipeline.config import load_config

    overrides = list(args.overrides)
    if args.threshold is not None:
        overrides.append(f"filter.threshold={args.threshold}")
    cfg = load_config(args.config, overrides)
    score = stored_result(cfg, "score")
    result = stages.run_filter(cfg, score)
    print(f"filter: {result.counts_line()}")
    print(f"kept:    {result.path(C.FILTERED_FILE)}")
    print(f"dropped: {result.path(C.DROPPED_FILE)}")
    return 0


def stored_result(cfg, stage: str):
    """The stored output of ``stage`` (and its upstream) for this config, or a clear error."""
    from sft_pipeline import stages

    upstream: dict = {}
    for name in C.STAGES[: C.STAGES.index(stage) + 1]:
        try:
            upstream[name] = stages.load_result(cfg, name, stages.expected_key(name, cfg, upstream))
        except FileNotFoundError:
            raise PipelineError(
                f"no stored {name} output for this config under {cfg.run.output_dir}; "
                f"run `sft-pipeline run --until {stage}` first"
            ) from None
    return upstream[stage]


def cmd_report(args: argparse.Namespace) -> int:
    from sft_pipeline.report import render_report

    md, html = render_report(Path(args.run_dir))
    print(f"report: {md}\nhtml:   {html}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sft-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ingest", help="ingest files into the canonical conversation schema")
    p.add_argument("inputs", nargs="+", help="files, datasets folders, package:... or hub:ORG/NAME")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", default="auto",
                   choices=["auto", "alpaca", "sharegpt", "messages", "prompt_completion"])
    p.set_defaults(func=cmd_ingest)
    p = sub.add_parser("filter", help="re-filter stored scores at a new threshold (cheap)")
    p.add_argument("--threshold", type=float, default=None)
    add_config_args(p)
    p.set_defaults(func=cmd_filter)
    p = sub.add_parser("report", help="render the report again from an evaluate output folder")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)
    return parser


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; a user error is one line on stderr, never a traceback."""
    try:
        return func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
