"""The folder of disk prefix caches: listing, clearing and keeping it under a size cap.

freezetune removes only what it can prove it wrote: a cache is a folder holding the marker
(prefix_cache.MARKER) that names it, and removing one deletes only the files a cache writes
(marker, index, shards, their set-aside and staging copies). Anything else there, a user's
file or folder, stays, and is reported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from freezetune.training.prefix_cache import MARKER, read_marker

# the names a disk cache writes; staging copies start with '.' and end in '.partial' (runs/durable.py)
OWN_FILE = re.compile(
    r"^(\.)?(freezetune-prefix-cache\.json|index\.json|shard-\d{6}\.safetensors)"
    r"(\.damaged(-\d+)?|\.\d+\.partial|\.partial)?$"
)


def _own_files(folder: Path) -> list[Path]:
    return [
        p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and OWN_FILE.match(p.name)
    ]


def cache_entries(root: Path) -> list[dict]:
    """freezetune's caches under ``root`` (folders with a marker), least recently used first. A cache whose
    marker is damaged is listed with ``damaged`` set: it is still freezetune's, by the marker's name."""
    root = Path(root)
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir() or path.is_symlink() or not (path / MARKER).is_file():
            continue
        marker = read_marker(path)
        files = _own_files(path)
        stamps = [p.stat().st_mtime for p in (path / "index.json", path / MARKER) if p.is_file()]
        found.append(
            {
                "path": path,
                "bytes": sum(p.stat().st_size for p in files),
                "used": max(stamps),
                "meta": marker["meta"] if marker else {},
                "damaged": marker is None,
            }
        )
    return sorted(found, key=lambda entry: entry["used"])


def remove_cache(path: Path) -> list[Path]:
    """Delete the cache's own files, then its folder if nothing else is left; returns what was kept."""
    path = Path(path)
    # the marker last: a half-removed
    for file in sorted(_own_files(path), key=lambda p: p.name == MARKER):
        file.unlink(missing_ok=True)  # cache is still recognised
    kept = sorted(path.iterdir())
    if not kept:
        path.rmdir()
    return kept


def evict(root: Path, allowed_bytes: int, keep: Path) -> list[Path]:
    """Remove least recently used caches under ``root`` until the others fit in ``allowed_bytes``; ``keep``
    (the cache about to be used) is never removed, and its use is recorded as its last use."""
    for stamp in (Path(keep) / "index.json", Path(keep) / MARKER):
        if stamp.is_file():
            os.utime(stamp)
    others = [e for e in cache_entries(root) if Path(e["path"]) != Path(keep)]
    total, removed = sum(e["bytes"] for e in others), []
    for entry in others:
        if total <= allowed_bytes:
            break
        remove_cache(entry["path"])
        total -= entry["bytes"]
        removed.append(entry["path"])
    return removed
