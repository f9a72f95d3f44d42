"""Tiny random models built from configs: fast, offline, one per architecture family."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers as T

COMMON = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, vocab_size=128)

# name -> (config class, model class, config kwargs)
ARCHITECTURES = {
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, dict(COMMON, num_key_value_heads=2)),
    "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, dict(COMMON, num_key_value_heads=2)),
    "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(COMMON, num_key_value_heads=2)),
    "gemma": (T.GemmaConfig, T.GemmaForCausalLM, dict(COMMON, num_key_value_heads=2, head_dim=8)),
    "phi3": (T.Phi3Config, T.Phi3ForCausalLM, dict(COMMON, num_key_value_heads=2, pad_token_id=0)),
    "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, dict(n_embd=32, n_layer=4, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0)),
    "gpt_neox": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM, dict(COMMON)),
    "opt": (T.OPTConfig, T.OPTForCausalLM, dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, ffn_dim=64, vocab_size=128, max_position_embeddings=64, word_embed_proj_dim=32)),
    "mixtral": (T.MixtralConfig, T.MixtralForCausalLM, dict(COMMON, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": (T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM, dict(COMMON, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=32)),
    "bert": (T.BertConfig, T.BertForMaskedLM, dict(COMMON, max_position_embeddings=64)),
}


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate fixes the mixed precision once per process, and a HF or TRL Trainer may choose bf16:
    every test starts from a state no earlier test chose."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def build_tiny(name: str) -> torch.nn.Module:
    config_cls, model_cls, kwargs = ARCHITECTURES[name]
    torch.manual_seed(0)
    return model_cls(config_cls(**kwargs)).eval()


@pytest.fixture(params=sorted(ARCHITECTURES))
def any_tiny(request):
    return request.param, build_tiny(request.param)


@pytest.fixture
def tiny_llama():
    return build_tiny("llama")


@pytest.fixture
def tiny_llama_dir(tmp_path_factory):
    """A tiny Llama saved as a normal HF folder, for loading through the CLI."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny("llama").save_pretrained(path)
    return path


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(vocab_size: int = 320, chat_template: bool = True):
    """A byte-level BPE tokenizer trained in-process on a few sentences (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["Please send three red mugs to Alice in Lyon by Friday.", "name=Alice; city=Lyon; qty=3",
              "The quick brown fox jumps over the lazy dog.", "def function(argument): return value"] * 20
    core.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|pad|>", eos_token="<|im_end|>",
                                        bos_token="<|im_start|>")
    if chat_template:
        tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory):
    """A tiny Llama with a matching chat tokenizer, saved as an HF folder: `train --model` takes it."""
    path = tmp_path_factory.mktemp("tiny-chat-llama")
    tokenizer = build_tokenizer()
    config_cls, model_cls, kwargs = ARCHITECTURES["llama"]
    torch.manual_seed(0)
    model = model_cls(config_cls(**dict(kwargs, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=2, bos_token_id=1)))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def order_data(tmp_path):
    """(train, eval) JSONL files of a small prompt/completion task."""
    rows = [{"prompt": f"send {i} red mugs to Alice", "completion": f"qty={i}; item=mug"} for i in range(24)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    held = tmp_path / "eval.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[20:]))
    return train, held


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_chat_model_dir):
    """A user's folder: a model, data, and a finished 6-step run with checkpoints at steps 4 and 6."""
    root = tmp_path_factory.mktemp("user")
    shutil.copytree(tiny_chat_model_dir, root / "model")
    rows = [{"prompt": f"send {i} red mugs to Alice", "completion": f"qty={i}; item=mug" + " more" * (i % 5)} for i in range(24)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[20:]))
    data = (root / "train.jsonl", root / "eval.jsonl")
    from freezetune.cli.commands import main

    from helpers import train_argv

    assert main(train_argv(root / "model", data, root / "run", "--max-steps", "6", "--save-every", "2", lr="1e-2", warmup=1,
                           eval_generate=2, max_new_tokens=8, prefix_cache="off")) == 0
    return root


@pytest.fixture
def world(trained, tmp_path):
    """A fresh copy of the user's folder for one test to damage."""
    shutil.copytree(trained, tmp_path / "user")
    return tmp_path / "user"


@pytest.fixture
def retain_text(tmp_path):
    path = tmp_path / "retain.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. Def function returns value. " * 20)
    return path


# Tests that took over about 8 s here (pytest --durations=0): several processes, real training runs.
# `make test-fast` leaves them out, except one of each kind (KEPT_FAST), so every module still runs there.
SLOW = {
    "test_a_failing_strategy_is_reported_and_the_others_finish",
    "test_a_killed_schedule_resumes_exactly_mid_phase",
    "test_a_rerun_with_other_settings_never_reuses_a_stale_run",
    "test_a_second_compare_on_one_folder_is_refused",
    "test_a_second_train_on_a_running_run_is_refused_with_the_holders_pid",
    "test_a_sharded_run_replays_the_prefix_cache_like_one_process",
    "test_a_two_process_run_resumes_with_one_process",
    "test_accelerate_launch_with_the_shipped_sharding_configs",
    "test_an_interrupted_comparison_picks_up_where_it_stopped",
    "test_bad_comparisons_stop_before_training",
    "test_checkpoints_resume_across_layouts",
    "test_compare_never_uses_a_damaged_retain_set_and_builds_it_again",
    "test_compare_reads_a_yaml_config_with_a_strategy_list",
    "test_compare_runs_the_advised_plan_as_one_more_strategy",
    "test_compare_searches_rates_repeats_seeds_and_writes_the_report",
    "test_console_script_exit_status",
    "test_ctrl_c_twice_exits_130_without_a_traceback_and_the_run_resumes",
    "test_each_process_caches_only_its_own_shard",
    "test_each_strategy_reports_the_peak_memory_of_its_own_process",
    "test_frozen_tensors_hold_no_gradient_and_no_optimizer_state_under_fsdp",
    "test_report_command_rerenders_from_run_folders",
    "test_schedules_are_compare_strategies",
    "test_sigkill_at_random_moments_then_resume_gives_the_same_losses",
    "test_sigkill_mid_training_then_resume_gives_the_same_losses",
    "test_train_on_the_embedded_model_with_the_built_in_task",
    "test_the_seeds_of_a_freeze_plan_share_its_prefix_outputs",
    "test_two_processes_follow_a_lisa_schedule_as_one_does",
    "test_dpo_resumes_exactly_after_sigkill",
    "test_two_processes_train_what_one_does",
    "test_compare_scores_preference_pairs_with_the_verdicts_statistics",
    "test_two_processes_match_one_and_write_one_checkpoint",
    "test_two_processes_with_accumulation_train_the_same_model_on_every_backend",
    "test_two_sharded_processes_match_one_plain_process",
}
KEPT_FAST = {
    "tests/test_compare.py::test_a_failing_strategy_is_reported_and_the_others_finish",  # runner, worker, report
    "tests/test_distributed.py::test_two_processes_match_one_and_write_one_checkpoint",  # DDP under torchrun
    "tests/test_sharding.py::test_two_sharded_processes_match_one_plain_process[fsdp-plan]",  # FSDP2
    "tests/test_sharding.py::test_two_sharded_processes_match_one_plain_process[zero2-plan]",  # DeepSpeed ZeRO
    "tests/test_cli.py::test_console_script_exit_status",  # the process entry (python -m freezetune)
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.originalname in SLOW and item.nodeid not in KEPT_FAST:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def this_sessions_prefix_caches_are_removed(tmp_path_factory):
    """Runs on the tiny models under pytest's temporary folder leave their prefix caches in
    ~/.cache/freezetune: once those models are gone the caches are junk, a few dozen per suite."""
    yield
    from freezetune.models.loading import DEFAULT_CACHE_DIR
    from freezetune.training.cache_folder import cache_entries, remove_cache

    ours = str(tmp_path_factory.getbasetemp())  # this session's only: another may be running beside it
    for entry in cache_entries(DEFAULT_CACHE_DIR / "prefix"):
        if str(entry["meta"].get("model", "")).startswith(ours):
            remove_cache(entry["path"])
