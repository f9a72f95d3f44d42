"""The process entry point. Ctrl-C at any moment, even while torch is still importing, ends with
one line and exit status 130, never a traceback; everything else is the CLI's (cli.py)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        from freezetune.cli import main as run

        return run(argv)
    except KeyboardInterrupt:
        print("\nfreezetune: interrupted; what was saved before is intact", file=sys.stderr)
        return 130
