"""Weights in the training precision: frozen tensors in bf16, trained ones in fp32; one memory model
for `plan --dtype` and `train --precision`; export in the base model's dtype."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from freezetune import FreezePlan, find_anatomy, resolve
from freezetune.cli.commands import main
from freezetune.config.run import TrainConfig
from freezetune.plans.preview import describe
from freezetune.training.loop import TrainingLoop
from freezetune.training.precision import store_in_training_precision
from freezetune.training.session import open_session


@pytest.fixture
def bf16_model_dir(tiny_chat_model_dir, tmp_path):
    """The tiny chat model saved in bf16, as most 7B checkpoints are."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16-model")
    AutoTokenizer.from_pretrained(tiny_chat_model_dir).save_pretrained(tmp_path / "bf16-model")
    return tmp_path / "bf16-model"


def config(model_dir, order_data, out, **changes):
    values = dict(model=str(model_dir), data=str(order_data[0]), eval_data=str(order_data[1]), out=str(out), batch_size=4,
                  seq_len=64, lr=1e-2, warmup=1, max_steps=4, eval_generate=2, plan="freeze bottom 50%", prefix_cache="off")
    return TrainConfig(**{**values, **changes})


def test_bf16_stores_frozen_weights_in_16_bits_and_trains_fp32_ones(bf16_model_dir, order_data, tmp_path):
    session = open_session(config(bf16_model_dir, order_data, tmp_path / "bf16", precision="bf16"))
    params = dict(session.loaded.model.named_parameters())
    frozen = [p for p in params.values() if not p.requires_grad]
    trained = [p for p in params.values() if p.requires_grad]
    assert frozen and {p.dtype for p in frozen} == {torch.bfloat16}  # loaded as stored: never an fp32 copy of them
    assert trained and {p.dtype for p in trained} == {torch.float32}
    with safe_open(str(bf16_model_dir / "model.safetensors"), framework="pt") as base:
        name = "model.layers.3.mlp.up_proj.weight"
        assert torch.equal(params[name].detach(), base.get_tensor(name).float())  # the exact checkpoint values
    result = TrainingLoop(session, log=lambda message: None, progress=False).run()
    manifest = json.loads((tmp_path / "bf16" / "manifest.json").read_text())
    assert manifest["dtypes"] == {"frozen": "bfloat16", "trainable": "float32"}
    assert result["after"]["eval_loss"] < result["before"]["eval_loss"]
    assert {p.dtype for p in frozen} == {torch.bfloat16}  # still, after training and evaluation

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    fp32 = TrainingLoop(open_session(config(bf16_model_dir, order_data, tmp_path / "fp32", precision="fp32")),
                   log=lambda message: None, progress=False).run()
    assert json.loads((tmp_path / "fp32" / "manifest.json").read_text())["dtypes"] == {"frozen": "float32",
                                                                                     "trainable": "float32"}
    assert result["after"]["eval_loss"] == pytest.approx(fp32["after"]["eval_loss"], rel=0.05)


def test_plan_and_train_share_one_memory_model(tiny_chat_model_dir):
    from transformers import AutoModelForCausalLM

    for dtype, precision in (("float32", "fp32"), ("bfloat16", "bf16")):
        model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
        resolved = resolve(FreezePlan.parse("freeze bottom 50%"), find_anatomy(model))
        for param, trains in zip(model.parameters(), (n in resolved.trainable for n, _ in model.named_parameters())):
            param.requires_grad_(trains)
        store_in_training_precision(model, precision, sharded=False)
        stored = sum(p.numel() * p.element_size() for p in model.parameters())
        estimate = describe(resolved, "tiny", 64, 2, dtype)["memory_estimate_bytes"]
        assert estimate["weights"] == stored, dtype
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert estimate["gradients"] + estimate["optimizer"] == trained * (4 + 8)


def test_export_keeps_the_base_models_dtype_unless_told(bf16_model_dir, order_data, tmp_path):
    run = tmp_path / "run"
    TrainingLoop(open_session(config(bf16_model_dir, order_data, run, eval_generate=0)), log=lambda message: None,
            progress=False).run()

    def dtypes(folder):
        with safe_open(str(folder / "model.safetensors"), framework="pt") as exported:
            return {exported.get_tensor(k).dtype for k in exported.keys()}

    assert main(["export", str(run), "--out", str(tmp_path / "same")]) == 0
    assert dtypes(tmp_path / "same") == {torch.bfloat16}
    assert main(["export", str(run), "--out", str(tmp_path / "wide"), "--dtype", "float32"]) == 0
    assert dtypes(tmp_path / "wide") == {torch.float32}
    trained = json.loads((run / "manifest.json").read_text())["trainable_names"][0]
    with safe_open(str(run / "trainable.safetensors"), framework="pt") as mine, \
            safe_open(str(tmp_path / "wide" / "model.safetensors"), framework="pt") as wide:
        assert torch.equal(wide.get_tensor(trained), mine.get_tensor(trained))  # merged in fp32, nothing rounded
