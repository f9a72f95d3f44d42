"""`freezetune train --objective dpo` as a user runs it: the reference that shares the frozen prefix scores
every pair as a separate copy of the base model would, a step's loss is DPO's against that separate copy,
and a run resumes exactly, splits over two processes, and refuses bad records in one line."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from freezetune.cli.commands import main
from freezetune.data.examples import collate
from freezetune.data.files import read_records
from freezetune.data.order import BatchOrder
from freezetune.data.preferences import paired_examples
from freezetune.training.dpo import dpo_loss, sequence_log_probs

from helpers import losses, metric_records, train_argv

BETA = 0.1


@pytest.fixture
def preference_data(tmp_path):
    """(train, eval) JSONL of prompt/chosen/rejected records of unequal lengths, some conversational."""
    rows = []
    for i in range(28):
        prompt = f"send {i} red mugs to Alice" + " today" * (i % 3)
        right, wrong = f"qty={i}; item=mug" + " ok" * (i % 2), f"qty={i + 1}; item=mug"
        if i % 4 == 0:
            rows.append({"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": right}],
                         "rejected": [{"role": "assistant", "content": wrong}]})
        else:
            rows.append({"prompt": prompt, "chosen": right, "rejected": wrong})
    train, held = tmp_path / "prefs.jsonl", tmp_path / "prefs-eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[24:]))
    return train, held


def dpo_args(model_dir, data, out, *extra, **flags):
    flags = {"lr": "5e-3", "warmup": 1, "plan": "freeze bottom 50%", "prefix_cache": "memory", **flags}
    return train_argv(model_dir, data, out, "--objective", "dpo", *extra, **flags)


def base_log_probs(model_dir, examples):
    """Each row's answer log-probability under a separate copy of the base model."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        batch = collate(examples, 0)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_log_probs(logits, batch["labels"])


@pytest.mark.parametrize("flags", [{}, {"plan": "train all"}, {"lora_r": 4, "plan": None},
                                   {"plan": "train all", "schedule": "lisa layers=1 every=2"},
                                   {"precompute_ref": None}], ids=["freeze", "full", "lora", "lisa", "precomputed"])
def test_the_reference_scores_every_pair_as_a_separate_base_model(tiny_chat_model_dir, preference_data, tmp_path, flags,
                                                                   capsys):
    flags = dict(flags)
    extra = ["--precompute-ref"] if flags.pop("precompute_ref", 0) is None else []
    if flags.get("plan", "") is None:
        flags.pop("plan")
    out = tmp_path / "run"
    # 3 epochs of 6 batches: later epochs replay the prefix cache and the kept reference scores
    assert main(dpo_args(tiny_chat_model_dir, preference_data, out, "--max-steps", "18", "--save-every", "18", *extra,
                         **flags)) == 0
    state = json.loads((out / "checkpoints" / "step-000018" / "state.json").read_text())
    kept = state["reference_logps"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    train = paired_examples(read_records(str(preference_data[0])), tokenizer, 64)
    held = paired_examples(read_records(str(preference_data[1])), tokenizer, 64)
    expected = {**{f"train:{i}": v for i, v in enumerate(base_log_probs(tiny_chat_model_dir, train.examples).tolist())},
                **{f"eval:{i}": v for i, v in enumerate(base_log_probs(tiny_chat_model_dir, held.examples).tolist())}}
    assert sorted(kept) == sorted(expected)  # every training row was seen, every held-out row scored
    for key, value in expected.items():
        assert kept[key] == pytest.approx(value, abs=1e-4), key
    records = metric_records(out)
    # the first step's policy is the reference: the loss is log 2 and every reward 0
    assert records[0]["loss"] == pytest.approx(0.693147, abs=1e-5) and records[0]["rewards/margins"] == 0
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"} <= set(records[-1])
    assert records[-1]["rewards/margins"] != 0  # the policy moved away from the reference
    said = capsys.readouterr().err
    assert ("no weights held" in said) == bool(extra) and ("tensors the policy trains" in said) != bool(extra)


def test_a_step_is_dpo_against_a_separate_reference(tiny_chat_model_dir, preference_data, tmp_path):
    """The loss logged at step 7 equals DPO computed by hand: the policy at checkpoint 6, a separate base
    model as the reference, and the batch data/order.py gives step 7 (prefix replayed from the cache by then)."""
    out = tmp_path / "run"
    assert main(dpo_args(tiny_chat_model_dir, preference_data, out, "--max-steps", "7", "--save-every", "6")) == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    train = paired_examples(read_records(str(preference_data[0])), tokenizer, 64)
    rows = [train.examples[r] for r in train.rows(BatchOrder(train.units, 4, 0).global_batch(6))]
    policy = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir).eval()
    policy.load_state_dict(load_file(str(out / "checkpoints" / "step-000006" / "trainable.safetensors")), strict=False)
    reference = base_log_probs(tiny_chat_model_dir, rows)
    with torch.no_grad():
        batch = collate(rows, 0)
        scores = sequence_log_probs(policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                    batch["labels"])
    loss, metrics = dpo_loss(scores[0::2], scores[1::2], reference[0::2], reference[1::2], BETA)
    logged = metric_records(out)[6]
    assert logged["loss"] == pytest.approx(loss.item(), abs=1e-5) and loss.item() != pytest.approx(0.693147, abs=1e-4)
    assert logged["rewards/margins"] == pytest.approx(metrics["rewards/margins"], abs=1e-5)


def test_dpo_resumes_exactly_after_sigkill(tiny_chat_model_dir, preference_data, tmp_path):
    steps = ["--max-steps", "150", "--save-every", "10"]
    assert main(dpo_args(tiny_chat_model_dir, preference_data, tmp_path / "straight", *steps)) == 0
    victim = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "freezetune", *dpo_args(tiny_chat_model_dir, preference_data, victim,
                                                                               *steps)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    target = victim / "checkpoints" / "step-000020" / "state.json"
    while not target.exists():
        assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run([sys.executable, "-m", "freezetune", "train", "--resume", str(victim)], capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert losses(victim) == losses(tmp_path / "straight")
    final, straight = (load_file(str(d / "trainable.safetensors")) for d in (victim, tmp_path / "straight"))
    assert all(torch.equal(final[k], straight[k]) for k in straight)


def test_two_processes_train_what_one_does(tiny_chat_model_dir, preference_data, tmp_path):
    assert main(dpo_args(tiny_chat_model_dir, preference_data, tmp_path / "one", "--max-steps", "8")) == 0
    result = subprocess.run([sys.executable, "-m", "freezetune",
                             *dpo_args(tiny_chat_model_dir, preference_data, tmp_path / "two", "--max-steps", "8",
                                       "--num-processes", "2")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    two, one = (metric_records(tmp_path / d) for d in ("two", "one"))
    assert [r["rewards/accuracies"] for r in two] == [r["rewards/accuracies"] for r in one]


@pytest.mark.parametrize("record, message", [
    ({"prompt": "hi", "chosen": "a"}, "prefs.jsonl line 1: a preference record needs 'prompt', 'chosen' and 'rejected'; 'rejected' is missing"),
    ({"prompt": "hi", "chosen": "a", "rejected": ""}, "prefs.jsonl line 1: field 'rejected' is empty"),
    ({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     "prefs.jsonl line 1: field 'chosen' must end with an assistant message"),
])
def test_a_bad_preference_record_is_one_line_naming_it(tiny_chat_model_dir, tmp_path, capsys, record, message):
    bad = tmp_path / "prefs.jsonl"
    bad.write_text(json.dumps(record) + "\n")
    assert main(dpo_args(tiny_chat_model_dir, (bad, bad), tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--precompute-ref"], "--precompute-ref is for --objective dpo"),
    (["--objective", "dpo", "--beta", "0"], "--beta must be positive"),
    (["--objective", "dpo", "--fsdp", "--num-processes", "2"], "--objective dpo runs with one process or DDP"),
])
def test_dpo_options_that_cannot_take_effect_are_refused(tiny_chat_model_dir, order_data, tmp_path, capsys, argv, message):
    assert main(train_argv(tiny_chat_model_dir, order_data, tmp_path / "run", *argv)) == 2
    assert message in capsys.readouterr().err


def compare_dpo(model_dir, data, out, *extra):
    args = ["compare", "--objective", "dpo", "--model", str(model_dir), "--data", str(data[0]), "--eval-data", str(data[1]),
            "--max-steps", "6", "--batch-size", "4", "--seq-len", "64", "--out", str(out), "--seeds", "2",
            "--lr-full", "1e-3", "--lr-lora", "1e-2", "--lr-plan", "5e-3"]
    for strategy in ("full", "lora r=4 alpha=8", "freeze bottom 50%"):
        args += ["--strategy", strategy]
    return args + list(extra)


def test_compare_scores_preference_pairs_with_the_verdicts_statistics(tiny_chat_model_dir, preference_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(compare_dpo(tiny_chat_model_dir, preference_data, out)) == 0
    stdout, err = capsys.readouterr()
    assert "quality metric: eval loss (preference pairs: the held-out DPO loss" in err
    results = json.loads((out / "results.json").read_text())
    runs = {r["strategy"]: r for r in results["runs"]}
    for row in runs.values():
        assert row["status"] == "finished" and row["seeds"] == [0, 1] and row["retain_kl"] > 0
        assert 0 <= row["preference_accuracy"] <= 1 and row["eval_loss"] != pytest.approx(0.693147, abs=1e-4)
        for run_dir in row["run_dirs"]:  # every seed scored the same 4 held-out pairs, one line each
            items = [json.loads(line) for line in (Path(run_dir) / "eval-items.jsonl").read_text().splitlines()]
            assert [i["id"] for i in items] == [0, 1, 2, 3] and all(i["tokens"] == 1 for i in items)
            assert "rewards/margins" in (Path(run_dir) / "metrics.jsonl").read_text()
    # the base is its own reference: every pair's loss is log 2
    assert results["base"]["eval_loss"] == pytest.approx(0.693147, abs=1e-5)
    verdict = results["verdict"]
    assert verdict["metric"] == "eval_loss" and len(verdict["tests"]) == 2 * 3  # paired tests over pairs x seeds
    report = (out / "report.md").read_text()
    assert "| eval DPO loss |" in report and "| preference accuracy |" in report and "exact match" not in report
    assert stdout.startswith(verdict["sentence"])
    # the verdict and its recommendation name the metric as the table does: the DPO loss, not an SFT eval loss
    assert "eval DPO loss" in verdict["sentence"] and "eval loss" not in stdout


@pytest.mark.parametrize("extra, message", [
    (["--metric", "exact_match"], "--metric exact_match checks generated answers; --objective dpo scores preference pairs"),
    (["--strategy", "advise"], "--strategy advise probes the gradients of the SFT loss"),
    (["--beta", "-1"], "--beta must be positive"),
])
def test_compare_refuses_what_dpo_cannot_do(tiny_chat_model_dir, preference_data, tmp_path, capsys, extra, message):
    assert main(compare_dpo(tiny_chat_model_dir, preference_data, tmp_path / "cmp", *extra)) == 2
    assert message in capsys.readouterr().err
