"""Library commands of `sft-pipeline` (no orchestrator): ingest, filter, report, config show, inspect, prepare-model.

`flows/cli.py` adds the Prefect-backed `run` command and is the console entry point.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, NoReturn

from sft_pipeline import constants
from sft_pipeline.errors import PipelineError
from sft_pipeline.escape import terminal

EXIT_USER_ERROR = 2
DEFAULT_CONFIG = "deployments/configs/default.yaml"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Terminated(BaseException):
    """A stop signal, raised in the main thread: the command unwinds (temporary files are removed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def say(*lines: object, file=None) -> None:
    """Print each line with its control characters escaped (file names and data can hold ESC sequences that
    would set the window title or colours)."""
    for line in lines:
        print(terminal(line), file=file or sys.stdout)


class TerminalSafe(logging.Filter):
    """Log records as they reach a terminal: control characters in file names or data escaped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (safe := terminal(message)) != message:
            record.msg, record.args = safe, None
        return True


def escape_terminal_logs() -> None:
    """Put :class:`TerminalSafe` on every handler configured now (Python's last resort, the root's, Prefect's)."""
    handlers = {logging.lastResort, *logging.getLogger().handlers}
    for logger in list(logging.Logger.manager.loggerDict.values()):
        handlers.update(getattr(logger, "handlers", ()))
    for handler in handlers - {None}:
        if not any(isinstance(f, TerminalSafe) for f in handler.filters):
            handler.addFilter(TerminalSafe())


def raise_terminated(signum: int, _frame: Any) -> None:
    raise Terminated(signum)


def exit_now(signum: int, note: str = "") -> NoReturn:
    """One line on stderr and exit at once with 128 + ``signum`` (threads still working are not waited for)."""
    ignore_stop_signals()
    say(f"error: terminated ({signal.Signals(signum).name})" + (f"; {note}" if note else ""), file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(128 + signum)


def ignore_stop_signals() -> None:
    """From here on, a second Ctrl-C cannot interrupt the stop itself."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.SUB=VALUE",
                   help="override a config value (repeatable)")


def cmd_ingest(args: argparse.Namespace) -> int:
    from sft_pipeline.config import IngestConfig, SourceConfig
    from sft_pipeline.ingest.sources import format_summary
    from sft_pipeline.ingest.output import ingest_into

    out = Path(args.out)
    cfg = IngestConfig(sources=[SourceConfig(path=p, format=args.format) for p in args.inputs])
    summary = format_summary(ingest_into(cfg, out))
    say(summary, f"wrote {out / constants.CONVERSATIONS_FILE} and {out / constants.REJECTS_FILE}")
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    """Re-filter from stored scores: ingest and score are not recomputed."""
    from sft_pipeline import cache, stages
    from sft_pipeline.config import load_config

    overrides = list(args.overrides)
    if args.threshold is not None:
        overrides.append(f"filter.threshold={args.threshold}")
    cfg = load_config(args.config, overrides)
    upstream = stored_results(cfg, constants.STAGE_SCORE)
    result = cache.run(stages.get(constants.STAGE_FILTER), cfg, upstream)
    say(f"filter: {result.counts_line()}", f"kept:    {result.path(constants.FILTERED_FILE)}",
        f"dropped: {result.path(constants.DROPPED_FILE)}")
    return 0


def stored_results(cfg, until: str) -> dict:
    """The stored outputs of the stages through ``until`` for this config, or one line saying what to run."""
    from sft_pipeline import cache, stages

    results: dict = {}
    for stage in stages.upto(until):
        found = cache.complete_output(stage, cfg, cache.key(stage, cfg, results))
        if found is None:
            raise PipelineError(f"no stored {stage.name} output for this config under {cfg.run.output_dir}; "
                                f"run `sft-pipeline run --until {until}` first")
        results[stage.name] = found
    return results


def cmd_config_show(args: argparse.Namespace) -> int:
    """The resolved tree: every dotted key with its value, default and description."""
    from sft_pipeline.config import load_config
    from sft_pipeline.config.tree import settings

    for setting in settings(load_config(args.config, args.overrides)):
        print("\n".join(setting.lines()))
    return 0


def cmd_prepare_model(args: argparse.Namespace) -> int:
    """Assemble, convert or download the config's model now, so that a run starts from the model cache."""
    import time

    from sft_pipeline.config import load_config
    from sft_pipeline.model_files import prepare

    cfg = load_config(args.config, args.overrides)
    started = time.monotonic()
    where = prepare(cfg.model.name_or_path, cfg.model.revision)
    say(f"model {cfg.model.name_or_path}: ready in {where} ({time.monotonic() - started:.0f} s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sft_pipeline.report import render_report

    md, html = render_report(Path(args.run_dir))
    say(f"report: {md}", f"html:   {html}")
    return 0


def floats(text: str) -> list[float]:
    """A comma-separated list of numbers.

    >>> floats("0.5,0.7, 0.9")
    [0.5, 0.7, 0.9]
    """
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _fractions(text: str, *, zero: bool) -> list[float]:
    values = floats(text)
    bad = [v for v in values if not (0 <= v <= 1 and (zero or v > 0))]  # nan fails every comparison
    if bad:
        wanted = "a number from 0 to 1" if zero else "a number above 0 and at most 1"
        raise argparse.ArgumentTypeError(f"{bad[0]:g} is not {wanted}")
    return values


def thresholds(text: str) -> list[float]:
    """Filter thresholds: numbers from 0 to 1 (nan and inf refused).

    >>> thresholds("0,0.5,1")
    [0.0, 0.5, 1.0]
    >>> thresholds("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: nan is not a number from 0 to 1
    """
    return _fractions(text, zero=True)


def top_fractions(text: str) -> list[float]:
    """Shares of rows kept: numbers above 0, up to 1.

    >>> top_fractions("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 0 is not a number above 0 and at most 1
    """
    return _fractions(text, zero=False)


def print_outputs(results: dict) -> None:
    """Where a run's filtered rows, adapter and report are."""
    wanted = (("filtered", constants.STAGE_FILTER, constants.FILTERED_FILE),
              ("adapter", constants.STAGE_TRAIN, constants.ADAPTER_DIR),
              ("report", constants.STAGE_EVALUATE, constants.REPORT_MD_FILE),
              ("report (html)", constants.STAGE_EVALUATE, constants.REPORT_HTML_FILE))
    for label, stage, name in wanted:
        if stage in results:
            say(f"{label + ':':15} {(results[stage].url or results[stage].out_dir).rstrip('/')}/{name}")


def print_sweep(summary: dict, config: str, apply: bool) -> None:
    """A sweep's report, its recommendation and the command that uses it (written to a config with ``apply``)."""
    from sft_pipeline import sweep

    say(f"sweep report:  {summary['out_dir']}/sweep.md (and sweep.html)", summary["sentence"])
    for setting, outcome in (summary.get("against_random") or {}).items():
        say(f"  {setting}: {outcome} (against its random control)")
    if summary["recommended"]:
        advice = " ".join(f"--set {o}" for o in summary["overrides"])
        say(f"to use it:     sft-pipeline run --config {config} {advice}")
        if apply:
            say(f"wrote          {sweep.apply(config, summary['overrides'])}")


def add_commands(sub) -> None:
    """The library's commands, on the sub-parsers of the console entry point (flows/cli.py adds more)."""
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
    p = sub.add_parser("config", help="look at the configuration")
    shows = p.add_subparsers(dest="config_command", required=True)
    p = shows.add_parser("show", help="every key of the resolved config: its value, default and description")
    add_config_args(p)
    p.set_defaults(func=cmd_config_show)
    p = sub.add_parser("prepare-model", help="assemble, convert or download the config's model into its cache now")
    add_config_args(p)
    p.set_defaults(func=cmd_prepare_model)
    p = sub.add_parser("report", help="render the report again from an evaluate output folder")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)
    from sft_pipeline.inspection.command import add_command as add_inspect

    add_inspect(sub, add_config_args)


def build_parser() -> tuple[argparse.ArgumentParser, Any]:
    """The parser and its sub-parsers (to which callers may add commands)."""
    parser = argparse.ArgumentParser(prog="sft-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    return parser, sub


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace,
                on_stop: Callable[[int], NoReturn] = exit_now) -> int:
    """Run a command; a user error is one line on stderr, never a traceback; a stop signal unwinds it first."""
    try:
        return func(args)
    except PipelineError as exc:
        say(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Terminated as stop:
        on_stop(stop.signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser()[0].parse_args(argv)
    escape_terminal_logs()
    in_main = threading.current_thread() is threading.main_thread()  # only there can Python install a handler
    previous = {signum: signal.signal(signum, raise_terminated) for signum in STOP_SIGNALS} if in_main else {}
    try:
        return run_command(args.func, args)
    finally:  # called in-process (tests, notebooks): Ctrl-C behaves as before afterwards
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
