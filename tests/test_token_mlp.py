"""TokenMLP: a padded batch's MLPs run on the real tokens only, and nothing real changes."""

import pytest
import torch

from freezetune.training.token_mlp import TokenMLP, dense_mlp

from conftest import build_tiny

DENSE = ["llama", "qwen2", "mistral", "gemma", "phi3", "gpt2", "gpt_neox"]


def _blocks(model):
    for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise AssertionError("no blocks")


def _padded_batch(lengths, vocab=128, width=None):
    width = width or max(lengths)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (len(lengths), width), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, length:] = 0
        mask[row, :length] = 1
    return ids, mask


@pytest.mark.parametrize("name", DENSE)
def test_real_positions_and_gradients_are_unchanged_and_the_mlp_sees_only_real_tokens(name):
    torch.manual_seed(0)
    model = build_tiny(name).float().eval()  # no dropout: the two passes must be comparable
    blocks = _blocks(model)
    assert all(dense_mlp(block.mlp) for block in blocks)
    lengths = [9, 4, 12, 6]
    ids, mask = _padded_batch(lengths)

    def run():
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits
        real = torch.cat([logits[row, :length] for row, length in enumerate(lengths)])
        real.pow(2).mean().backward()
        return real.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_logits, plain_grads = run()
    token_mlp = TokenMLP(blocks).install()
    seen = []
    first = next(m for m in blocks[0].mlp.children() if isinstance(m, torch.nn.Module) and sum(1 for _ in m.parameters()))
    hook = first.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    with token_mlp.rows(lengths):
        logits, grads = run()
    hook.remove()
    assert seen == [sum(lengths)]  # 31 tokens, not 4 rows x 12
    assert torch.allclose(logits, plain_logits, atol=1e-5)
    assert grads.keys() == plain_grads.keys()
    for key in grads:
        assert torch.allclose(grads[key], plain_grads[key], atol=1e-5), key
    token_mlp.remove()
    assert all("forward" not in block.mlp.__dict__ for block in blocks)


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_a_mixture_of_experts_keeps_every_token(name):
    model = build_tiny(name)
    assert not any(dense_mlp(getattr(block, "mlp", None)) for block in _blocks(model))
    assert TokenMLP(_blocks(model)).mlps == []


def test_outside_a_batch_or_without_padding_the_mlp_runs_as_it_is():
    model = build_tiny("llama").float().eval()
    blocks = _blocks(model)
    token_mlp = TokenMLP(blocks).install()
    ids, mask = _padded_batch([5, 5])
    x = torch.randn(2, 5, 32)
    with token_mlp.rows([5, 5]):  # no padding: the plain call
        assert torch.equal(blocks[0].mlp(x), blocks[0].mlp.__class__.forward(blocks[0].mlp, x))
    with token_mlp.rows([3]):  # a shape that is not the batch's (a generation step): the plain call
        assert torch.equal(blocks[0].mlp(x), blocks[0].mlp.__class__.forward(blocks[0].mlp, x))
    with token_mlp.rows([5, 2]):
        out = blocks[0].mlp(x)
    assert torch.equal(out[1, 2:], torch.zeros(3, 32))  # the pads get zeros, never read
    assert torch.allclose(out[1, :2], blocks[0].mlp.__class__.forward(blocks[0].mlp, x)[1, :2], atol=1e-6)


def test_an_mlp_that_drops_units_in_training_keeps_every_token():
    """GPT-2's MLP ends in dropout: over fewer elements the same seed would drop other units than transformers."""
    model = build_tiny("gpt2").float().train()
    mlp = _blocks(model)[0].mlp
    token_mlp = TokenMLP(_blocks(model)).install()
    x = torch.randn(2, 5, 32)
    with token_mlp.rows([5, 2]):
        torch.manual_seed(3)
        patched = mlp(x)
    torch.manual_seed(3)
    assert torch.equal(patched, mlp.__class__.forward(mlp, x))
    model.eval()
    with token_mlp.rows([5, 2]):
        assert torch.equal(mlp(x)[1, 2:], torch.zeros(3, 32))  # in eval mode it skips the pads again


def test_the_runner_leaves_the_mlps_alone_while_blocks_are_checkpointed():
    """Checkpointing recomputes a block in the backward pass, outside the batch: there the MLP must see what it saw."""
    from freezetune.plans.anatomy import find_anatomy
    from freezetune.plans.language import FreezePlan
    from freezetune.plans.resolution import apply_plan, resolve
    from freezetune.training.prefix import PrefixRunner

    model = build_tiny("llama")
    resolved = resolve(FreezePlan.parse("freeze bottom 50%"), find_anatomy(model))
    apply_plan(model, resolved)
    runner = PrefixRunner(model, resolved).install()
    assert all("forward" in block.mlp.__dict__ for block in model.model.layers)
    runner.remove()
    runner.gradient_checkpointing = True  # as freeze() does when a Trainer turns checkpointing on
    runner.install()
    assert not any("forward" in block.mlp.__dict__ for block in model.model.layers)
    ids, mask = _padded_batch([6, 3])
    with runner.batch(None, [6, 3]):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss
    loss.backward()  # recomputes the trained blocks: the same shapes as in the forward
    runner.remove()
    assert not any("forward" in block.mlp.__dict__ or "forward" in block.__dict__ for block in model.model.layers)
