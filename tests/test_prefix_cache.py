"""The disk prefix cache: shards written as entries arrive, read lazily, RAM within a budget;
complete keys; `freezetune cache list|clear`; a size cap on the cache folder."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from freezetune.cli.commands import main
from freezetune.training.peak_memory import current_rss_bytes
from freezetune.training.prefix_cache import MARKER, DiskPrefixCache

from helpers import losses, train_argv

MiB = 1 << 20


def entry(i: int) -> torch.Tensor:
    """A 4 MiB entry whose values say which one it is."""
    return torch.full((1024, 1024), float(i))


def test_a_cache_many_times_its_budget_streams_within_it(tmp_path):
    budget = 16 * MiB
    cache = DiskPrefixCache(tmp_path / "key", budget, meta={"model": "m", "plan": "p"})
    start = current_rss_bytes()
    for i in range(40):  # 160 MiB of entries, ten times the budget
        cache.put(f"train:{i}@3", entry(i))
        assert current_rss_bytes() - start < budget + 48 * MiB, f"RSS grew past the budget at entry {i}"
    cache.save()
    shards = sorted((tmp_path / "key").glob("shard-*.safetensors"))
    assert len(shards) >= 10 and not cache.tensors  # nothing held back in RAM after a save
    first = shards[0].stat()
    cache.put("eval:0@3", entry(99))
    cache.save()
    again = shards[0].stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # shards are never rewritten

    reopened = DiskPrefixCache(tmp_path / "key", budget)
    assert reopened.loaded_from_disk and reopened.has_all([f"train:{i}@3" for i in range(40)] + ["eval:0@3"])
    start = current_rss_bytes()
    for i in range(40):
        assert torch.equal(reopened.get(f"train:{i}@3"), entry(i))
        assert current_rss_bytes() - start < budget + 48 * MiB, f"RSS grew past the budget reading entry {i}"
    assert torch.equal(reopened.get("eval:0@3"), entry(99))
    assert not reopened.has_all(["train:0@2"])  # another depth is another entry


def test_a_shard_the_index_does_not_list_is_never_read(tmp_path):
    cache = DiskPrefixCache(tmp_path / "key", 1 * MiB)
    cache.put("a@1", torch.ones(4))
    cache.save()
    (tmp_path / "key" / ".shard-000001.safetensors.partial").write_bytes(b"half a shard")  # a killed writer's leftover
    (tmp_path / "key" / "shard-000000.safetensors").unlink()  # and a shard gone from under the index
    assert not DiskPrefixCache(tmp_path / "key", 1 * MiB).has_all(["a@1"])


def run_args(model_dir, data, out, *extra):
    return train_argv(model_dir, data, out, *extra, max_steps=10, lr="1e-2", eval_generate=0, plan="freeze bottom 50%")


def test_a_training_run_with_a_tiny_ram_budget_streams_its_cache_and_trains_alike(tiny_chat_model_dir, order_data, tmp_path):
    cache_dir = tmp_path / "cache"
    assert main(run_args(tiny_chat_model_dir, order_data, tmp_path / "disk", "--prefix-cache", "disk", "--cache-ram", "8KiB",
                         "--cache-dir", str(cache_dir))) == 0
    assert main(run_args(tiny_chat_model_dir, order_data, tmp_path / "mem", "--prefix-cache", "memory")) == 0
    assert losses(tmp_path / "disk") == pytest.approx(losses(tmp_path / "mem"), rel=1e-6)
    (folder,) = (cache_dir / "prefix").iterdir()
    assert len(list(folder.glob("shard-*.safetensors"))) > 2  # written piece by piece, not as one file at the end


def test_auto_goes_to_disk_above_the_ram_budget(tiny_chat_model_dir, order_data, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    assert main(run_args(tiny_chat_model_dir, order_data, tmp_path / "a", "--cache-ram", "1KiB",
                         "--cache-dir", str(cache_dir))) == 0
    assert "prefix cache: disk" in capsys.readouterr().err
    assert main(run_args(tiny_chat_model_dir, order_data, tmp_path / "b", "--cache-dir", str(cache_dir))) == 0
    assert "prefix cache: memory" in capsys.readouterr().err


def test_the_key_covers_what_changes_the_prefix_output(tiny_chat_model_dir, order_data, tmp_path):
    from freezetune.config.run import TrainConfig
    from freezetune.training.cache_choice import _cache_key
    from freezetune.training.session import open_session

    config = TrainConfig(model=str(tiny_chat_model_dir), data=str(order_data[0]), eval_data=str(order_data[1]),
                         out=str(tmp_path / "run"), batch_size=4, seq_len=64, max_steps=2, plan="freeze bottom 50%")
    s = open_session(config)

    def key(**changes):
        return _cache_key(s.base_sha256, s.resolved, replace(config, **changes), s.train, s.eval, torch.float32,
                          s.loaded.model, s.loaded.path)[0]

    plain = key()
    assert key() == plain and key(precision="bf16") != plain and key(seq_len=32) != plain
    s.loaded.model.config._attn_implementation = "eager"
    assert key() != plain
    (s.loaded.path / "config.json").write_text((s.loaded.path / "config.json").read_text().replace("{", '{"rope_scaling": '
                                                                                                   'null, ', 1))
    assert key() != plain


def make_cache(root: Path, name: str, days_ago: float, size: int = 1024, **meta) -> Path:
    cache = DiskPrefixCache(root / "prefix" / name, 1 * MiB, meta={"model": "tiny", "plan": f"plan {name}", **meta})
    cache.put("a@1", torch.zeros(size // 4))
    cache.save()
    stamp = time.time() - days_ago * 86400
    for file in ("index.json", MARKER):
        os.utime(root / "prefix" / name / file, (stamp, stamp))
    return root / "prefix" / name


def test_cache_list_and_clear_touch_only_freezetune_caches(tmp_path, capsys):
    old, new = make_cache(tmp_path, "old", 10, schedule="gradual every=4"), make_cache(tmp_path, "new", 0)
    (tmp_path / "prefix" / "notes.txt").write_text("mine")
    (tmp_path / "prefix" / "photos").mkdir()
    assert main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].startswith("new") and listing[1].endswith("tiny / plan new") and listing[2].startswith("old")
    assert listing[2].endswith("tiny / plan old / schedule gradual every=4")  # 'train all' alone read as no prefix
    assert listing[-1].startswith("2 caches")
    assert main(["cache", "clear", "--older-than", "5", "--cache-dir", str(tmp_path)]) == 0
    assert "removed 1 of 2 prefix caches" in capsys.readouterr().out
    assert not old.exists() and new.exists()
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert not new.exists() and (tmp_path / "prefix" / "notes.txt").exists() and (tmp_path / "prefix" / "photos").is_dir()
    assert main(["cache", "list", "--older-than", "3"]) == 2
    assert "--older-than goes with clear" in capsys.readouterr().err


def test_the_cache_folder_keeps_under_its_cap(tiny_chat_model_dir, order_data, tmp_path, capsys):
    old = make_cache(tmp_path, "old", 10, size=256 * 1024)
    newer = make_cache(tmp_path, "newer", 1, size=256 * 1024)
    # the run's own cache is about 0.1 MiB: under a 490 KiB cap the two others (512 KiB) must lose the older one
    assert main(run_args(tiny_chat_model_dir, order_data, tmp_path / "run", "--prefix-cache", "disk", "--cache-dir",
                         str(tmp_path), "--cache-limit", "490KiB")) == 0
    assert "removed 1 least recently used caches to stay under --cache-limit" in capsys.readouterr().err
    assert not old.exists() and newer.exists()


def test_a_cache_larger_than_its_cap_is_not_written_and_evicts_nothing(tiny_chat_model_dir, order_data, tmp_path,
                                                                       capsys):
    """It removed every other cache, then wrote its own past the cap anyway."""
    old = make_cache(tmp_path, "old", 10, size=16 * 1024)
    argv = run_args(tiny_chat_model_dir, order_data, tmp_path / "disk", "--prefix-cache", "disk", "--cache-dir",
                    str(tmp_path), "--cache-limit", "50KiB")
    assert main(argv) == 2
    assert "--prefix-cache disk: its 135.5 KiB of prefix outputs pass --cache-limit 50KiB; raise --cache-limit, or " \
        "give --prefix-cache off" in capsys.readouterr().err
    assert not (tmp_path / "disk").exists() and old.exists()
    # auto chose disk by size (past --cache-ram): it runs without a cache, and says why
    argv = run_args(tiny_chat_model_dir, order_data, tmp_path / "auto", "--cache-ram", "1KiB", "--cache-dir",
                    str(tmp_path), "--cache-limit", "50KiB")
    assert main(argv) == 0
    assert "prefix cache: off (its 135.5 KiB of prefix outputs pass --cache-limit 50KiB; raise --cache-limit to " \
        "cache on disk)" in capsys.readouterr().err
    assert old.exists() and [p.name for p in (tmp_path / "prefix").iterdir()] == ["old"]


def test_a_model_is_hashed_once_until_a_weight_file_changes(tiny_chat_model_dir, tmp_path, monkeypatch):
    import shutil

    from freezetune.runs import manifest

    model = tmp_path / "model"
    shutil.copytree(tiny_chat_model_dir, model)
    cache = tmp_path / "cache"
    memo = cache / "model-hashes.json"
    reads = []
    real = manifest.hash_file_into
    monkeypatch.setattr(manifest, "hash_file_into", lambda digest, path: (reads.append(path.name), real(digest, path)))
    first = manifest.model_hash(model, cache)
    assert manifest.model_hash(model, cache) == first and reads == ["model.safetensors"]  # the second time: remembered
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight, same size
    weights.write_bytes(bytes(data))
    assert manifest.model_hash(model, cache) != first and len(reads) == 2
    memo.write_text("{not json")  # a damaged memo is only a lost shortcut
    assert manifest.model_hash(model, cache) != first and len(reads) == 3


def test_the_model_hash_memo_lives_in_the_cache_folder_the_user_chose(tiny_chat_model_dir, order_data, tmp_path,
                                                                     monkeypatch):
    from freezetune.runs import manifest

    monkeypatch.setattr(manifest, "DEFAULT_CACHE_DIR", tmp_path / "default-cache")  # ~/.cache/freezetune, here
    monkeypatch.setenv("FREEZETUNE_CACHE", str(tmp_path / "env-cache"))
    args = ["train", "--model", str(tiny_chat_model_dir), "--data", str(order_data[0]), "--eval-data", str(order_data[1]),
            "--batch-size", "4", "--seq-len", "64", "--max-steps", "1", "--eval-generate", "0"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "env-cache" / "model-hashes.json").is_file()
    assert main([*args, "--out", str(tmp_path / "b"), "--cache-dir", str(tmp_path / "flag-cache")]) == 0
    assert (tmp_path / "flag-cache" / "model-hashes.json").is_file()
    assert not (tmp_path / "default-cache").exists()
