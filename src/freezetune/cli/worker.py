"""`python -m freezetune.cli.worker SPEC.json`: one strategy's runs of a comparison, in a process of
their own (comparison/worker.py). Exit 0: all done; 3: stopped by a signal (checkpointed);
2: the spec itself was unreadable. Failed runs are recorded in their folders, not in the status."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from freezetune.cli.commands import _fail, _log, _StopFlag
from freezetune.errors import FreezetuneError

STOPPED = 3


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        from freezetune.comparison.worker import run_worker

        if len(argv) != 1 or not Path(argv[0]).is_file():
            raise FreezetuneError("usage: python -m freezetune.cli.worker SPEC.json")
        spec = json.loads(Path(argv[0]).read_text())
        with _StopFlag() as stop:
            outcome = run_worker(spec, log=_log, should_stop=lambda: stop.requested)
    except (FreezetuneError, json.JSONDecodeError) as exc:
        return _fail("compare worker", str(exc))
    except KeyboardInterrupt:  # a second signal: stop at once, what was saved is intact
        return 130
    return STOPPED if outcome == "stopped" else 0


if __name__ == "__main__":
    sys.exit(main())
