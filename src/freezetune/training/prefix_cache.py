"""Where the prefix runner keeps block k-1's outputs: in memory, or on disk in shards that stream.

The memory cache is a dict. The disk cache is a folder of safetensors shards plus an index:

    PREFIX/KEY/freezetune-prefix-cache.json  the marker: the key, and what it was made of (model, plan,
                                             data, versions...); only a folder holding it is a cache
    PREFIX/KEY/index.json                    shard file -> its sha256 and the entries it holds, with a
                                             checksum of its own; written last, atomically
    PREFIX/KEY/shard-000000.safetensors      entries, as they arrived

New entries wait in RAM until they fill half the RAM budget, then go to a new shard: a shard
is written once and never rewritten, so a checkpoint costs the entries added since the last
one, not the whole cache. Reading opens one shard lazily (safetensors' ``safe_open``) and
copies out only the rows asked for, so the cache's RAM stays within the budget however large
it grows on disk. An entry stored twice keeps its first value (see PrefixCache.put).

Nothing damaged is ever replayed: a shard is checked against its sha256 before its first
entry is used, and a shard, index or marker that fails its check is set aside (renamed with
``.damaged``) with a warning, and its entries are computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch

from freezetune.errors import FreezetuneError
from freezetune.models.loading import file_sha256
from freezetune.runs.durable import fsync_path, publish, set_aside, write_json

MARKER = "freezetune-prefix-cache.json"
SHARD = re.compile(r"^shard-(\d{6})\.safetensors(\.damaged)?$")


class PrefixCache:
    """Block k-1 outputs by example key, in memory."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.loaded_from_disk = False
        # what opening the cache found (damage set aside), for the run's log
        self.notices: list[str] = []

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


def _checksum(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def read_marker(folder: Path) -> dict | None:
    """The marker's content when it is whole and names ``folder``; None when absent or damaged."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(marker, dict)
        and marker.get("key") == Path(folder).name
        and isinstance(marker.get("meta"), dict)
    )
    return marker if ok and marker.get("sha256") == _checksum(marker["meta"]) else None


class DiskPrefixCache(PrefixCache):
    """The same entries in a folder of shards (module doc); at most ``ram_budget`` bytes of them in RAM.
    ``warn`` hears of damage found while the run goes on (a shard that fails its checksum)."""

    def __init__(
        self,
        folder: Path,
        ram_budget: int,
        meta: dict | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        super().__init__()
        self.folder, self.ram_budget = Path(folder), ram_budget
        self.warn = warn or logging.getLogger("freezetune").warning
        self.index: dict[str, str] = {}  # key -> shard file name
        self.sums: dict[str, str] = {}  # shard file name -> its sha256
        self.checked: set[str] = set()  # shards whose bytes matched their sha256 in this process
        self._pending_bytes = 0
        self._open: tuple[str, object] | None = None  # the one shard held open for reading
        self.folder.mkdir(parents=True, exist_ok=True)
        marker = read_marker(self.folder)
        # a new cache, or one whose marker is damaged: nothing in it can be trusted
        if marker is None:
            if (self.folder / MARKER).exists():
                self._set_aside(self.folder / MARKER, "its marker is damaged")
            if (self.folder / "index.json").exists():
                self._set_aside(self.folder / "index.json", "it has no intact marker")
            write_json(
                self.folder / MARKER,
                {"key": self.folder.name, "meta": meta or {}, "sha256": _checksum(meta or {})},
            )
        self._read_index()
        self.loaded_from_disk = bool(self.index)

    def _read_index(self) -> None:
        path = self.folder / "index.json"
        if not path.is_file():
            return
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            shards = saved["shards"]
            if saved["sha256"] != _checksum(shards):
                raise ValueError("checksum")
            listed = {
                name: (str(info["sha256"]), [str(k) for k in info["keys"]])
                for name, info in shards.items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._set_aside(path, "it is damaged")
            return
        for name, (digest, keys) in listed.items():
            # a shard gone from under the index is skipped
            if SHARD.match(name) and (self.folder / name).is_file():
                self.sums[name] = digest
                self.index.update({key: name for key in keys})

    def _set_aside(self, path: Path, why: str) -> None:
        aside = set_aside(path)
        message = (
            f"warning: prefix cache {self.folder.name}: {path.name} set aside as {aside.name} ({why}); "
            "its entries are computed again"
        )
        self.notices.append(message)
        self.warn(message)

    def keys(self) -> list[str]:
        return list(self.index) + list(self.tensors)

    def has_all(self, keys: list[str]) -> bool:
        return all(
            key in self.tensors or (key in self.index and self._intact(self.index[key]))
            for key in keys
        )

    def _intact(self, shard: str) -> bool:
        """Whether ``shard`` holds what the index says; a damaged one is set aside and its keys dropped."""
        if shard in self.checked:
            return True
        path = self.folder / shard
        try:
            good = file_sha256(path) == self.sums.get(shard)
        except OSError:
            good = False
        if good:
            self.checked.add(shard)
            return True
        if path.exists():
            self._set_aside(path, "it does not match the checksum in index.json")
        self.index = {key: name for key, name in self.index.items() if name != shard}
        self.sums.pop(shard, None)
        self._write_index()
        return False

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
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        numbers = [int(m.group(1)) for p in self.folder.iterdir() if (m := SHARD.match(p.name))]
        name = f"shard-{max(numbers, default=-1) + 1:06d}.safetensors"  # never the name of a shard set aside
        staging = self.folder / f".{name}.partial"
        try:
            save_file(self.tensors, str(staging))
            fsync_path(staging)
            digest = file_sha256(staging)
            publish(staging, self.folder / name)
            self.sums[name] = digest
            self.checked.add(name)
            self.index.update({key: name for key in self.tensors})
            self._write_index()  # an entry is listed once its shard is whole
        except (OSError, SafetensorError) as exc:
            staging.unlink(missing_ok=True)
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise FreezetuneError(
                f"cannot write the prefix cache in {self.folder}: {reason}"
            ) from None
        self.tensors.clear()
        self._pending_bytes = 0

    def _write_index(self) -> None:
        shards: dict[str, dict] = {
            name: {"sha256": digest, "keys": []} for name, digest in self.sums.items()
        }
        for key, shard in self.index.items():
            shards[shard]["keys"].append(key)
        write_json(self.folder / "index.json", {"shards": shards, "sha256": _checksum(shards)})
