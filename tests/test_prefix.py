"""The prefix runner on many architectures: same losses and gradients, no autograd in the prefix."""

import json

import pytest
import torch

from freezetune.data.examples import Example, collate
from freezetune.plans.anatomy import find_anatomy
from freezetune.plans.language import FreezePlan
from freezetune.plans.resolution import apply_plan, resolve
from freezetune.training.prefix import PrefixRunner, prefix_depth
from freezetune.training.prefix_cache import PrefixCache

from conftest import build_tiny

LENGTHS = [5, 9, 7]


def setup(arch, plan="freeze bottom 50%"):
    model = build_tiny(arch)
    resolved = resolve(FreezePlan.parse(plan), find_anatomy(model))
    apply_plan(model, resolved)
    generator = torch.Generator().manual_seed(0)
    examples = [Example(torch.randint(3, 100, (n,), generator=generator).tolist(),
                        torch.randint(3, 100, (n,), generator=generator).tolist(), "x") for n in LENGTHS]
    batch = collate(examples, pad_id=0)
    if arch != "bert":
        batch["use_cache"] = False
    return model, resolved, batch


def step(model, runner, batch, keys=None):
    runner.train_mode()
    torch.manual_seed(5)  # same dropout masks in the trained blocks for every variant
    with runner.batch(keys, LENGTHS) as replayed:
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads, replayed


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert", "opt", "gpt_neox", "phi3", "mixtral", "qwen2_moe", "gemma"])
def test_runner_cache_and_checkpointing_match_the_plain_model(arch):
    model, resolved, batch = setup(arch)
    plain = step(model, PrefixRunner(model, resolved), batch)  # not installed: the model as transformers runs it
    runner = PrefixRunner(model, resolved, cache=PrefixCache()).install()
    recorded = step(model, runner, batch, keys=["a", "b", "c"])
    replayed = step(model, runner, batch, keys=["a", "b", "c"])
    runner.remove()
    checkpointed_runner = PrefixRunner(model, resolved, gradient_checkpointing=True).install()
    checkpointed = step(model, checkpointed_runner, batch)
    checkpointed_runner.remove()
    assert not recorded[2] and replayed[2]
    for variant in (recorded, replayed, checkpointed):
        assert variant[0] == pytest.approx(plain[0], rel=1e-5)
        assert set(variant[1]) == set(plain[1]) == set(resolved.trainable_names())
        for name, grad in plain[1].items():
            torch.testing.assert_close(variant[1][name], grad, rtol=1e-4, atol=1e-6)


def saved_in_prefix(model, blocks, depth, batch):
    """How many tensors autograd saves while the frozen prefix blocks run."""
    inside, saved = [False], [0]
    for block in list(blocks)[:depth]:
        block.register_forward_pre_hook(lambda *a: inside.__setitem__(0, True))
        block.register_forward_hook(lambda *a: inside.__setitem__(0, False))

    def pack(tensor):
        saved[0] += inside[0]
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss.backward()
    return saved[0]


def test_no_autograd_in_the_frozen_prefix_unlike_transformers_checkpointing():
    model, resolved, batch = setup("llama", "freeze bottom 75%")
    depth = prefix_depth(resolved)
    assert depth == 3
    runner = PrefixRunner(model, resolved, gradient_checkpointing=True).install()
    runner.train_mode()
    assert saved_in_prefix(model, model.model.layers, depth, batch) == 0
    runner.remove()
    # the hand-written route: transformers' checkpointing makes the embedding output require grad
    leaky, _, batch = setup("llama", "freeze bottom 75%")
    leaky.train()
    getattr(leaky, "activation_checkpointing_enable", leaky.gradient_checkpointing_enable)()
    assert saved_in_prefix(leaky, leaky.model.layers, depth, batch) > 0


def test_no_prefix_when_the_embeddings_train():
    model, resolved, _ = setup("gpt2", "freeze layers 0-2")  # embeddings (and the tied head) still train
    assert prefix_depth(resolved) == 0
    runner = PrefixRunner(model, resolved, cache=PrefixCache())
    assert runner.cache is None


def test_remove_restores_the_class_forward():
    model, resolved, _ = setup("llama")
    runner = PrefixRunner(model, resolved, gradient_checkpointing=True).install()
    assert all("forward" in block.__dict__ for block in model.model.layers)
    runner.remove()
    assert all("forward" not in block.__dict__ for block in model.model.layers)


def test_a_moe_load_balancing_loss_keeps_every_router_running(order_data, tmp_path, capsys, monkeypatch):
    """Replaying the frozen blocks from the cache skips their routers, which the aux loss sums over."""
    import transformers as T

    from freezetune.cli.commands import main

    from conftest import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = T.MixtralForCausalLM(T.MixtralConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        num_local_experts=4, num_experts_per_tok=2, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=2,
        bos_token_id=1, output_router_logits=True, router_aux_loss_coef=0.5))
    model.save_pretrained(tmp_path / "moe")
    tokenizer.save_pretrained(tmp_path / "moe")

    def losses(out, cache):
        assert main(["train", "--model", str(tmp_path / "moe"), "--data", str(order_data[0]), "--eval-data",
                     str(order_data[1]), "--out", str(tmp_path / out), "--batch-size", "4", "--seq-len", "64",
                     "--max-steps", "10", "--lr", "1e-2", "--eval-generate", "0", "--plan", "freeze bottom 50%",
                     "--prefix-cache", cache]) == 0
        return [json.loads(line)["loss"] for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]

    uncached = losses("off", "off")
    assert losses("asked", "memory") == uncached  # 20 rows, batches of 4: steps 6-10 are epoch 2
    err = capsys.readouterr().err
    assert "prefix cache: off (the model's load-balancing loss covers the routers of every MoE layer" in err
    assert "head: every position, as the model computes it (the model adds its routers' load-balancing loss" in err
    # what the notice prevents: replaying would leave the frozen blocks' routers out of the loss from epoch 2 on
    monkeypatch.setattr("freezetune.training.cache_choice.router_loss", lambda model: False)
    replayed = losses("replayed", "memory")
    assert replayed[:5] == uncached[:5] and replayed[5:] != pytest.approx(uncached[5:], rel=1e-6)


@pytest.mark.parametrize("unfrozen", ["model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"])
def test_a_prefix_tensor_set_to_require_grad_after_freeze_is_refused_at_the_forward(unfrozen):
    """Set trainable by hand after the plan, block 0 ran without autograd and got no gradient, silently
    (the LISA fault of LMFlow #726: layers that train in name only)."""
    import warnings

    from freezetune.errors import FreezetuneError
    from freezetune.hf import freeze

    model, _, batch = setup("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a tied head's notice
        handle = freeze(model, "freeze bottom 50%")
    model.train()
    model(**batch).loss.backward()  # as planned: no error
    model.get_parameter(unfrozen).requires_grad_(True)
    with pytest.raises(FreezetuneError, match=rf"^{unfrozen} requires grad, but it is below block 2"):
        model(**batch)
    with torch.no_grad():
        model(**batch)  # evaluation computes no gradient: nothing is lost
    handle.remove()
