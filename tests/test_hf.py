"""freezetune.hf inside a real HF Trainer and a real TRL SFTTrainer: the plan, no autograd through the
frozen prefix even with the Trainer's gradient checkpointing, the first-step check, schedules."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from freezetune.errors import FreezetuneError
from freezetune.hf import FreezeCallback, freeze

FROZEN_BLOCKS = (0, 1)  # "freeze bottom 50%" of the tiny model's 4 blocks


def sft_dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"send {i} red mugs to Alice"}],
                               "completion": [{"role": "assistant", "content": f"qty={i}; item=mug"}]} for i in range(16)])


def sft_trainer(model_dir, tmp_path, model=None, callbacks=(), **config):
    from trl import SFTConfig, SFTTrainer

    model = model or AutoModelForCausalLM.from_pretrained(model_dir)
    settings = dict(output_dir=str(tmp_path / "trl"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
                    logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, max_length=64,
                    dataloader_num_workers=0)
    args = SFTConfig(**{**settings, **config})
    return SFTTrainer(model=model, args=args, train_dataset=sft_dataset(),
                      processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=list(callbacks))


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def block_outputs_requiring_grad(model, blocks):
    """Forward hooks on ``blocks``: for each forward, whether its output requires grad."""
    seen = []

    def hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        seen.append(bool(hidden.requires_grad))

    handles = [model.model.layers[i].register_forward_hook(hook) for i in blocks]
    return seen, handles


@pytest.mark.parametrize("checkpointing", [False, True])
def test_sft_trainer_with_freeze_trains_only_the_plan(tiny_chat_model_dir, tmp_path, checkpointing):
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    handle = freeze(model, "freeze bottom 50%")
    assert "freeze bottom 50%" in handle.preview and "backward pass stops at block 2" in handle.preview
    before = snapshot(model)
    seen, hooks = block_outputs_requiring_grad(model, FROZEN_BLOCKS)
    trainer = sft_trainer(tiny_chat_model_dir, tmp_path, model, [FreezeCallback(handle)],
                          gradient_checkpointing=checkpointing)
    trainer.train()
    for hook in hooks:
        hook.remove()
    assert seen and not any(seen)  # the frozen prefix never entered autograd, checkpointing or not
    if checkpointing:
        assert handle.runner.gradient_checkpointing  # the Trainer's request reached freezetune's checkpointing
    trained = set(handle.resolved.trainable_names())
    for name, param in model.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        assert changed == (name in trained), name
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all(entry["trainable_params"] == handle.trainable_params for entry in logged)


def test_hand_frozen_with_the_trainers_checkpointing_drags_autograd_through_the_prefix(tiny_chat_model_dir, tmp_path):
    """The trap freeze() removes, shown on the same model and trainer: without it the frozen blocks' outputs
    require grad (transformers' checkpointing makes the embeddings' output require it)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    for name, param in model.named_parameters():
        param.requires_grad_(not (name.startswith("model.embed_tokens") or name.split(".")[2:3] in (["0"], ["1"])))
    seen, hooks = block_outputs_requiring_grad(model, FROZEN_BLOCKS)
    sft_trainer(tiny_chat_model_dir, tmp_path, model, gradient_checkpointing=True).train()
    for hook in hooks:
        hook.remove()
    assert seen and all(seen)


def test_a_plain_trainer_on_raw_text(tiny_chat_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    texts = [f"Please send {i} red mugs to Alice in Lyon by Friday." for i in range(16)]
    data = Dataset.from_dict({"text": texts}).map(lambda row: tokenizer(row["text"]), remove_columns=["text"])
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    handle = freeze(model, "train top 1", prefix_cache=True)
    before = snapshot(model)
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), num_train_epochs=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[FreezeCallback(handle)],
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train()
    assert handle.cache.keys()  # rows came round again in epochs 2 and 3: their prefix output was kept
    assert all(key.endswith("@3") for key in handle.cache.keys())
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), before[name]) == (not name.startswith("model.layers.3.")), name
    handle.remove()
    assert all(p.requires_grad for p in model.parameters()) and "forward" not in model.__dict__
    assert "train" not in model.__dict__ and "gradient_checkpointing_enable" not in model.__dict__


def test_lisa_through_the_callback_drops_the_moments_of_resting_blocks(tiny_chat_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    handle = freeze(model, "train all; freeze embeddings")
    callback = FreezeCallback(handle, "lisa layers=1 every=2", seed=3)
    states = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            inner = getattr(optimizer, "optimizer", optimizer)
            names = {id(p): n for n, p in model.named_parameters()}
            states.append({int(names[id(p)].split(".")[2]) for p in inner.state if names[id(p)].startswith("model.layers.")})

    trainer = sft_trainer(tiny_chat_model_dir, tmp_path, model, [callback, Watch()], max_steps=8)
    trainer.train()
    active = [entry["active_blocks"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(active) == 8 and all(len(a) == 1 for a in active) and active[0::2] == active[1::2]
    assert len({a[0] for a in active}) > 1  # periods draw anew
    assert states == [set(a) for a in active]  # moments only for the block that trains now


def test_a_failed_first_step_check_stops_training_with_the_reason(tiny_chat_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    handle = freeze(model, "freeze bottom 50%")
    # a trained tensor whose gradient something cuts (here a hook that detaches its output)
    model.model.layers[3].mlp.up_proj.register_forward_hook(lambda module, inputs, output: output.detach())
    trainer = sft_trainer(tiny_chat_model_dir, tmp_path, model, [FreezeCallback(handle)])
    with pytest.raises(FreezetuneError, match="FreezeCallback: first step: trainable tensor "
                                              "model.layers.3.mlp.up_proj.weight received no gradient"):
        trainer.train()
    # unfrozen by hand below the prefix runner: refused at the first forward, before any step
    handle.remove()
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    handle = freeze(model, "freeze bottom 50%")
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(True)
    trainer = sft_trainer(tiny_chat_model_dir, tmp_path, model, [FreezeCallback(handle)])
    with pytest.raises(FreezetuneError, match="model.layers.0.mlp.up_proj.weight requires grad, but it is below block 2"):
        trainer.train()


def test_a_lora_run_exports_as_a_peft_adapter_that_generates_the_same_tokens(tiny_chat_model_dir, order_data, tmp_path,
                                                                             capsys):
    from peft import PeftModel

    from freezetune.cli.commands import main
    from freezetune.training.evaluation import generate

    run = tmp_path / "lora"
    assert main(["train", "--model", str(tiny_chat_model_dir), "--data", str(order_data[0]), "--eval-data",
                 str(order_data[1]), "--out", str(run), "--batch-size", "4", "--seq-len", "64", "--max-steps", "6",
                 "--lr", "1e-2", "--eval-generate", "0", "--lora-r", "4"]) == 0
    assert main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "adapter")]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "send 7 red mugs to Alice", "--max-new-tokens", "12"]) == 0
    expected = capsys.readouterr().out.strip()

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir), tmp_path / "adapter")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "send 7 red mugs to Alice"}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert generate(adapted, tokenizer, [ids], 12, "cpu")[0] == expected and expected
    # `generate ADAPTER`, as peft users load one (AutoPeftModelForCausalLM): it was "not a model"
    adapter = tmp_path / "adapter"
    assert main(["generate", str(adapter), "--prompt", "send 7 red mugs to Alice", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.strip() == expected
    assert main(["evaluate", str(adapter), "--tasks", "builtin", "--limit", "2"]) == 0  # beside its base, as a run is
    scored = capsys.readouterr().out
    assert scored.startswith("freezetune_builtin: ") and "% -> " in scored and "of 2 items" in scored
    # on a base other than the one it was trained on: refused, as a run is
    other = tmp_path / "other-base"
    AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir).save_pretrained(other)
    tokenizer.save_pretrained(other)
    changed = AutoModelForCausalLM.from_pretrained(other)
    changed.model.norm.weight.data += 1
    changed.save_pretrained(other)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(other)}))
    assert main(["generate", str(adapter), "--prompt", "send 7"]) == 2
    assert "refusing to mix them" in capsys.readouterr().err
    # an export marker someone rewrote is refused in one line, not a TypeError
    (adapter / "freezetune-export.json").write_text("[1]")
    assert main(["generate", str(adapter), "--prompt", "send 7"]) == 2
    assert "freezetune-export.json: no base_model.name" in capsys.readouterr().err.strip().splitlines()[-1]

    plan_run = tmp_path / "plan"
    assert main(["train", "--model", str(tiny_chat_model_dir), "--data", str(order_data[0]), "--eval-data",
                 str(order_data[1]), "--out", str(plan_run), "--batch-size", "4", "--seq-len", "64", "--max-steps", "2",
                 "--eval-generate", "0"]) == 0
    assert main(["export", str(plan_run), "--format", "peft", "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "a PEFT adapter holds LoRA matrices only" in err and not (tmp_path / "no").exists()
    # LoRA beside a base tensor the plan trains: the adapter was written without it, a different model on loading
    mixed = tmp_path / "mixed"
    assert main(["train", "--model", str(tiny_chat_model_dir), "--data", str(order_data[0]), "--eval-data",
                 str(order_data[1]), "--out", str(mixed), "--batch-size", "4", "--seq-len", "64", "--max-steps", "2",
                 "--eval-generate", "0", "--lora-r", "4", "--plan", r"train re:.*\.lora_[AB]\..*; train norm"]) == 0
    capsys.readouterr()
    assert main(["export", str(mixed), "--format", "peft", "--out", str(tmp_path / "no")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"freezetune export: error: --format peft: {mixed} also trained model.norm.weight, and a PEFT adapter holds "
        "LoRA matrices only; export it as an HF model folder (the default format)")
    assert not (tmp_path / "no").exists()


def test_a_schedule_under_deepspeed_or_fsdp_is_refused_before_the_first_step(tiny_chat_model_dir, tmp_path):
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    callback = FreezeCallback(freeze(model, "train all"), "gradual every=2")
    for setting in ({"deepspeed": "ds_config.json"}, {"fsdp": "full_shard"}):
        args = SimpleNamespace(**{"deepspeed": None, "fsdp": None, **setting})
        with pytest.raises(FreezetuneError, match="a schedule changes the trainable set, but DeepSpeed and FSDP"):
            callback.on_train_begin(args, TrainerState(), TrainerControl())
    plain = FreezeCallback(freeze(AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir), "train all"))
    plain.on_train_begin(SimpleNamespace(deepspeed="ds_config.json", fsdp=None), TrainerState(), TrainerControl())


def test_a_trainer_too_short_for_its_schedule_is_refused_and_one_that_stops_unfreezing_warns(tiny_chat_model_dir):
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    args = SimpleNamespace(deepspeed=None, fsdp=None)
    callback = FreezeCallback(freeze(AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir), "train all"),
                              "gradual every=2")
    with pytest.raises(FreezetuneError, match=r"the run has 2 steps, so it never leaves its first phase \(every=2\) "
                                              "and trains the same blocks throughout; give every=1 or less, or more "
                                              "max_steps"):
        callback.on_train_begin(args, TrainerState(max_steps=2), TrainerControl())
    with pytest.warns(UserWarning, match="the run's 4 steps end before the unfreezing reaches the plan's lowest block: "
                                         "blocks 0-1 and the embeddings never train"):
        callback.on_train_begin(args, TrainerState(max_steps=4), TrainerControl())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # long enough to unfreeze the whole plan: nothing to say
        callback.on_train_begin(args, TrainerState(max_steps=8), TrainerControl())


def test_a_second_freeze_on_one_model_is_refused_and_remove_restores_everything(tiny_chat_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    blocks = model.model.layers
    original = {name: p.requires_grad for name, p in model.named_parameters()}
    handle = freeze(model, "freeze bottom 50%")
    frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    patched = [dict(block.__dict__) for block in blocks]
    with pytest.raises(FreezetuneError, match=r"already has a handle \(plan 'freeze bottom 50%'\); call its remove\(\) first, "
                                              r"then freeze\(\) with the new plan$"):
        freeze(model, "freeze bottom 25%")
    # the refused call changed nothing: the first handle's state stands
    assert {name: p.requires_grad for name, p in model.named_parameters()} == frozen
    assert [set(block.__dict__) for block in blocks] == [set(d) for d in patched]
    handle.remove()
    handle.remove()  # a second remove is harmless
    assert {name: p.requires_grad for name, p in model.named_parameters()} == original
    assert all("forward" not in block.__dict__ for block in blocks) and "forward" not in model.__dict__
    again = freeze(model, "freeze bottom 25%")  # after remove() the model takes a new plan
    assert sum(not p.requires_grad for p in model.parameters()) > 0
    again.remove()
    assert all(p.requires_grad for p in model.parameters())


def test_a_trainer_built_after_a_retarget_is_told_to_freeze_again(tiny_chat_model_dir, tmp_path):
    # its optimizer held the retargeted set; the callback went back to the whole plan, and the first step failed its
    # check with "did not change after the optimizer step" (freeze()'s own message had said to retarget)
    from freezetune import FreezePlan, find_anatomy, resolve

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    handle = freeze(model, "freeze bottom 50%")
    handle.retarget(resolve(FreezePlan.parse("train top 1"), find_anatomy(model)))
    before = snapshot(model)
    with pytest.raises(FreezetuneError, match=r"^FreezeCallback: the Trainer's optimizer was built after the handle was "
                                              r"retargeted to 'train top 1', so it lacks model\.layers\.2\.\S+ and the rest of "
                                              r"the plan freeze\(\) applied \('freeze bottom 50%'\); to train another plan, remove"):
        sft_trainer(tiny_chat_model_dir, tmp_path, model, [FreezeCallback(handle)]).train()
    assert all((p == before[n]).all() for n, p in model.named_parameters())  # refused before any step
