"""Token-exact accumulation: how a step's examples are split into micro-batches and processes does not
change the model. Records of very unequal length make a per-micro-batch mean visibly wrong."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from freezetune.cli.commands import main

from helpers import losses
from test_distributed import freezetune

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()


@pytest.fixture
def unequal_data(tmp_path):
    """8 records whose answers have 1 to 14 words: one optimizer step of batch 8 sees all of them."""
    rows = [{"prompt": f"list {n} words", "completion": " ".join(WORDS[:n])} for n in (1, 14, 2, 11, 3, 9, 1, 13)]
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return train, held


def run_args(model_dir, data, out, *extra):
    return ["train", "--model", str(model_dir), "--data", str(data[0]), "--eval-data", str(data[1]), "--out", str(out),
            "--seq-len", "64", "--lr", "1e-2", "--warmup", "1", "--max-steps", "3", "--eval-generate", "0",
            "--plan", "freeze bottom 50%", "--prefix-cache", "off", "--max-grad-norm", "0", *extra]


def assert_same_model(run, reference):
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5)
    trained, expected = load_file(str(run / "trainable.safetensors")), load_file(str(reference / "trainable.safetensors"))
    # Adam divides by sqrt(v): an element whose gradient is near zero turns the summation order's rounding
    # into ~1e-5 of weight; a per-micro-batch mean would move many elements by ~1e-3 (lr 1e-2)
    for name, tensor in expected.items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-4, atol=2e-5)


def test_batch_8_and_batch_4_times_2_micro_batches_train_the_same_model(tiny_chat_model_dir, unequal_data, tmp_path):
    assert main(run_args(tiny_chat_model_dir, unequal_data, tmp_path / "b8", "--batch-size", "8")) == 0
    assert main(run_args(tiny_chat_model_dir, unequal_data, tmp_path / "b4x2", "--batch-size", "4", "--grad-accum", "2")) == 0
    assert main(run_args(tiny_chat_model_dir, unequal_data, tmp_path / "b2x4", "--batch-size", "2", "--grad-accum", "4")) == 0
    assert_same_model(tmp_path / "b4x2", tmp_path / "b8")
    assert_same_model(tmp_path / "b2x4", tmp_path / "b8")
    # the first step's loss is the token mean over all 8 records, as eval loss is
    assert len(losses(tmp_path / "b8")) == 3


@pytest.mark.parametrize("flags", [(), ("--fsdp",), ("--zero-stage", "2")], ids=["ddp", "fsdp", "zero2"])
def test_two_processes_with_accumulation_train_the_same_model_on_every_backend(tiny_chat_model_dir, unequal_data,
                                                                               tmp_path, flags):
    assert main(run_args(tiny_chat_model_dir, unequal_data, tmp_path / "b8", "--batch-size", "8")) == 0
    # 2 processes x 2 examples x 2 micro-batches: the same 8 examples per optimizer step
    result = freezetune(*run_args(tiny_chat_model_dir, unequal_data, tmp_path / "two", "--batch-size", "4",
                                  "--grad-accum", "2", "--num-processes", "2", *flags))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_model(tmp_path / "two", tmp_path / "b8")
    # and the plain 2-process split of one batch of 8
    if not flags:
        result = freezetune(*run_args(tiny_chat_model_dir, unequal_data, tmp_path / "two8", "--batch-size", "8",
                                      "--num-processes", "2"))
        assert result.returncode == 0, result.stderr[-3000:]
        assert_same_model(tmp_path / "two8", tmp_path / "b8")
