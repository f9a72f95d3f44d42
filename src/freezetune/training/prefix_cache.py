"""Where the prefix runner keeps block k-1's outputs: in memory, or on disk in shards that stream.

The memory cache is a dict. The disk cache is a folder of safetensors shards plus an index:

    PREFIX/KEY/meta.json                 what the key was made of (model, plan, data, versions...)
    PREFIX/KEY/index.json                shard file -> the entries it holds; written last, atomically
    PREFIX/KEY/shard-000000.safetensors  entries, as they arrived

New entries wait in RAM until they fill half the RAM budget, then go to a new shard: a shard
is written once and never rewritten, so a checkpoint costs the entries added since the last
one, not the whole cache. Reading opens one shard lazily (safetensors' ``safe_open``) and
copies out only the rows asked for, so the cache's RAM stays within the budget however large
it grows on disk. An entry stored twice keeps its first value (see PrefixCache.put).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from freezetune.runs.durable import write_json


class PrefixCache:
    """Block k-1 outputs by example key, in memory."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.loaded_from_disk = False

    def keys(self) -> list[str]:
        return list(self.tensors)

    def has_all(self, keys: list[str]) -> bool:
        return all(key in self.tensors for key in keys)

    def put(self, key: str, value: torch.Tensor) -> None:
        """The first output stored for a key stays: a row's output computed again inside a batch of another
        padded length differs in the last bits, and a resumed run must replay what the first run did."""
        if key not in self.tensors:
            self.tensors[key] = value.detach().to("cpu", copy=True).contiguous()

    def get(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def clear(self) -> None:
        self.tensors.clear()

    def save(self) -> None:
        """Nothing to do: a memory cache lives as long as its run."""


class DiskPrefixCache(PrefixCache):
    """The same entries in a folder of shards (module doc); at most ``ram_budget`` bytes of them in RAM."""

    def __init__(self, folder: Path, ram_budget: int, meta: dict | None = None):
        super().__init__()
        self.folder, self.ram_budget = Path(folder), ram_budget
        self.index: dict[str, str] = {}  # key -> shard file name
        self._pending_bytes = 0
        self._open: tuple[str, object] | None = None  # the one shard held open for reading
        path = self.folder / "index.json"
        if path.is_file():
            shards = json.loads(path.read_text())["shards"]
            self.index = {key: shard for shard, keys in shards.items() for key in keys if (self.folder / shard).is_file()}
        self.loaded_from_disk = bool(self.index)
        if meta is not None and not (self.folder / "meta.json").is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(self.folder / "meta.json", meta)

    def keys(self) -> list[str]:
        return list(self.index) + list(self.tensors)

    def has_all(self, keys: list[str]) -> bool:
        return all(key in self.index or key in self.tensors for key in keys)

    def put(self, key: str, value: torch.Tensor) -> None:
        if key in self.index or key in self.tensors:
            return
        super().put(key, value)
        self._pending_bytes += value.numel() * value.element_size()
        if self._pending_bytes >= self.ram_budget // 2:
            self._flush()

    def get(self, key: str) -> torch.Tensor:
        if key in self.tensors:
            return self.tensors[key]
        shard = self.index[key]
        if self._open is None or self._open[0] != shard:
            from safetensors import safe_open

            self._open = (shard, safe_open(str(self.folder / shard), framework="pt"))
        return self._open[1].get_tensor(key)  # a copy of this entry only; the shard stays on disk

    def clear(self) -> None:
        super().clear()
        self._pending_bytes = 0

    def save(self) -> None:
        """The entries still in RAM become a shard, and the index names it (a checkpoint calls this)."""
        self._flush()

    def _flush(self) -> None:
        if not self.tensors:
            return
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        number = max((int(name[6:12]) for name in set(self.index.values())), default=-1) + 1
        name = f"shard-{number:06d}.safetensors"
        staging = self.folder / f".{name}.partial"
        save_file(self.tensors, str(staging))
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staging, self.folder / name)
        self.index.update({key: name for key in self.tensors})
        shards: dict[str, list[str]] = {}
        for key, shard in self.index.items():
            shards.setdefault(shard, []).append(key)
        write_json(self.folder / "index.json", {"shards": shards})  # atomic: an entry is listed once its shard is whole
        self.tensors.clear()
        self._pending_bytes = 0


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def cache_entries(root: Path) -> list[dict]:
    """The prefix caches under ``root`` (freezetune's own only: a folder with an index or meta, or a
    single-file cache of an older freezetune), least recently used first."""
    root = Path(root)
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.is_dir() and ((path / "index.json").is_file() or (path / "meta.json").is_file()):
            stamp = max(p.stat().st_mtime for p in (path / "index.json", path / "meta.json") if p.is_file())
            meta = json.loads((path / "meta.json").read_text()) if (path / "meta.json").is_file() else {}
            found.append({"path": path, "bytes": folder_bytes(path), "used": stamp, "meta": meta})
        elif path.is_file() and path.suffix == ".safetensors":
            found.append({"path": path, "bytes": path.stat().st_size, "used": path.stat().st_mtime, "meta": {}})
    return sorted(found, key=lambda entry: entry["used"])


def remove_cache(path: Path) -> None:
    import shutil

    if Path(path).is_dir():
        shutil.rmtree(path)
    else:
        Path(path).unlink(missing_ok=True)


def evict(root: Path, allowed_bytes: int, keep: Path) -> list[Path]:
    """Remove least recently used caches under ``root`` until the others fit in ``allowed_bytes``; ``keep``
    (the cache about to be used) is never removed, and its use is recorded as its last use."""
    if (Path(keep) / "index.json").is_file():
        os.utime(Path(keep) / "index.json")
    others = [e for e in cache_entries(root) if Path(e["path"]) != Path(keep)]
    total, removed = sum(e["bytes"] for e in others), []
    for entry in others:
        if total <= allowed_bytes:
            break
        remove_cache(entry["path"])
        total -= entry["bytes"]
        removed.append(entry["path"])
    return removed
