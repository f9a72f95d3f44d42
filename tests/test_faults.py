"""The fault suite: bad input and failing machines, as a hostile user would try them.

Every case must end in exit status 2, one error line on stderr, last, that says what and
where, no traceback, and every file the user had still there, byte for byte.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import transformers as T

from freezetune.cli.commands import main

from conftest import build_tokenizer
from helpers import overridden


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def lines_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and "%|" not in line]  # progress bars aside


@dataclass
class Case:
    name: str
    argv: list[str]  # "{w}" stands for the user's folder
    expect: str  # a key phrase of the one line
    prepare: object = None  # world -> None: damage something first
    may_change: tuple[str, ...] = field(default=())  # what the command may set aside (never delete)
    patch: object = None  # monkeypatch -> None: a failing machine


def train(*extra):
    return overridden(["train", "--model", "{w}/model", "--data", "{w}/train.jsonl", "--eval-data", "{w}/eval.jsonl", "--out", "{w}/new",
                       "--batch-size", "4", "--seq-len", "64", "--max-steps", "2", "--eval-generate", "0"], extra)


def write(rel: str, data: bytes | str):
    def prepare(w: Path):
        path = w / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return prepare


def truncate(rel: str, keep: float = 0.5):
    def prepare(w: Path):
        data = (w / rel).read_bytes()
        (w / rel).write_bytes(data[: int(len(data) * keep)])
    return prepare


def edit_json(rel: str, **changes):
    def prepare(w: Path):
        value = json.loads((w / rel).read_text())
        value.update(changes)
        (w / rel).write_text(json.dumps(value))
    return prepare


def save_model(cls, config):
    def prepare(w: Path):
        torch.manual_seed(0)
        cls(config).save_pretrained(w / "odd")
        build_tokenizer().save_pretrained(w / "odd")
    return prepare


def every_checkpoint(damage):
    """Damage every checkpoint of a run that has not finished (a finished run is not resumed at all)."""
    def prepare(w: Path):
        edit_json("run/manifest.json", status="running")(w)
        (w / "run" / "trainable.safetensors").unlink()
        for checkpoint in (w / "run" / "checkpoints").iterdir():
            damage(checkpoint)
    return prepare


def pickled_optimizer(checkpoint: Path):
    """An old-style checkpoint whose optimizer.pt would run code if unpickled."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (checkpoint.parent.parent.parent / "PWNED", "ran"))
    (checkpoint / "optimizer.pt").write_bytes(pickle.dumps(Payload()))
    (checkpoint / "state.json").unlink()


def disk_full(monkeypatch):
    import freezetune.runs.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint, "save_file", full)


def read_only(monkeypatch):
    import os

    real = os.mkdir

    def refuse(path, *args, **kwargs):
        if "readonly" in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, *args, **kwargs)
    monkeypatch.setattr(os, "mkdir", refuse)


def flip_bit(rel: str, at: float = 0.9):
    """One bit of a file flipped, as a bad disk or a bad copy leaves it: the file still parses."""
    def prepare(w: Path):
        data = bytearray((w / rel).read_bytes())
        data[int(len(data) * at)] ^= 0x04
        (w / rel).write_bytes(bytes(data))
    return prepare


def bin_base(damage):
    """The base model as an old-style pytorch_model.bin (a pickle), then damaged."""
    def prepare(w: Path):
        shutil.copytree(w / "model", w / "binmodel")
        (w / "binmodel" / "model.safetensors").unlink()
        torch.save(T.AutoModelForCausalLM.from_pretrained(w / "model").state_dict(), w / "binmodel" / "pytorch_model.bin")
        damage(w / "binmodel" / "pytorch_model.bin")
    return prepare


def pickle_payload(path: Path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (path.parent.parent / "PWNED", "ran"))
    path.write_bytes(pickle.dumps(Payload()))


def export_disk_full(monkeypatch):
    """safetensors' own error, as its writer raises it when the disk fills under save_pretrained."""
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')
    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", full)


TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
NON_UTF8 = b'{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n{"prompt": "caf\xe9", "completion": "x"}\n'

CASES = [
    # export never destroys what it did not write
    Case("export into a folder with files", ["export", "{w}/run", "--out", "{w}/thesis"], "already holds files; choose a new folder",
         write("thesis/thesis.txt", "keep")),
    Case("export --force into a folder that is no export", ["export", "{w}/run", "--out", "{w}/thesis", "--force"],
         "not an earlier freezetune export", write("thesis/thesis.txt", "keep")),
    Case("export --force into the run folder", ["export", "{w}/run", "--out", "{w}/run", "--force"], "run folder itself"),
    Case("export --force into another run folder", ["export", "{w}/run", "--out", "{w}/run2", "--force"], "is a run folder",
         lambda w: shutil.copytree(w / "run", w / "run2")),
    Case("export --force onto the base model", ["export", "{w}/run", "--out", "{w}/model", "--force"], "not an earlier freezetune export"),
    Case("export --out is a file", ["export", "{w}/run", "--out", "{w}/train.jsonl"], "is a file"),
    Case("export --out under a file", ["export", "{w}/run", "--out", "{w}/train.jsonl/x"], "train.jsonl is a file"),
    Case("export of an unfinished run", ["export", "{w}/run", "--out", "{w}/x"], "has not finished",
         lambda w: (w / "run" / "trainable.safetensors").unlink()),
    Case("export of a folder that is no run", ["export", "{w}/model", "--out", "{w}/x"], "is not a freezetune run"),
    Case("export with a damaged manifest", ["export", "{w}/run", "--out", "{w}/x"], "manifest.json: damaged",
         write("run/manifest.json", "{not json")),
    Case("export with a manifest that is a list", ["export", "{w}/run", "--out", "{w}/x"], "manifest.json: damaged",
         write("run/manifest.json", "[1, 2]")),
    Case("export with truncated trained tensors", ["export", "{w}/run", "--out", "{w}/x", "--base", "{w}/model"],
         "trainable.safetensors: damaged", truncate("run/trainable.safetensors")),
    Case("export of a run whose trained tensors had a bit flipped", ["export", "{w}/run", "--out", "{w}/x"],
         "do not match the checksum written with them", flip_bit("run/trainable.safetensors")),
    Case("generate from a run whose trained tensors had a bit flipped", ["generate", "{w}/run", "--prompt", "hi"],
         "do not match the checksum written with them", flip_bit("run/trainable.safetensors")),
    Case("export onto a full disk", ["export", "{w}/run", "--out", "{w}/x"], "No space left on device", patch=export_disk_full),
    Case("export after config.json was edited", ["export", "{w}/run", "--out", "{w}/x", "--base", "{w}/model"],
         "config.json has changed", edit_json("model/config.json", rms_norm_eps=0.1)),
    Case("export after the tokenizer was swapped", ["export", "{w}/run", "--out", "{w}/x", "--base", "{w}/model"],
         "tokenizer_config.json has changed", edit_json("model/tokenizer_config.json", model_max_length=7)),
    # models train cannot take, and broken weight files
    Case("train an encoder-decoder", train("--model", "{w}/odd"), "T5ForConditionalGeneration is an encoder-decoder",
         save_model(T.T5ForConditionalGeneration, T.T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=320))),
    Case("train a masked LM", train("--model", "{w}/odd"), "BertForMaskedLM is a masked LM",
         save_model(T.BertForMaskedLM, T.BertConfig(**TINY, vocab_size=320))),
    Case("train a vision model", train("--model", "{w}/odd"), "is not a causal language model",
         save_model(T.ViTModel, T.ViTConfig(**TINY, image_size=8, patch_size=4))),
    Case("export a masked LM named as base", ["export", "{w}/run", "--out", "{w}/x", "--base", "{w}/odd"], "refusing to mix",
         save_model(T.BertForMaskedLM, T.BertConfig(**TINY, vocab_size=320))),
    Case("compare on a masked LM", ["compare", "--model", "{w}/odd", "--out", "{w}/cmp"], "BertForMaskedLM is a masked LM",
         save_model(T.BertForMaskedLM, T.BertConfig(**TINY, vocab_size=320))),
    Case("truncated base weights", train(), "model.safetensors: damaged weight file", truncate("model/model.safetensors")),
    Case("zero-byte base weights", train(), "model.safetensors: damaged weight file", write("model/model.safetensors", b"")),
    Case("garbage base weights", train(), "model.safetensors: damaged weight file", write("model/model.safetensors", b"\x00" * 64)),
    Case("truncated pytorch_model.bin base", train("--model", "{w}/binmodel"), "pytorch_model.bin: damaged weight file",
         bin_base(lambda p: p.write_bytes(p.read_bytes()[:1000]))),
    Case("pytorch_model.bin base that would run code", train("--model", "{w}/binmodel"), "pytorch_model.bin",
         bin_base(pickle_payload)),
    Case("unreadable config.json", train(), "config.json", write("model/config.json", "{")),
    # data
    Case("non-UTF-8 JSONL", train("--data", "{w}/latin1.jsonl"), "line 3: not UTF-8", write("latin1.jsonl", NON_UTF8)),
    Case("non-UTF-8 text", train("--objective", "cpt", "--data", "{w}/latin1.txt"), "line 2: not UTF-8",
         write("latin1.txt", b"plain words\ncaf\xe9 au lait\n")),
    Case("a line that is not JSON", train("--data", "{w}/bad.jsonl"), "bad.jsonl line 2: not valid JSON",
         write("bad.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": \n')),
    Case("a record without its answer", train("--data", "{w}/bad.jsonl"),
         "bad.jsonl lines 1, 2, 3 and 5 more: field 'completion' is missing",
         write("bad.jsonl", '{"prompt": "a"}\n' * 8)),
    Case("missing data file", train("--data", "{w}/none.jsonl"), "does not exist"),
    Case("unsupported data type", train("--data", "{w}/data.xml"), "unsupported type '.xml'", write("data.xml", "<a/>")),
    Case("empty data", train("--data", "{w}/empty.jsonl"), "no usable SFT example", write("empty.jsonl", "\n")),
    # flags and config keys
    Case("--out is a file", train("--out", "{w}/train.jsonl"), "--out", None),
    Case("--out is read-only", train("--out", "{w}/readonly/run"), "Read-only file system", patch=read_only),
    Case("a layer out of range", train("--plan", "train layers 9"), "layer 9 is out of range"),
    Case("an unknown config key", ["train", "--config", "{w}/run.yaml"], "unknown option 'learning_rate'",
         write("run.yaml", "learning_rate: 1\n")),
    Case("resume a folder that is no run", ["train", "--resume", "{w}/model"], "no manifest.json"),
    Case("resume with every checkpoint damaged", ["train", "--resume", "{w}/run"], "no intact checkpoint",
         every_checkpoint(lambda c: truncate("trainable.safetensors")(c)), ("run/checkpoints",)),
    Case("resume from pickled optimizer files", ["train", "--resume", "{w}/run"], "no intact checkpoint",
         every_checkpoint(pickled_optimizer), ("run/checkpoints",)),
    Case("a learning rate that blows the loss up", train("--lr", "1e12", "--max-steps", "4", "--max-grad-norm", "0"),
         "the loss is"),
    Case("disk full while saving a checkpoint", train("--save-every", "1"), "No space left on device", patch=disk_full,
         may_change=("new",)),
    # compare and report
    Case("compare --strategy qlora", ["compare", "--strategy", "qlora", "--out", "{w}/cmp"], "unknown strategy 'qlora'"),
    Case("compare --strategy 'lora r=x'", ["compare", "--strategy", "lora r=x", "--out", "{w}/cmp"], "r must be a whole number"),
    Case("compare --strategy 'lora r=²'", ["compare", "--strategy", "lora r=²", "--out", "{w}/cmp"], "r must be a whole number"),
    Case("report on a run without metrics.jsonl", ["report", "{w}/run", "--out", "{w}/rep"], "metrics.jsonl",
         lambda w: (w / "run" / "metrics.jsonl").unlink()),
    Case("generate --plain with an empty prompt", ["generate", "{w}/run", "--plain", "--prompt", ""], "--prompt is empty"),
    Case("report on a damaged manifest", ["report", "{w}/run", "--out", "{w}/rep"], "manifest.json: damaged",
         write("run/manifest.json", "\x00\x01")),
    Case("report on a half-written metrics line", ["report", "{w}/run", "--out", "{w}/rep"], "half-written",
         lambda w: (w / "run" / "metrics.jsonl").write_text((w / "run" / "metrics.jsonl").read_text() + '{"step": 7, "lo')),
    # preference data (train --objective dpo): the same rules as for SFT records
    Case("dpo record without rejected", train("--objective", "dpo", "--data", "{w}/prefs.jsonl"),
         "prefs.jsonl line 2: a preference record needs 'prompt', 'chosen' and 'rejected'; 'rejected' is missing",
         write("prefs.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')),
    Case("dpo record with a number for an answer", train("--objective", "dpo", "--data", "{w}/prefs.jsonl"),
         "prefs.jsonl line 1: field 'chosen' must be a string or a non-empty list of messages, got int",
         write("prefs.jsonl", '{"prompt": "a", "chosen": 3, "rejected": "c"}\n')),
    Case("dpo conversation whose prompt ends with the assistant", train("--objective", "dpo", "--data", "{w}/prefs.jsonl"),
         "prefs.jsonl line 1: field 'prompt' must end with a user message",
         write("prefs.jsonl", json.dumps({"prompt": [{"role": "assistant", "content": "hi"}], "chosen": "b",
                                          "rejected": "c"}) + "\n")),
    Case("dpo on SFT records", train("--objective", "dpo"), "a preference record needs 'prompt', 'chosen' and 'rejected'"),
    Case("dpo pairs whose answers --seq-len cuts off", train("--objective", "dpo", "--data", "{w}/prefs.jsonl", "--seq-len", "4"),
         "no usable preference pair", write("prefs.jsonl", '{"prompt": "' + "word " * 40 + '", "chosen": "b", "rejected": "c"}\n')),
    Case("dpo resumed with another --beta", ["train", "--resume", "{w}/run", "--beta", "0.5"], "--beta 0.5 differs",
         edit_json("run/manifest.json", status="running")),
    Case("report on a damaged metrics line", ["report", "{w}/run", "--out", "{w}/rep"], "metrics.jsonl line 1: damaged",
         lambda w: (w / "run" / "metrics.jsonl").write_text("garbage\n" + (w / "run" / "metrics.jsonl").read_text())),
    Case("report on garbage eval.json", ["report", "{w}/run", "--out", "{w}/rep"], "eval.json: damaged",
         write("run/eval.json", "[]")),
]


def check_fault(case: Case, world: Path, capsys, monkeypatch) -> None:
    """The case's command ends in exit 2, one error line, last, and every file the user had intact."""
    if case.prepare:
        case.prepare(world)
    if case.patch:
        case.patch(monkeypatch)
    before = snapshot(world)
    code = main([a.replace("{w}", str(world)) for a in case.argv])
    err = capsys.readouterr().err
    lines = lines_of(err)
    errors = [line for line in lines if ": error: " in line]
    assert code == 2, err
    # the error is one line, and the last: what the command logged before it (notes, warnings) comes first
    assert errors == lines[-1:] and case.expect in errors[0], err
    assert errors[0].startswith("freezetune ") and "Traceback" not in err
    after = snapshot(world)
    kept = {k: v for k, v in before.items() if not (case.may_change and k.startswith(case.may_change))}
    assert {k: after.get(k) for k in kept} == kept, "a file the user had was changed or removed"
    assert not (world / "PWNED").exists()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case: Case, world: Path, capsys, monkeypatch):
    check_fault(case, world, capsys, monkeypatch)


def test_the_table_is_big_enough():
    assert len(CASES) >= 40
