"""A stop that loses nothing: SIGINT/SIGTERM ask the running loop to checkpoint at the next step
boundary and return; a second signal stops at once (KeyboardInterrupt)."""

from __future__ import annotations

import signal
import sys


class StopFlag:
    """While entered, the first SIGINT/SIGTERM sets ``requested`` (the loop polls it); the second raises."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            f"\nfreezetune: {signal.Signals(signum).name} received; stopping at the next step boundary (training "
            "saves a checkpoint first, an evaluation under way finishes); a second signal stops at once",
            file=sys.stderr,
        )

    def __enter__(self) -> StopFlag:
        # a start-up Ctrl-C an import swallowed
        if getattr(signal.getsignal(signal.SIGINT), "fired", False):
            raise KeyboardInterrupt
        self._previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
