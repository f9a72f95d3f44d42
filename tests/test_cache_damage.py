"""A disk prefix cache never replays damaged outputs, never breaks a run, and `cache clear` and
eviction delete nothing freezetune did not write. Real damage: flipped bits, truncated files."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from freezetune.cli.commands import main
from freezetune.training.prefix_cache import MARKER, DiskPrefixCache

from helpers import losses
from test_prefix_cache import make_cache, run_args


def flip_bit(path: Path, at: float = 0.7) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10  # inside the tensor bytes, past the safetensors header
    path.write_bytes(bytes(data))


def cache_folder(cache_dir: Path) -> Path:
    (folder,) = [p for p in (cache_dir / "prefix").iterdir() if (p / MARKER).is_file()]
    return folder


@pytest.fixture
def filled(tiny_chat_model_dir, order_data, tmp_path):
    """A disk cache filled by one run (several shards), and the losses of the same run without a cache."""
    cache_dir = tmp_path / "cache"
    flags = ("--prefix-cache", "disk", "--cache-ram", "8KiB", "--cache-dir", str(cache_dir))
    assert main(run_args(tiny_chat_model_dir, order_data, tmp_path / "first", *flags)) == 0
    assert main(run_args(tiny_chat_model_dir, order_data, tmp_path / "off", "--prefix-cache", "off")) == 0
    return cache_dir, flags, losses(tmp_path / "off")


DAMAGE = {
    "a flipped bit in a shard": lambda f: flip_bit(f / "shard-000000.safetensors"),
    "a truncated shard": lambda f: (f / "shard-000001.safetensors").write_bytes(
        (f / "shard-000001.safetensors").read_bytes()[:100]),
    "a damaged index": lambda f: (f / "index.json").write_text((f / "index.json").read_text()[:-40]),
    "an index whose shard list was edited": lambda f: (f / "index.json").write_text(
        (f / "index.json").read_text().replace("shard-000001", "shard-000000", 1)),
    "a damaged marker": lambda f: (f / MARKER).write_text("{"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damage_is_set_aside_with_a_warning_and_the_run_trains_as_without_a_cache(filled, tiny_chat_model_dir,
                                                                                  order_data, tmp_path, capsys, damage):
    cache_dir, flags, expected = filled
    folder = cache_folder(cache_dir)
    DAMAGE[damage](folder)
    capsys.readouterr()
    assert main(run_args(tiny_chat_model_dir, order_data, tmp_path / "again", *flags)) == 0
    err = capsys.readouterr().err
    assert "set aside as" in err and "computed again" in err and "Traceback" not in err
    assert losses(tmp_path / "again") == pytest.approx(expected, rel=1e-5)
    assert list(folder.glob("*.damaged*"))  # kept for a look, never read again
    # the cache commands keep working on the folder
    assert main(["cache", "list", "--cache-dir", str(cache_dir)]) == 0
    assert main(["cache", "clear", "--cache-dir", str(cache_dir)]) == 0
    assert not folder.exists()


def test_a_damaged_shard_found_on_resume_in_a_later_epoch_is_recomputed(tiny_chat_model_dir, order_data, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    flags = ("--prefix-cache", "disk", "--cache-ram", "8KiB", "--cache-dir", str(cache_dir), "--save-every", "6")
    run = tmp_path / "run"
    assert main(run_args(tiny_chat_model_dir, order_data, run, *flags)) == 0
    reference = losses(run)
    # as if the run had been killed at step 6 (epoch 2): the resumed run replays from its cache
    for later in sorted((run / "checkpoints").iterdir())[1:]:
        import shutil

        shutil.rmtree(later)
    (run / "trainable.safetensors").unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    for shard in sorted(cache_folder(cache_dir).glob("shard-*.safetensors")):
        flip_bit(shard)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "does not match the checksum" in err
    assert losses(run) == pytest.approx(reference, rel=1e-5)


def test_cache_clear_and_eviction_leave_what_freezetune_did_not_write(tiny_chat_model_dir, order_data, tmp_path, capsys):
    prefix = tmp_path / "prefix"
    old = make_cache(tmp_path, "old", 10, size=256 * 1024)
    (old / "my-notes.txt").write_text("mine, inside a cache folder")
    prefix.joinpath("my-weights.safetensors").write_bytes(b"\x00" * 1000)
    (prefix / "myproject").mkdir()
    (prefix / "myproject" / "meta.json").write_text("{}")
    (prefix / "myproject" / "data.csv").write_text("a,b\n")
    (prefix / "fake").mkdir()
    (prefix / "fake" / "index.json").write_text("{}")  # looks like an older cache, but carries no marker
    assert main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    assert "1 caches" in capsys.readouterr().out
    # eviction: the run's own cache needs room, the old cache goes, nothing else
    assert main(run_args(tiny_chat_model_dir, order_data, tmp_path / "run", "--prefix-cache", "disk", "--cache-dir",
                         str(tmp_path), "--cache-limit", "200KiB")) == 0
    assert "removed 1 least recently used caches" in capsys.readouterr().err
    assert (old / "my-notes.txt").read_text() == "mine, inside a cache folder" and not (old / MARKER).exists()
    assert not list(old.glob("shard-*"))
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "removed 1 of 1 prefix caches" in out
    assert (prefix / "my-weights.safetensors").is_file() and (prefix / "myproject" / "data.csv").is_file()
    assert (prefix / "myproject" / "meta.json").is_file() and (prefix / "fake" / "index.json").is_file()


def test_an_unknown_cache_action_is_a_one_line_error(tmp_path, capsys):
    assert main(["cache", "purge", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "freezetune cache: error: unknown cache action 'purge'; use list or clear"


def test_a_full_disk_while_writing_the_cache_keeps_the_previous_checkpoint(tiny_chat_model_dir, order_data, tmp_path,
                                                                          capsys, monkeypatch):
    from safetensors.torch import save_file as real_save

    shards = []

    def save_until_the_disk_is_full(tensors, path, *args, **kwargs):
        if "shard-" in str(path):
            shards.append(path)
            if len(shards) > 1:  # the disk fills up after the first shard
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr("safetensors.torch.save_file", save_until_the_disk_is_full)
    run = tmp_path / "run"
    flags = ("--prefix-cache", "disk", "--cache-dir", str(tmp_path / "cache"), "--save-every", "3", "--max-steps", "12")
    assert main(run_args(tiny_chat_model_dir, order_data, run, *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in err[-1] and "is kept; resume from it" in err[-1] and "Traceback" not in "\n".join(err)
    assert not list((tmp_path / "cache").rglob("*.partial"))  # no half shard left behind
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    assert main(run_args(tiny_chat_model_dir, order_data, tmp_path / "off", "--prefix-cache", "off", "--max-steps", "12")) == 0
    assert losses(run) == pytest.approx(losses(tmp_path / "off"), rel=1e-5)


def test_the_cache_checks_a_shard_once_per_process(tmp_path):
    cache = DiskPrefixCache(tmp_path / "key", 1 << 20, meta={"model": "m"})
    cache.put("a@1", torch.ones(4))
    cache.save()
    reopened = DiskPrefixCache(tmp_path / "key", 1 << 20)
    assert reopened.has_all(["a@1"]) and reopened.checked == {"shard-000000.safetensors"}
    flip_bit(tmp_path / "key" / "shard-000000.safetensors", at=0.99)  # after the check: this process trusts it
    assert reopened.has_all(["a@1"])
    assert not DiskPrefixCache(tmp_path / "key", 1 << 20).has_all(["a@1"])  # a new process checks again
