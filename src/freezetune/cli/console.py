"""The process entry point. Ctrl-C at any moment, even while torch is still importing, ends with
one line and exit status 130, never a traceback; everything else is the CLI's (commands.py)."""

from __future__ import annotations

import os
import signal
import sys


class StartUpInterrupt:
    """SIGINT before a run's loop takes it over: raise at once, and remember it, because a library
    that catches everything during its import can swallow the KeyboardInterrupt (runs/stop.py looks)."""

    fired = False

    def __call__(self, signum, frame):
        self.fired = True
        # raised through a C++ extension's import, it aborts the process instead
        if _importing(frame):
            _leave()
        raise KeyboardInterrupt


def _importing(frame) -> bool:
    """Whether a module is being imported: nothing of a run has been written yet, so leaving is safe."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _leave() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late repeat must not cut the exit short
    print("\nfreezetune: interrupted; what was saved before is intact", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # an interrupt that crossed a C extension's import leaves CPython set to re-kill itself with
    # SIGINT at exit, whatever we return; staged writes were already rolled back while unwinding
    os._exit(130)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, StartUpInterrupt())
    try:
        from freezetune.cli.commands import main as run

        return run(argv)
    except KeyboardInterrupt:
        _leave()
        return 130  # not reached: _leave exits


def say(message: str) -> None:
    """A run's progress lines go to stderr, so that stdout holds only the command's result."""
    print(message, file=sys.stderr)
