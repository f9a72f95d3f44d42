"""One writer per folder: a run folder or a comparison folder is held by one process at a time.

The lock is an ``flock`` on FOLDER/freezetune.lock, so the kernel releases it when its process
dies, however it dies; the file also holds the holder's pid and start time, so a second
process can say who holds it, and the next holder can say that it took over from a process
that died without releasing it (the file still names it).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from freezetune.errors import FreezetuneError

LOCK_NAME = "freezetune.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _dying(pid: int) -> bool:
    """Killed but not yet reaped: its descriptors, and so its lock, are about to go."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return not _alive(pid)


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        if isinstance(started, (int, float))
        else "?"
    )
    return f"pid {holder.get('pid', '?')}, started {when}"


class FolderLock:
    """Held from construction until ``release`` (or the process's end). ``notice``: a stale holder it replaced."""

    def __init__(self, folder: Path, what: str):
        self.folder, self.notice = Path(folder), None
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + 10
        while not self._try_lock():
            holder = _holder(self.fd)
            pid = holder.get("pid")
            if isinstance(pid, int) and _dying(pid) and time.monotonic() < deadline:
                # a holder killed a moment ago: the kernel releases its lock once it is gone
                time.sleep(0.1)
                continue
            self.release(held=False)
            raise FreezetuneError(
                f"{self.folder} is in use by another freezetune process ({_describe(holder)}); "
                f"one {what} at a time: wait for it, or stop it"
            ) from None
        previous = _holder(self.fd)
        # it ended without releasing: killed
        if previous.get("pid") and previous.get("pid") != os.getpid():
            state = (
                "no longer running" if not _alive(int(previous["pid"])) else "no longer holding it"
            )
            self.notice = (
                f"notice: {self.folder}: took over the lock of {_describe(previous)}, {state}"
            )
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.write(self.fd, json.dumps({"pid": os.getpid(), "started": time.time()}).encode())

    def _try_lock(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self, held: bool = True) -> None:
        """Empty the file (a clean end leaves no holder to report) and let go; twice is harmless."""
        if self.fd is None:
            return
        if held:
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing the descriptor releases the flock
        self.fd = None

    def __del__(self):
        self.release()


def lock_folder(folder: Path, what: str) -> FolderLock:
    """Create ``folder`` if needed and hold it, or a one-line error naming the holder."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FreezetuneError(f"cannot create the folder {folder}: {exc.strerror}") from None
    return FolderLock(folder, what)
