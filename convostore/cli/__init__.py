"""The ``convostore`` command: inspect, move, check and clean up stored conversations; chat;
run the demo; serve the emulator; migrate databases.

Exit status: 0 on success, 1 when the command ran and failed (a missing conversation, a store
that cannot be reached, problems found by ``verify``, a malformed export file), 2 for usage
errors (a bad option, a store URL convostore cannot use, an invalid value).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from .._exceptions import ConfigurationError, ConvostoreError, ValidationError
from . import (  # noqa: F401  (they register commands)
    _context,
    _data,
    _interactive,
    _recovery,
    _removal,
    _services,
    _web,
)
from ._common import DEFAULT_STORE, bundle_json, cli, open_existing, parse_duration

__all__ = ["DEFAULT_STORE", "bundle_json", "cli", "main", "open_existing", "parse_duration", "run"]


# --------------------------------------------------------------------------- entry point


def _fail(message: str, status: int) -> int:
    click.echo(f"convostore: {message}", err=True)
    return status


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (never raises for expected conditions)."""
    try:
        result = cli.main(args=argv, prog_name="convostore", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message())
        return 0
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "convostore"
        return _fail(f"{exc.format_message()} (see: {where} --help)", exc.exit_code)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        return _fail("aborted", 1)
    except (ConfigurationError, ValidationError) as exc:
        return _fail(str(exc), 2)
    except ConvostoreError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        # the reader went away (e.g. `convostore export --all | head`): stop quietly, and keep
        # Python from reporting the pipe again when it flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> None:
    """The ``convostore`` console script."""
    sys.exit(run(argv))


if __name__ == "__main__":  # pragma: no cover
    main()
