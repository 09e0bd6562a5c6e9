"""``python -m convostore.emulator --host 127.0.0.1 --port 8765 --retention 1d``."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
