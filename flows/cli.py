"""`sft-pipeline` console entry point: the library commands plus `run` (the Prefect flow)."""

from __future__ import annotations

import argparse
import os
import sys

COMPLETED = "Completed"  # a flow state named otherwise carries the evaluation's verdict
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry calls (no network here)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}


def quiet() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.logs import hide_user_error_tracebacks
    from flows.sft import sft
    from sft_pipeline.config import load_config

    load_config(args.config, args.overrides)  # fail fast, before any server starts
    hide_user_error_tracebacks()
    state = sft(config=args.config, overrides=args.overrides, until=args.until, return_state=True)
    if state.is_failed():
        state.result()  # re-raises the stage's error (one line for user errors)
    print_outputs(state.result())
    if state.name != COMPLETED:
        print(f"{state.name.upper()}: {state.message}")
    return 0


def print_outputs(results: dict) -> None:
    from sft_pipeline import constants

    wanted = {
        constants.STAGE_FILTER: [("filtered", constants.FILTERED_FILE)],
        constants.STAGE_TRAIN: [("adapter", constants.ADAPTER_DIR)],
        constants.STAGE_EVALUATE: [("report", constants.REPORT_MD_FILE), ("report (html)", constants.REPORT_HTML_FILE)],
    }
    for stage, items in wanted.items():
        for label, name in items:
            if stage in results:
                where = results[stage].url or results[stage].out_dir
                print(f"{label + ':':15} {where.rstrip('/')}/{name}")


def main(argv: list[str] | None = None) -> int:
    quiet()
    from sft_pipeline import cli, stages

    parser, sub = cli.build_parser()
    p = sub.add_parser("run", help="run the `sft` flow (all stages, cached)")
    cli.add_config_args(p)
    p.add_argument("--until", default=stages.NAMES[-1], choices=stages.NAMES)
    p.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    return cli.run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
