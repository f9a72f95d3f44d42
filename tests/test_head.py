"""The output head only where the loss is: the same loss and gradients as the model's own, chunked."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers as T

from freezetune.cli.commands import main
from freezetune.data.examples import IGNORE
from freezetune.training import head as head_module
from freezetune.training.head import TargetHead

from conftest import ARCHITECTURES, build_tiny
from helpers import metric_records as records

DECODERS = ["llama", "qwen2", "gemma", "phi3", "gpt2", "gpt_neox", "opt", "mixtral"]


def sft_batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded rows whose loss sits on the last few real tokens only, as SFT answers do."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 6:] = 0
    labels = torch.full_like(ids, IGNORE)
    labels[0, 8:] = ids[0, 8:]
    labels[1, 5:9] = ids[1, 5:9]
    labels[2, 4:6] = ids[2, 4:6]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads_of(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("chunk_rows", [None, 3])  # None: one chunk; 3 rows: several, recomputed in backward
def test_the_target_head_gives_the_models_own_loss_and_gradients(name, chunk_rows, monkeypatch):
    model = build_tiny(name)  # eval mode: GPT-2 and OPT have dropout, which would make two forwards differ
    vocab = model.get_output_embeddings().weight.shape[0]
    if chunk_rows:
        monkeypatch.setattr(head_module, "CHUNK_BYTES", 4 * vocab * chunk_rows)
    batch = sft_batch(ARCHITECTURES[name][2].get("vocab_size", 128))
    count = int((batch["labels"][:, 1:] != IGNORE).sum())
    own = model(**batch, use_cache=False).loss
    expected = grads_of(model, own)
    head = TargetHead(model).install()
    assert head.installed, head.problem()
    with head.targets(batch["labels"]):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    assert out.shape == (1,)  # the sum itself: no logits of the whole sequence were kept
    torch.testing.assert_close(out[0] / count, own, rtol=1e-5, atol=1e-6)
    got = grads_of(model, out[0] / count)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-6)
    # outside targets() the layer is the plain projection again (generation)
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits
    assert logits.shape == (3, 12, vocab)
    head.remove()
    assert "forward" not in model.get_output_embeddings().__dict__


def test_models_that_change_logits_after_the_head_keep_the_full_head():
    config = T.Gemma2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=64, vocab_size=128, head_dim=8, final_logit_softcapping=30.0)
    assert "soft-caps" in TargetHead(T.Gemma2ForCausalLM(config)).problem()


def run(model_dir, data, out, *extra):
    return main(["train", "--model", str(model_dir), "--data", str(data[0]), "--eval-data", str(data[1]), "--out", str(out),
                 "--batch-size", "4", "--seq-len", "64", "--lr", "1e-2", "--warmup", "1", "--max-steps", "6",
                 "--eval-generate", "0", "--prefix-cache", "memory", *extra])


def test_training_on_the_targets_only_matches_the_full_head(tiny_chat_model_dir, order_data, tmp_path, capsys):
    for plan in ("freeze bottom 50%", "train all"):
        assert run(tiny_chat_model_dir, order_data, tmp_path / "t", "--plan", plan) == 0
        assert "head: target positions only" in capsys.readouterr().err
        assert run(tiny_chat_model_dir, order_data, tmp_path / "a", "--plan", plan, "--head-positions", "all") == 0
        assert "head: every position (--head-positions all)" in capsys.readouterr().err
        targeted, full = records(tmp_path / "t"), records(tmp_path / "a")
        assert [r["loss"] for r in targeted] == pytest.approx([r["loss"] for r in full], rel=1e-5)
        evals = [json.loads((tmp_path / d / "eval.json").read_text())["after"]["eval_loss"] for d in ("t", "a")]
        assert evals[0] == pytest.approx(evals[1], rel=1e-5)
        for d in ("t", "a"):
            shutil.rmtree(tmp_path / d)


def test_a_head_whose_sum_disagrees_is_not_used(tiny_chat_model_dir, order_data, tmp_path, capsys, monkeypatch):
    # as a model that rescales its logits after the head would: the sum no longer gives the model's loss
    original = TargetHead._forward
    monkeypatch.setattr(TargetHead, "_forward", lambda self, hidden: original(self, hidden) * 1.01
                        if self._labels is not None else original(self, hidden))
    assert run(tiny_chat_model_dir, order_data, tmp_path / "t") == 0
    err = capsys.readouterr().err
    assert "head: every position (the loss over the target positions alone did not match LlamaForCausalLM" in err
    assert run(tiny_chat_model_dir, order_data, tmp_path / "a", "--head-positions", "all") == 0
    assert [r["loss"] for r in records(tmp_path / "t")] == [r["loss"] for r in records(tmp_path / "a")]
