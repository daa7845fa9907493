"""The one place errors become messages: one line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import signal
import threading

import click

from ..errors import RvecError
from ..io.atomic import forget_signals, record_signal
from ..redact import redact


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so every output in progress is cleaned up the same way."""


def _terminate(signum: int, frame: object) -> None:
    record_signal(signum)
    raise Terminated


def _interrupt(signum: int, frame: object) -> None:
    record_signal(signum)
    raise KeyboardInterrupt


def run_cli(group: click.Group, args: list[str] | None = None) -> int:
    """Run the CLI group; user mistakes print one line, RVEC_DEBUG=1 shows tracebacks.

    SIGINT exits 130 and SIGTERM 143, after outputs in progress are removed. Each signal is also recorded
    (`io.atomic.record_signal`): where Python drops the exception it raised, the output is still not put in
    place, and the command exits as interrupted when it comes to rename it.
    """
    on_main = threading.current_thread() is threading.main_thread()
    previous: dict[int, object] = {}
    if on_main:
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _terminate)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the shell had it ignored
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _interrupt)
    forget_signals()
    try:
        return _run(group, args)
    finally:
        forget_signals()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(group: click.Group, args: list[str] | None) -> int:
    debug = os.environ.get("RVEC_DEBUG") == "1"
    try:
        # Without standalone mode click hands back the code of an `Exit` instead of raising it.
        code = group.main(args=args, prog_name="rvec", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # click turns an interrupt inside a command into Abort, keeping the interrupt as its cause.
        cause = exc.__cause__ if isinstance(exc, click.exceptions.Abort) else exc
        if isinstance(cause, Terminated):
            click.echo("error: terminated; no partial output was left behind", err=True)
            return 143
        click.echo("error: interrupted; no partial output was left behind" if cause is not None else "error: aborted", err=True)
        return 130
    except RvecError as exc:
        if debug:
            raise
        # Messages may repeat what a server said, and a server may echo the token it was sent.
        click.echo(redact(f"error: {exc}"), err=True)
        for problem in exc.problems[:50] if len(exc.problems) > 1 else []:
            click.echo(redact(f"  - {problem}"), err=True)
        return exc.exit_code
    except OSError as exc:
        if debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        click.echo(redact(f"error: {exc.strerror or exc}{where}; nothing was left half-written"), err=True)
        return 1


def echo_json(data: object) -> None:
    """Print JSON for scripts."""
    import json

    click.echo(redact(json.dumps(data, indent=2, default=str)))  # server-supplied fields may echo a token


def exit_with(code: int) -> None:
    """Leave with an exit code without a message."""
    raise click.exceptions.Exit(code)
