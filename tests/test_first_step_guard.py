"""The first-step check: the plan that was resolved is the plan that ran (training/guards.py)."""

import pytest
import torch

from freezetune.errors import FreezetuneError
from freezetune.training.loop import TrainingLoop
from freezetune.training.session import open_session

from helpers import config_for


def test_guard_catches_a_broken_plan(tiny_chat_model_dir, order_data, tmp_path):
    plan = "freeze bottom 50%; freeze mlp@layers 3"
    session = open_session(config_for(tiny_chat_model_dir, order_data, tmp_path / "broken", plan=plan))
    # break it: a tensor the plan froze is trainable again behind the plan's back
    session.loaded.model.model.layers[3].mlp.up_proj.weight.requires_grad_(True)
    with pytest.raises(FreezetuneError, match="first step: frozen tensor model.layers.3.mlp.up_proj.weight received a gradient"):
        TrainingLoop(session, log=lambda m: None, progress=False).run()


def test_guard_catches_a_frozen_tensor_the_optimizer_step_wrote(tiny_chat_model_dir, order_data, tmp_path, monkeypatch):
    """On one process the first-step check reads frozen tensors' version counters instead of hashing them: a
    write during the optimizer step, even of the same values, still stops the run."""
    from freezetune.distributed.backends import Replicated

    session = open_session(config_for(tiny_chat_model_dir, order_data, tmp_path / "run", plan="freeze bottom 50%"))
    frozen = session.loaded.model.model.layers[0].mlp.up_proj.weight
    stepped = Replicated.step

    def step_and_write(self, max_grad_norm):
        stepped(self, max_grad_norm)
        with torch.no_grad():
            frozen.mul_(1.0)  # a stray in-place write, as an optimizer holding a frozen tensor would make

    monkeypatch.setattr(Replicated, "step", step_and_write)
    with pytest.raises(FreezetuneError, match="first step: frozen tensor model.layers.0.mlp.up_proj.weight changed"):
        TrainingLoop(session, log=lambda m: None, progress=False).run()


def test_guard_catches_unchanged_and_gradientless_tensors():
    from freezetune.training.guards import FirstStepGuard

    model = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=False))
    guard = FirstStepGuard(model, {"0.weight", "1.weight"})
    model(torch.ones(1, 2))[0, 0].backward()
    saved = model[0].weight.grad
    model[0].weight.grad = None  # as if checkpointing cut the gradient off
    with pytest.raises(FreezetuneError, match="trainable tensor 0.weight received no gradient"):
        guard.check_gradients()
    model[0].weight.grad = saved
    guard.check_gradients()
    with torch.no_grad():
        model[1].weight.add_(1.0)  # only the second layer "stepped"
    with pytest.raises(FreezetuneError, match="trainable tensor 0.weight did not change .*though its gradient was not zero"):
        guard.check_update()
    largest = float(model[0].weight.abs().max())
    with pytest.raises(FreezetuneError, match="0.weight did not change"):
        guard.check_update(lr=largest * 1e-3)  # a rate that would have moved it
    guard.check_update(lr=largest * 1e-9)  # a long warmup's first rate, below fp32's resolution: no verdict
    model[0].weight.grad.zero_()  # a zero gradient (LoRA's A on step 1) may leave a tensor as it was
    guard.check_gradients()
    guard.check_update()


def test_a_long_warmup_whose_first_rate_moves_nothing_visible_trains(tiny_chat_model_dir, order_data, tmp_path):
    # 100000 steps: the first step's rate is lr / 10000, below the float resolution of the norms' weights (1.0)
    session = open_session(config_for(tiny_chat_model_dir, order_data, tmp_path / "long", plan="freeze bottom 50%",
                                      max_steps=100000, save_every=0, eval_generate=0))
    answers = iter([False, False, True])  # two steps, then a stop
    result = TrainingLoop(session, log=lambda m: None, progress=False).run(should_stop=lambda: next(answers))
    assert result["status"] == "interrupted" and result["step"] == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_guard_fingerprint_sees_any_changed_or_moved_element(dtype, monkeypatch):
    from freezetune.training import guards

    monkeypatch.setattr(guards, "CHUNK", 7)  # many chunks: the positions must run on across them
    base = torch.randn(5, 9).to(dtype)
    seen = {guards._digest(base)}
    assert guards._digest(base.clone()) in seen
    bumped = base.clone()
    bumped.view(guards.INTS[base.element_size()])[2, 3] += 1  # one bit of one element
    swapped = base.clone()
    swapped[0, 0], swapped[4, 8] = base[4, 8], base[0, 0]  # the same values, elsewhere
    for changed in (bumped, swapped):
        assert guards._digest(changed) not in seen
        seen.add(guards._digest(changed))
