"""Layer-wise learning-rate decay: block i trains at lr * G^(top - i), the embeddings at block 0's
rate, the final norm and head at the top block's; checked on the optimizer and on a real step."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from freezetune.cli.commands import main
from freezetune.plans.anatomy import find_anatomy
from freezetune.training.optimizer import (
    build_lr_scheduler,
    build_optimizer,
    retarget_optimizer,
)

from conftest import build_tiny


def _rate_of(optimizer) -> dict[int, float]:
    return {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}


def test_each_block_gets_its_rate_and_the_parts_outside_follow_their_neighbour():
    model = build_tiny("llama")  # 4 blocks
    rates = _rate_of(build_optimizer(model, 1e-3, 0.1, layer_decay=0.5))
    params = dict(model.named_parameters())
    for entry in find_anatomy(model).entries:
        if entry.name != entry.tensor:
            continue
        layer = entry.layer if entry.part == "block" else {"embeddings": 0, "norm": 3, "head": 3}[entry.part]
        assert rates[id(params[entry.name])] == pytest.approx(1e-3 * 0.5 ** (3 - layer)), entry.name
    plain = build_optimizer(model, 1e-3, 0.1)  # no decay: the two groups it always had
    assert [g["name"] for g in plain.param_groups] == ["decay", "no_decay"]


def test_the_schedule_keeps_every_block_at_its_multiple_and_a_retarget_adds_blocks_at_theirs():
    model = build_tiny("llama")
    for name, param in model.named_parameters():
        param.requires_grad = ".layers.3." in name
    optimizer = build_optimizer(model, 1e-3, 0.0, layer_decay=0.5)
    lr_scheduler = build_lr_scheduler(optimizer, warmup=2, total=10)
    for _ in range(3):
        optimizer.step()
        lr_scheduler.step()
    for name, param in model.named_parameters():  # unfreeze block 1 mid-run, as gradual unfreezing will
        param.requires_grad = ".layers.3." in name or ".layers.1." in name
    retarget_optimizer(optimizer, lr_scheduler, model, 0.0, layer_decay=0.5)
    rates = _rate_of(optimizer)
    top = next(p for n, p in model.named_parameters() if ".layers.3.mlp" in n)
    lower = next(p for n, p in model.named_parameters() if ".layers.1.mlp" in n)
    assert rates[id(lower)] == pytest.approx(rates[id(top)] * 0.25)
    lr_scheduler.step()
    rates = _rate_of(optimizer)
    assert rates[id(lower)] == pytest.approx(rates[id(top)] * 0.25) and rates[id(top)] < 1e-3


def test_one_training_step_moves_each_block_by_its_rate(tiny_chat_model_dir, order_data, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_chat_model_dir), "--data", str(order_data[0]), "--eval-data",
                 str(order_data[1]), "--plan", "train all", "--max-steps", "1", "--warmup", "0", "--lr", "1e-3",
                 "--layer-lr-decay", "0.5", "--batch-size", "4", "--seq-len", "64", "--eval-generate", "0",
                 "--out", str(out)]) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["layer_lr_decay"] == 0.5
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir).named_parameters())
    trained = load_file(str(out / "trainable.safetensors"))
    # AdamW's first step moves each element by about the group's rate (m/sqrt(v) is +-1): the median shows it
    moved = {i: float((trained[f"model.layers.{i}.mlp.down_proj.weight"] - base[f"model.layers.{i}.mlp.down_proj.weight"].detach())
                      .abs().median()) for i in range(4)}
    for i in range(4):
        assert moved[i] == pytest.approx(1e-3 * 0.5 ** (3 - i), rel=0.05), moved


def test_a_decay_outside_zero_to_one_is_refused(tiny_chat_model_dir, capsys):
    assert main(["train", "--model", str(tiny_chat_model_dir), "--layer-lr-decay", "1.5"]) == 2
    assert "--layer-lr-decay must be in (0, 1], got 1.5" in capsys.readouterr().err


def test_a_run_with_layer_decay_resumes_to_the_same_losses(tiny_chat_model_dir, order_data, tmp_path):
    from helpers import config_for, losses, train

    settings = dict(prefix_cache="off", plan="freeze bottom 25%", layer_lr_decay=0.7)
    reference = tmp_path / "straight"
    train(config_for(tiny_chat_model_dir, order_data, reference, **settings))
    broken = tmp_path / "broken"
    calls = iter(range(100))
    assert train(config_for(tiny_chat_model_dir, order_data, broken, **settings),
                 should_stop=lambda: next(calls) == 3)["status"] == "interrupted"
    train(config_for(tiny_chat_model_dir, order_data, broken, resume=str(broken), **settings))
    assert losses(broken) == losses(reference)
    for name, tensor in load_file(str(reference / "trainable.safetensors")).items():
        assert torch.equal(tensor, load_file(str(broken / "trainable.safetensors"))[name])
