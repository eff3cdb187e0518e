"""`sft-pipeline` console entry point: the library commands plus `run` (the Prefect flow)."""

from __future__ import annotations

import argparse
import os
import sys

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
    from flows.sft import NOT_PROMOTED, sft
    from sft_pipeline.config import load_config

    load_config(args.config, args.overrides)  # fail fast, before any server starts
    hide_user_error_tracebacks()
    state = sft(config=args.config, overrides=args.overrides, until=args.until, return_state=True)
    if state.is_failed():
        state.result()  # re-raises the stage's error (one line for user errors)
    results = state.result()
    print_outputs(results)
    if state.name == NOT_PROMOTED:
        print(f"NOT PROMOTED: {state.message}")
    return 0


def print_outputs(results: dict) -> None:
    from sft_pipeline import constants as C

    wanted = {
        "filter": [("filtered", C.FILTERED_FILE)],
        "train": [("adapter", C.ADAPTER_DIR)],
        "evaluate": [("report", C.REPORT_MD_FILE), ("report (html)", C.REPORT_HTML_FILE)],
    }
    for stage, items in wanted.items():
        for label, name in items:
            if stage in results:
                where = results[stage].get("url") or results[stage]["out_dir"]
                print(f"{label + ':':15} {where.rstrip('/')}/{name}")


def main(argv: list[str] | None = None) -> int:
    quiet()
    from sft_pipeline import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.add_parser("run", help="run the `sft` flow (all stages, cached)")
    cli.add_config_args(p)
    p.add_argument("--until", default="evaluate",
                   choices=["ingest", "score", "filter", "tokenize", "train", "evaluate"])
    p.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    return cli.run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
