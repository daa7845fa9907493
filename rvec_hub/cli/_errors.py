"""The one place errors become messages: one line on stderr and a non-zero exit."""

from __future__ import annotations

import os

import click

from ..errors import RvecError


def run_cli(group: click.Group, args: list[str] | None = None) -> int:
    """Run the CLI group; user mistakes print one line, RVEC_DEBUG=1 shows tracebacks."""
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
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("error: interrupted; no partial output was left behind", err=True)
        return 130
    except RvecError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        for problem in exc.problems[:50] if len(exc.problems) > 1 else []:
            click.echo(f"  - {problem}", err=True)
        return exc.exit_code
    except OSError as exc:
        if debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        click.echo(f"error: {exc.strerror or exc}{where}; nothing was left half-written", err=True)
        return 1


def echo_json(data: object) -> None:
    """Print JSON for scripts."""
    import json

    click.echo(json.dumps(data, indent=2, default=str))


def exit_with(code: int) -> None:
    """Leave with an exit code without a message."""
    raise click.exceptions.Exit(code)
