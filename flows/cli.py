"""`sft-pipeline` console entry point: the library commands plus `run` (the Prefect flow)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, NoReturn

from flows import server as temporary
from sft_pipeline import cli

COMPLETED = "Completed"  # a flow state named otherwise carries the evaluation's verdict
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry calls (no network here)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "sft_pipeline",  # training progress and stage logs on the terminal and in the UI
    # Prefect's temporary server must answer within this many seconds (its default of 20 is too short
    # for a busy 2-core machine, where it failed with a traceback).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}
API_URL_ENV = "PREFECT_API_URL"
JOIN_POLL_S = 0.5
LOST_POLL_S = 5.0  # once the temporary server has died: how often the run's outputs on disk are looked for
EXIT_INCOMPLETE = 1
CACHE_LOG = logging.getLogger("sft_pipeline.cache")


RUN_STOPPED = "the run was stopped, completed stages stay cached"
FLOW_IN_THREAD = threading.Event()  # set while a flow runs in a thread of its own (the temporary server)


class ServerLost(Exception):
    """Prefect's temporary server died mid-run; ``results`` are the run's outputs read from disk (None: they
    are not all there)."""

    def __init__(self, status: int, results: dict | None):
        super().__init__(status)
        self.status, self.results = status, results


def _on_signal(signum: int, frame: Any) -> None:
    """A flow with the temporary server (nobody else reads it) stops at once: Prefect's crash handling waits
    for the running task. Otherwise unwind: a library command removes its temporary files, and a flow with a
    server of its own is recorded as crashed. Completed stages stay cached, a training resumes from its
    checkpoint, and the locks left behind are broken next time."""
    if FLOW_IN_THREAD.is_set():
        stop_run(signum)
    cli.raise_terminated(signum, frame)


def stop_run(signum: int) -> NoReturn:
    """Stop Prefect's temporary server (if this process started one) and exit at once, with one line.

    Exiting normally would first wait for the task threads to finish their work (a training run).
    """
    from prefect.server.api.server import SubprocessASGIServer

    cli.ignore_stop_signals()
    SubprocessASGIServer().stop()  # the temporary server's singleton, as Prefect's own fixtures stop it
    cli.exit_now(signum, RUN_STOPPED)


def in_thread(call: Callable[[], Any], server: Any = None, on_disk: Callable[[], dict | None] | None = None) -> Any:
    """``call()`` in a thread of its own while the main thread waits, ready for SIGTERM.

    A flow called in the main thread gets Prefect's SIGTERM handler, whose crash handling waits for the
    running task to finish: a first SIGTERM during training or evaluation stopped nothing for half an hour.
    Away from the main thread Prefect installs no handler, and ours stops the run at once.

    If ``server`` (the temporary one) dies meanwhile, the flow can finish its stages but never its run (it
    waited for ever on the API): :class:`ServerLost` is raised once ``on_disk()`` finds the run's outputs
    complete, or at once without ``on_disk``.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="sft-flow", daemon=True)
    FLOW_IN_THREAD.set()
    thread.start()
    status, next_look = None, 0.0
    try:
        while thread.is_alive():
            thread.join(JOIN_POLL_S)  # returns to Python often, so the signal handler runs
            if status is None and server is not None and (status := temporary.lost(server)) is not None:
                temporary.without_server()
            if status is not None and time.monotonic() >= next_look:
                next_look = time.monotonic() + LOST_POLL_S
                if on_disk is None or (results := on_disk()) is not None:
                    raise ServerLost(status, results if on_disk else None)
    finally:
        FLOW_IN_THREAD.clear()
    if "error" in box:
        if status is not None:
            raise ServerLost(status, on_disk() if on_disk else None) from box["error"]
        raise box["error"]
    return box["value"]


def call_flow(call: Callable[[], Any], on_disk: Callable[[], dict | None] | None = None) -> Any:
    """With Prefect's temporary server (started here, tied to this process), in a thread (SIGTERM stops at
    once, a dead server is noticed); with a server of our own, in the main thread, so that Prefect's handler
    records the run as crashed."""
    if os.environ.get(API_URL_ENV):
        return call()
    return in_thread(call, temporary.temporary_server(), on_disk)


def finish_without_server(lost: ServerLost, what: str) -> NoReturn:
    """Report a run whose temporary server died: its outputs if they are all on disk, else one line; exit now
    (Prefect's background threads would wait for the dead server at exit)."""
    cli.say(f"warning: Prefect's temporary server stopped during the {what} (exit status {lost.status}); "
            "its record in Prefect is incomplete", file=sys.stderr)
    code = 0
    if lost.results is None:
        cli.say(f"error: the {what} did not finish; completed stages stay cached: run it again", file=sys.stderr)
        code = EXIT_INCOMPLETE
    else:
        from flows.sft import verdict_note

        cli.print_outputs(lost.results)
        if (note := verdict_note(lost.results)) is not None:
            cli.say(f"{note[0].upper()}: {note[1]}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def quiet() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


class FromThread(logging.Filter):
    """Drops the records of one thread (the command looking at the outputs, not the flow writing them)."""

    def __init__(self, thread: int):
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


def stored_run(cfg: Any, until: str) -> Callable[[], dict | None]:
    """The run's outputs through ``until`` as the library finds them on disk (None: not all complete), looked
    for without the cache's "incomplete: recomputing" lines (the flow is still writing them)."""
    from sft_pipeline.errors import PipelineError

    def look() -> dict | None:
        quiet = FromThread(threading.get_ident())
        CACHE_LOG.addFilter(quiet)
        try:
            return cli.stored_results(cfg, until)
        except PipelineError:
            return None
        finally:
            CACHE_LOG.removeFilter(quiet)

    return look


def cmd_run(args: argparse.Namespace) -> int:
    from flows.logs import hide_user_error_tracebacks
    from flows.sft import sft
    from sft_pipeline.config import load_config

    cfg = load_config(args.config, args.overrides)  # fail fast, before any server starts
    hide_user_error_tracebacks()
    cli.escape_terminal_logs()  # Prefect's handlers exist now
    try:
        state = call_flow(lambda: sft(config=args.config, overrides=args.overrides, until=args.until,
                                      return_state=True), stored_run(cfg, args.until))
    except ServerLost as lost:
        finish_without_server(lost, "run")
    if state.is_failed():
        state.result()  # re-raises the stage's error (one line for user errors)
    cli.print_outputs(state.result())
    if state.name != COMPLETED:
        cli.say(f"{state.name.upper()}: {state.message}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from flows.logs import hide_user_error_tracebacks
    from flows.sweep import sft_sweep
    from sft_pipeline import sweep
    from sft_pipeline.config import load_config

    cfg = load_config(args.config, args.overrides)
    sweep.plan(cfg, args.thresholds, args.top_fractions)  # fail fast on a missing budget or setting
    hide_user_error_tracebacks()
    cli.escape_terminal_logs()  # Prefect's handlers exist now
    command = " ".join(["sft-pipeline", *sys.argv[1:]]) if sys.argv[1:] else "sft-pipeline sweep"
    try:
        summary = call_flow(lambda: sft_sweep(config=args.config, overrides=args.overrides,
                                              thresholds=args.thresholds, top_fractions=args.top_fractions,
                                              command=command, random_control=args.random_control))
    except ServerLost as lost:
        finish_without_server(lost, "sweep")
    cli.print_sweep(summary, args.config, args.apply)
    return 0


def main(argv: list[str] | None = None) -> int:
    quiet()
    from sft_pipeline import stages

    parser, sub = cli.build_parser()
    p = sub.add_parser("run", help="run the `sft` flow (all stages, cached)")
    cli.add_config_args(p)
    p.add_argument("--until", default=stages.NAMES[-1], choices=stages.NAMES)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("sweep", help="train and evaluate one branch per filter setting, and recommend one")
    cli.add_config_args(p)
    p.add_argument("--thresholds", type=cli.thresholds, default=[], help="from 0 to 1, e.g. 0.5,0.7,0.9")
    p.add_argument("--top-fractions", type=cli.top_fractions, default=[], help="above 0, up to 1, e.g. 0.5,0.8")
    p.add_argument("--apply", action="store_true", help="write CONFIG.recommended.yaml with the recommended setting")
    p.add_argument("--random-control", action="store_true",
                   help="also train each setting's random control (as many random rows) and say if it beats it")
    p.set_defaults(func=cmd_sweep)
    args = parser.parse_args(argv)
    cli.escape_terminal_logs()
    flow_command = args.func in (cmd_run, cmd_sweep)
    signal.signal(signal.SIGTERM, _on_signal)
    if not (flow_command and os.environ.get(API_URL_ENV)):  # with a server, Prefect handles Ctrl-C
        signal.signal(signal.SIGINT, _on_signal)
    return cli.run_command(args.func, args, on_stop=stop_run if flow_command else cli.exit_now)


if __name__ == "__main__":
    sys.exit(main())
