"""Writes that survive a crash: staged, fsynced, then published by one rename.

A reader (or a resumed run) sees the old file or folder or the new one, never half of one,
and after a power loss a published name never points at data that was still in the page
cache: the data is fsynced before the rename and the folder after it.
Staging names start with '.' and carry '.partial', so a later start can find and drop them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

STAGING_MARK = ".partial"


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staging: Path, target: Path) -> None:
    """Rename a finished, fsynced staging file or folder into place, and make the rename durable."""
    os.replace(staging, target)
    fsync_path(target.parent)


@contextmanager
def staged_file(path: Path):
    """Yield a staging name beside ``path`` to write to; it is fsynced and becomes ``path`` only if the
    block finishes, and is removed if it does not."""
    # processes of one run never share it
    staging = path.with_name(f".{path.name}.{os.getpid()}{STAGING_MARK}")
    try:
        yield staging
        fsync_path(staging)
        publish(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically and durably."""
    with staged_file(path) as staging:
        staging.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))


@contextmanager
def staged_dir(target: Path, replace: bool = False):
    """Yield an empty folder beside ``target``; it becomes ``target`` only if the block finishes.

    An existing ``target`` is an error unless ``replace``: then it is swapped out by rename and
    removed only after the new folder is in place, so a failure at any point leaves one of the two.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_MARK}-", dir=target.parent))
    old = None
    try:
        yield staging
        _fsync_tree(staging)
        if target.exists():
            if not replace:
                raise FileExistsError(f"{target} appeared while it was being written")
            old = target.with_name(f".{target.name}.old{STAGING_MARK}-{os.getpid()}")
            os.replace(target, old)
        publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old, target)  # the new one never arrived: the old one goes back
        elif old is not None:
            shutil.rmtree(old, ignore_errors=True)


def set_aside(path: Path) -> Path:
    """Rename a damaged file to NAME.damaged (then .damaged-1, ...): kept for a look, never read again."""
    number = 0
    while (
        aside := path.with_name(f"{path.name}.damaged" + (f"-{number}" if number else ""))
    ).exists():
        number += 1
    os.replace(path, aside)
    return aside


def remove_leftovers(folder: Path) -> list[Path]:
    """Drop the staging files and folders that an interrupted writer left in ``folder``."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(".") and STAGING_MARK in p.name]
    for path in found:
        if f".old{STAGING_MARK}-" in path.name:  # swapped out by staged_dir(replace=True)
            original = folder / path.name[1:].split(f".old{STAGING_MARK}-")[0]
            # the writer died between the two renames: the old one is the good one
            if not original.exists():
                os.replace(path, original)
                continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return found
