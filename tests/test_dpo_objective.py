"""The DPO objective equals TRL's DPOTrainer (default sigmoid loss) on the same model, batch and beta: the
same token ids from the same records, the same loss and gradient to 1e-5, the same reward metrics."""

import copy

import pytest
import torch

from freezetune.data.examples import collate
from freezetune.data.files import Record
from freezetune.data.preferences import preference_examples
from freezetune.training.dpo import dpo_loss, sequence_log_probs

from conftest import ARCHITECTURES, build_tokenizer

BETA = 0.1


def test_loss_gradient_and_metrics_equal_trl_on_one_batch(tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = build_tokenizer()
    config_cls, model_cls, kwargs = ARCHITECTURES["llama"]
    torch.manual_seed(0)
    policy = model_cls(config_cls(**dict(kwargs, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=2, bos_token_id=1)))
    reference = copy.deepcopy(policy).requires_grad_(False)
    with torch.no_grad():  # a policy some way from its reference, so the ratios are not all zero
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    rows = [{"prompt": [{"role": "user", "content": f"send {i} red mugs" + " now" * (i % 3)}],
             "chosen": [{"role": "assistant", "content": f"qty={i}"}],
             "rejected": [{"role": "assistant", "content": f"qty={i + 1}; item=mug"}]} for i in range(4)]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, report_to="none", per_device_train_batch_size=4,
                     use_cpu=True, max_length=64)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    tokenized = [trainer.train_dataset[i] for i in range(4)]
    trl_loss = trainer._compute_loss(trainer.model, trainer.data_collator(tokenized), False)
    trl_loss.backward()
    trl_grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k.startswith("rewards/")}
    policy.zero_grad(set_to_none=True)

    pairs = preference_examples([Record(r, f"prefs.jsonl:{i + 1}") for i, r in enumerate(rows)], tokenizer, 64).pairs
    for pair, row in zip(pairs, tokenized):  # the same records render to the same token ids
        assert pair.chosen.input_ids == row["prompt_ids"] + row["chosen_ids"]
        assert pair.rejected.input_ids == row["prompt_ids"] + row["rejected_ids"]
    chosen, rejected = (collate([getattr(p, side) for p in pairs], 0) for side in ("chosen", "rejected"))

    def log_probs(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return sequence_log_probs(logits, batch["labels"])

    with torch.no_grad():
        reference_chosen, reference_rejected = log_probs(reference, chosen), log_probs(reference, rejected)
    loss, metrics = dpo_loss(log_probs(policy, chosen), log_probs(policy, rejected), reference_chosen, reference_rejected, BETA)
    loss.backward()
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    assert loss.item() != pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-4)  # not the trivial value at equal ratios
    for name, param in policy.named_parameters():
        torch.testing.assert_close(param.grad, trl_grads[name], atol=1e-5, rtol=1e-4)
    assert metrics.keys() == trl_metrics.keys()
    for key, value in trl_metrics.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key


def test_trl_dpo_with_freeze_copies_the_whole_model_for_its_reference(tmp_path, tiny_chat_model_dir):
    """What docs/python.md states about TRL's own path: `freeze()` makes the policy's step cheaper, but
    DPOTrainer still loads its reference as a second whole model, frozen weights and all (`freezetune
    train --objective dpo` copies only the trained tensors); with precompute_ref_log_probs it holds none."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from freezetune.hf import freeze

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    handle = freeze(policy, "freeze bottom 75%")
    rows = [{"prompt": f"send {i} mugs", "chosen": f"qty={i}", "rejected": f"qty={i + 1}"} for i in range(4)]
    trained = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    for precompute in (False, True):
        args = DPOConfig(output_dir=str(tmp_path / f"trl-{precompute}"), report_to="none", use_cpu=True, max_length=32,
                         precompute_ref_log_probs=precompute, per_device_train_batch_size=2)
        trainer = DPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        reference = trainer.ref_model
        if precompute:
            assert reference is None
        else:
            assert sum(p.numel() for p in reference.parameters()) == sum(p.numel() for p in policy.parameters())
            assert trained < sum(p.numel() for p in policy.parameters()) // 2  # the copy is mostly frozen weights
    handle.remove()


def test_the_reference_says_what_it_shares_with_the_policy_and_what_it_copies():
    """It said "the frozen prefix shared with the policy" under full fine-tuning, which shares nothing."""
    from freezetune.training.dpo import Reference

    from conftest import build_tiny

    model = build_tiny("llama")
    names = [n for n, _ in model.named_parameters()]
    everything = Reference(model, names, precompute=False)
    assert everything.describe().startswith(f"reference: the base model, as a copy of the {len(names)} tensors the "
                                            "policy trains (")
    top = Reference(model, names[-3:], precompute=False)
    assert top.describe().startswith(f"reference: the base model, as the policy's {len(names) - 3} frozen tensors "
                                     "(shared) and a copy of the 3 tensors the policy trains (")
