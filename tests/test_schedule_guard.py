"""What a schedule's change of trainable set re-arms: the first-step check again (light, by version
counter) and the optimizer's moments of the tensors that rest."""

from __future__ import annotations

import pytest
import torch

from freezetune import FreezePlan, find_anatomy, resolve
from freezetune.cli.commands import main
from freezetune.errors import FreezetuneError
from freezetune.plans.schedule import Schedule

from helpers import train_argv


def test_the_guard_runs_again_when_the_set_changes(tiny_chat_model_dir, order_data, tmp_path, monkeypatch):
    from freezetune.training import guards
    from freezetune.training.guards import FirstStepGuard

    checked = []

    class Spy(FirstStepGuard):
        def check_update(self, lr=None):
            super().check_update(lr)
            checked.append((sorted(trainable_blocks_of(self.trainable)), self.light))

    monkeypatch.setattr(guards, "FirstStepGuard", Spy)  # what first_step_guard builds
    assert main(train_argv(tiny_chat_model_dir, order_data, tmp_path / "run", "--plan", "train all", "--max-steps", "7",
                           "--schedule", "gradual every=2", "--prefix-cache", "off", lr="1e-2", warmup=1,
                           eval_generate=0)) == 0
    # the first step, then the first step of each new set; one process steps with torch's AdamW, whose writes
    # advance the version counters, so frozen tensors are checked by counter every time (hashed under FSDP/ZeRO)
    assert checked == [([3], True), ([2, 3], True), ([1, 2, 3], True), ([0, 1, 2, 3], True)]


def test_the_light_guard_catches_a_frozen_write_and_a_trained_tensor_that_stays():
    from freezetune.training.guards import FirstStepGuard

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    guard = FirstStepGuard(model, {"1.weight", "1.bias"}, light=True)
    with torch.no_grad():
        model[0].weight.mul_(1.0)  # same values, but written: a version counter sees any in-place write
    with pytest.raises(FreezetuneError, match="frozen tensor 0.weight changed"):
        guard.check_update()
    guard = FirstStepGuard(model, {"1.weight", "1.bias"}, light=True)
    with pytest.raises(FreezetuneError, match="trainable tensor 1.weight .*did not change"):
        guard.check_update()


def test_the_trainable_set_retargets_only_when_the_set_changes_and_rearms_the_check(tiny_llama):
    """The engine the loop and FreezeCallback share: a phase that keeps the set applies nothing; a change
    applies once, drops the moments of what rests, and asks for a light first-step check."""
    from freezetune.training.trainable_set import TrainableSet

    universe = resolve(FreezePlan.parse("freeze embeddings"), find_anatomy(tiny_llama))
    for name, param in tiny_llama.named_parameters():
        param.requires_grad = name in set(universe.trainable_names())
    optimizer = torch.optim.AdamW([p for p in tiny_llama.parameters() if p.requires_grad])
    tiny_llama(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    trainable, applied = TrainableSet(universe, Schedule.parse("gradual every=2 start=1 step=1"), seed=0), []

    def apply(plan):
        applied.append(plan.trainable_names())
        for name, param in tiny_llama.named_parameters():
            param.requires_grad = name in set(plan.trainable_names())
        return optimizer

    assert trainable.take_check() == "full" and trainable.take_check() is None
    assert trainable.advance(0, apply) and trainable.take_check() == "light"
    top = trainable_blocks_of(applied[-1])
    assert top == {3}
    held = {n for n, p in tiny_llama.named_parameters() if p in optimizer.state}
    assert held and all(n in set(applied[-1]) for n in held)  # the resting tensors' moments went
    assert not trainable.advance(1, apply) and trainable.take_check() is None and len(applied) == 1
    assert trainable.advance(2, apply) and trainable_blocks_of(applied[-1]) == {2, 3}
    assert trainable.take_check() == "light"


def trainable_blocks_of(names):
    return {int(n.split(".")[2]) for n in names if n.startswith("model.layers.")}
