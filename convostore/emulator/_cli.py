"""``python -m convostore.emulator``: serve the emulator in the foreground."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from datetime import timedelta

__all__ = ["main", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``"90"``, ``"45s"``, ``"30m"``, ``"12h"``, ``"1d"`` -> timedelta.

    Raises:
        argparse.ArgumentTypeError: not a duration.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 90s, 30m, 12h, 1d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2) or "s"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m convostore.emulator",
        description="Serve a local Gemini Interactions API emulator.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    parser.add_argument(
        "--retention", type=parse_duration, default=timedelta(days=55), help="e.g. 1d, 12h"
    )
    parser.add_argument("--no-api-key", action="store_true", help="accept requests without a key")
    parser.add_argument(
        "--echo-user-input", action="store_true", help="unary responses echo the input steps"
    )
    parser.add_argument(
        "--allow-unknown-fields", action="store_true", help="accept unknown create fields"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve in the foreground until interrupted; returns the exit status."""
    import uvicorn

    from ._app import create_app

    args = _parser().parse_args(argv)
    app = create_app(
        retention=args.retention,
        require_api_key=not args.no_api_key,
        echo_user_input=args.echo_user_input,
        reject_unknown_fields=not args.allow_unknown_fields,
    )
    print(f"convostore emulator on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", lifespan="off"
    )
    uvicorn.Server(config).run()
    return 0
