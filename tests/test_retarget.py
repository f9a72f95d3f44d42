"""The retarget seam: the trainable set changes at a step boundary through plan, optimizer and prefix runner."""

from __future__ import annotations

import torch

from freezetune import FreezePlan, find_anatomy, resolve
from freezetune.config.run import TrainConfig
from freezetune.training.loop import TrainingLoop
from freezetune.training.session import open_session

TOP = "model.layers.3.mlp.up_proj.weight"
BELOW = "model.layers.2.mlp.up_proj.weight"
NORM = "model.layers.2.input_layernorm.weight"


def test_retarget_changes_what_trains_and_drops_the_moments_of_what_stops(tiny_chat_model_dir, order_data, tmp_path):
    config = TrainConfig(model=str(tiny_chat_model_dir), data=str(order_data[0]), eval_data=str(order_data[1]),
                         out=str(tmp_path / "run"), batch_size=4, seq_len=64, lr=1e-2, warmup=1, max_steps=10,
                         eval_generate=0, plan="freeze all; train mlp@top 1", prefix_cache="memory")
    trainer = TrainingLoop(open_session(config), log=lambda message: None, progress=False)
    model, optimizer = trainer.model, trainer.lr_scheduler.optimizer
    params = dict(model.named_parameters())
    trainer.runner.train_mode()
    trainer._step(0, None)
    assert params[TOP] in optimizer.state and params[BELOW] not in optimizer.state
    assert trainer.runner.depth == 3
    assert [g["name"] for g in optimizer.param_groups] == ["decay"]  # no 1-d tensor trains yet

    # block 2 (with its norms) trains from the next step on, block 3 stops
    assert trainer.trainable.move_to(resolve(FreezePlan.parse("freeze all; train layers 2"), find_anatomy(model)),
                                     trainer.retarget)
    # the cache keeps block 2's outputs (depth 3) apart from block 1's (depth 2): none is replayed at the new depth
    first = trainer.micro_batches(0)[0]
    assert trainer.runner.depth == 2 and trainer.runner.cache.keys()
    assert all(key.endswith("@3") for key in trainer.runner.cache.keys())
    with trainer.runner.batch(first.keys, first.lengths) as replayed:
        assert not replayed
    assert not params[TOP].requires_grad and params[BELOW].requires_grad and params[NORM].requires_grad
    assert params[TOP] not in optimizer.state  # its moments left with it
    assert [g["name"] for g in optimizer.param_groups] == ["decay", "no_decay"]
    top, below, norm = params[TOP].detach().clone(), params[BELOW].detach().clone(), params[NORM].detach().clone()
    record = trainer._step(1, None)
    assert record["lr"] > 0
    assert torch.equal(params[TOP], top) and params[TOP].grad is None
    assert not torch.equal(params[BELOW], below) and not torch.equal(params[NORM], norm)
    assert int(optimizer.state[params[BELOW]]["step"]) == 1  # fresh moments, not inherited
    assert optimizer.param_groups[1]["lr"] == optimizer.param_groups[0]["lr"]  # the new group follows the schedule

    # a static plan passes through the seam and changes nothing
    groups = [list(g["params"]) for g in optimizer.param_groups]
    assert not trainer.trainable.move_to(trainer.resolved, trainer.retarget)
    assert [list(g["params"]) for g in optimizer.param_groups] == groups


def test_a_run_after_a_retarget_trains_its_own_plan(tiny_chat_model_dir, order_data, tmp_path):
    # the first-step check kept the plan's names: "model.norm.weight received no gradient; the forward pass
    # does not reach it", of a tensor the retarget had frozen
    from safetensors import safe_open

    config = TrainConfig(model=str(tiny_chat_model_dir), data=str(order_data[0]), eval_data=str(order_data[1]),
                         out=str(tmp_path / "run"), batch_size=4, seq_len=64, max_steps=2, eval_generate=0,
                         plan="freeze bottom 75%")
    trainer = TrainingLoop(open_session(config), log=lambda message: None, progress=False)
    trainer.retarget(resolve(FreezePlan.parse("train top 2"), find_anatomy(trainer.model)))
    assert trainer.run()["status"] == "finished"
    with safe_open(str(tmp_path / "run" / "trainable.safetensors"), "pt") as saved:
        assert "model.norm.weight" in saved.keys() and BELOW not in saved.keys()  # the plan's tensors, as the manifest says
