"""Forgetting on benchmark tasks: lm-eval scoring a model in memory on local tasks, the built-in quiz,
flips per item, the verdict on --forgetting tasks, and the one-line errors around them."""

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from freezetune.cli.commands import main
from freezetune.comparison.benchmarks import load_tasks, score_tasks
from freezetune.comparison.flips import flips, task_table
from freezetune.data.quiz import quiz_items
from freezetune.errors import FreezetuneError

from conftest import ARCHITECTURES, build_tokenizer
from test_compare import compare_args


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer():
    tokenizer = build_tokenizer()
    config_cls, model_cls, kwargs = ARCHITECTURES["llama"]
    torch.manual_seed(0)
    model = model_cls(config_cls(**dict(kwargs, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=2, bos_token_id=1)))
    return model, tokenizer


def test_the_builtin_quiz_is_fixed_balanced_and_well_formed():
    items = quiz_items()
    assert len(items) >= 200 and items == quiz_items()  # the same file every time
    assert all(len(set(i["choices"])) == 4 and 0 <= i["answer"] < 4 for i in items)
    answers = np.bincount([i["answer"] for i in items], minlength=4)
    assert answers.max() - answers.min() <= 1  # always answering one letter scores 25%
    arithmetic = [i for i in items if i["question"].startswith("What is ") and i["question"][8].isdigit()]
    for item in arithmetic:  # the key is right: the generated sums, differences and products check out
        a, op, b = item["question"][8:-1].split()
        assert int(item["choices"][item["answer"]]) == {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op]
    assert len(arithmetic) >= 100 and len(items) - len(arithmetic) >= 100


def test_a_tiny_model_is_scored_through_lm_eval_on_a_local_task(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    # a user's own task: a config file pointing at a local JSON-lines file
    rows = [{"q": f"{a} plus {b} is", "options": [str(a + b), str(a + b + 1)], "gold": 0} for a, b in [(1, 2), (3, 4), (5, 6), (2, 2)]]
    (tmp_path / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "sums.yaml").write_text(
        "task: local_sums\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'sums.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: '{{options}}'\ndoc_to_target: '{{gold}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    scored = score_tasks(model, tokenizer, ["builtin", str(tmp_path / "sums.yaml")], tmp_path / "tasks", 30, 8)
    assert scored["asked"] == {"tasks": ["builtin", str(tmp_path / "sums.yaml")], "limit": 30}
    quiz, sums = scored["tasks"]["freezetune_builtin"], scored["tasks"]["local_sums"]
    assert [i["id"] for i in quiz["items"]] == list(range(30)) and [i["id"] for i in sums["items"]] == [0, 1, 2, 3]
    assert quiz["accuracy"] == sum(i["correct"] for i in quiz["items"]) / 30 and quiz["metric"] == "acc"
    assert quiz["items"][0]["prompt"] == "Question: What is the capital of France? Answer:"
    # the 0/1 per item is lm-eval's: the right choice has the highest log-likelihood of the four
    item = quiz_items()[5]
    scores = []
    for choice in item["choices"]:
        context = tokenizer(f"Question: {item['question']}\nAnswer:")["input_ids"]
        whole = tokenizer(f"Question: {item['question']}\nAnswer: {choice}")["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([whole])).logits[0].log_softmax(-1)
        scores.append(sum(float(logits[p - 1, whole[p]]) for p in range(len(context), len(whole))))
    assert quiz["items"][5]["correct"] == int(int(np.argmax(scores)) == item["answer"])


def test_flips_and_the_drop_table_pair_the_same_items(tmp_path):
    base = {"asked": {"tasks": ["t"], "limit": None},
            "tasks": {"t": {"accuracy": 0.5, "items": [{"id": i, "correct": c} for i, c in enumerate([1, 1, 0, 0])]}}}
    tuned = {"asked": base["asked"], "tasks": {"t": {"accuracy": 0.5, "items": [{"id": i, "correct": c} for i, c in enumerate([1, 0, 1, 0])]}}}
    changes = flips(base, tuned)["t"]
    assert changes["right_to_wrong"] == [1] and changes["wrong_to_right"] == [2] and changes["before"] == changes["after"] == 0.5
    out = tmp_path / "cmp"
    runs = [out / "runs" / "full" / f"seed-{s}" for s in (0, 1)]
    for run in runs:
        run.mkdir(parents=True)
        (run / "tasks.json").write_text(json.dumps(tuned))
    (out / "base-tasks.json").write_text(json.dumps(base))
    assert task_table(runs, base).tolist() == [[0, 1, -1, 0]] * 2
    other = {**tuned, "tasks": {"t": {"accuracy": 0.5, "items": tuned["tasks"]["t"]["items"][:3]}}}
    with pytest.raises(FreezetuneError, match="different items"):
        flips(base, other)
    # scored with another limit than the base: no table rather than a wrong one
    (runs[1] / "tasks.json").write_text(json.dumps({**tuned, "asked": {"tasks": ["t"], "limit": 3}}))
    assert task_table(runs, base) is None


def test_a_task_that_needs_a_download_is_one_line_naming_it(tmp_path):
    with pytest.raises(FreezetuneError, match=r"--retain-tasks arc_easy: its data is not on this machine and freezetune does not download"):
        load_tasks(["arc_easy"], tmp_path)
    with pytest.raises(FreezetuneError, match=r"--retain-tasks no_such_task: not a task lm-eval knows"):
        load_tasks(["no_such_task"], tmp_path)
    with pytest.raises(FreezetuneError, match=r"--retain-tasks missing.yaml: no such task config file"):
        load_tasks(["missing.yaml"], tmp_path)
    # it was scored once and reported once, as if given once
    with pytest.raises(FreezetuneError, match=r"^--tasks builtin is given twice; give each task once$"):
        load_tasks(["builtin", "builtin"], tmp_path, "--tasks")


def test_without_lm_eval_the_flag_says_how_to_install_it(tiny_chat_model_dir, order_data, tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    args = compare_args(tiny_chat_model_dir, order_data, tmp_path / "cmp", "full") + ["--retain-tasks", "builtin"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["freezetune compare: error: --retain-tasks needs lm-evaluation-harness, which is not installed: "
                   "pip install 'freezetune[eval]'"]
    assert not (tmp_path / "cmp").exists()  # refused before anything was written


@pytest.mark.parametrize("extra, message", [
    (["--forgetting", "tasks"], "--forgetting tasks needs --retain-tasks (for example --retain-tasks builtin)"),
    (["--retain-tasks", "builtin", "--retain-limit", "-1"], "--retain-limit must be 0 or more, got -1"),
    (["--retain-tasks", "hellaswag"], "--retain-tasks hellaswag: its data is not on this machine and freezetune does not download"),
])
def test_bad_retain_task_options_are_one_line(tiny_chat_model_dir, order_data, tmp_path, capsys, extra, message):
    assert main(compare_args(tiny_chat_model_dir, order_data, tmp_path / "cmp", "full") + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.slow
def test_compare_scores_retain_tasks_on_every_run_and_ranks_forgetting_by_them(tiny_chat_model_dir, order_data, tmp_path, capfd):
    capsys = capfd  # the workers are processes of their own: their lines reach the file descriptors only
    out = tmp_path / "cmp"
    args = compare_args(tiny_chat_model_dir, order_data, out, "full", "freeze bottom 50%", seeds=2)
    assert main(args + ["--retain-tasks", "builtin", "--retain-limit", "40", "--forgetting", "tasks"]) == 0
    stdout, err = capsys.readouterr()
    base = json.loads((out / "base-tasks.json").read_text())
    assert base["asked"] == {"tasks": ["builtin"], "limit": 40} and len(base["tasks"]["freezetune_builtin"]["items"]) == 40
    assert err.count("scoring the base model on the retain tasks once") == 1
    results = json.loads((out / "results.json").read_text())
    for row in results["runs"]:
        task = row["retain_tasks"]["freezetune_builtin"]
        assert task["before"] == base["tasks"]["freezetune_builtin"]["accuracy"] and task["items"] == 40
        drops, lost, gained = [], 0, 0
        for run_dir in row["run_dirs"]:
            scored = json.loads((Path(run_dir) / "tasks.json").read_text())
            flipped = scored["flips"]["freezetune_builtin"]
            after = scored["tasks"]["freezetune_builtin"]["accuracy"]
            # accuracy after = before - lost + gained, item by item
            assert round(40 * after) == round(40 * task["before"]) - len(flipped["right_to_wrong"]) + len(flipped["wrong_to_right"])
            drops.append(task["before"] - after)
            lost, gained = lost + len(flipped["right_to_wrong"]), gained + len(flipped["wrong_to_right"])
            assert json.loads((Path(run_dir) / "timing.json").read_text())["tasks"] > 0
        assert row["task_drop"] == pytest.approx(np.mean(drops))
        lo, hi = row["task_drop_ci"]
        assert lo <= row["task_drop"] <= hi
        assert (task["right_to_wrong"], task["wrong_to_right"]) == (lost, gained)  # summed over the seeds
    verdict = results["verdict"]
    assert verdict["cost_metric"] == "task_drop"
    assert {t["axis"] for t in verdict["tests"]} == {"quality", "forgetting"}
    assert all(t["metric"] == "task_drop" for t in verdict["tests"] if t["axis"] == "forgetting")
    assert results["base"]["retain_tasks"]["freezetune_builtin"]["before"] == base["tasks"]["freezetune_builtin"]["accuracy"]
    assert results["timing"]["tasks"] > 0
    report = (out / "report.md").read_text()
    assert "Δ retain-task accuracy [95% CI], flips" in report and "## Retain tasks" in report and "right -> wrong" in report
    per_run = np.mean([json.loads((Path(d) / "tasks.json").read_text())["seconds"] for d in results["runs"][0]["run_dirs"]])
    assert f"the tasks took {per_run:.0f} s per run" in report  # what the scoring cost, per run
    # the same command again keeps everything; a larger limit re-scores the runs' tasks only, without training again
    steps_before = {d: (Path(d) / "metrics.jsonl").read_text() for r in results["runs"] for d in r["run_dirs"]}
    assert main(args + ["--retain-tasks", "builtin", "--retain-limit", "50"]) == 0
    err = capsys.readouterr().err
    assert err.count("): retain tasks: freezetune_builtin") == 4  # two strategies x two seeds, scored again
    again = json.loads((out / "results.json").read_text())
    assert all(row["retain_tasks"]["freezetune_builtin"]["items"] == 50 for row in again["runs"])
    assert again["verdict"]["cost_metric"] == "retain_kl"  # --forgetting kl is the default; the table shows both
    assert steps_before == {d: (Path(d) / "metrics.jsonl").read_text() for r in again["runs"] for d in r["run_dirs"]}
    # report re-renders the verdict on either axis; without a run's task scores, --forgetting tasks is one line
    run_dirs = [d for r in again["runs"] for d in r["run_dirs"]]
    assert main(["report", *run_dirs, "--out", str(tmp_path / "again"), "--forgetting", "tasks"]) == 0
    assert json.loads((tmp_path / "again" / "results.json").read_text())["verdict"]["cost_metric"] == "task_drop"
    capsys.readouterr()
    (Path(run_dirs[0]) / "tasks.json").unlink()
    assert main(["report", *run_dirs, "--out", str(tmp_path / "third"), "--forgetting", "tasks"]) == 2
    assert capsys.readouterr().err.strip() == ("freezetune report: error: --forgetting tasks: full has no retain-task scores "
                                               "for the base's items (compare --retain-tasks measures them)")


def test_evaluate_scores_a_run_against_its_base_and_a_model_alone(trained, tiny_chat_model_dir, capsys):
    import datasets

    datasets.enable_progress_bars()  # as in a fresh process: an earlier test's command turned them off
    run = trained / "run"
    assert main(["evaluate", str(run), "--tasks", "builtin", "--limit", "24", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    base, tuned = scored["base"]["tasks"]["freezetune_builtin"], scored["run"]["tasks"]["freezetune_builtin"]
    change = scored["flips"]["freezetune_builtin"]
    assert change["before"] == base["accuracy"] and change["after"] == tuned["accuracy"] and change["items"] == 24
    lost = {i["id"] for b, i in zip(base["items"], tuned["items"]) if b["correct"] and not i["correct"]}
    assert set(change["right_to_wrong"]) == lost
    assert main(["evaluate", str(run), "--tasks", "builtin", "--limit", "24"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == (f"freezetune_builtin: {100 * base['accuracy']:.1f}% -> {100 * tuned['accuracy']:.1f}% of 24 items; "
                    f"{len(change['right_to_wrong'])} right -> wrong, {len(change['wrong_to_right'])} wrong -> right")
    assert main(["evaluate", str(tiny_chat_model_dir), "--tasks", "builtin", "--limit", "24"]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == f"freezetune_builtin: {100 * base['accuracy']:.1f}% of 24 items (acc)"
    assert "examples/s" not in printed.err  # datasets' bar for the task's split, beside evaluate's own
    assert main(["evaluate", str(run), "--tasks", "piqa"]) == 2
    assert "freezetune evaluate: error: --tasks piqa: its data is not on this machine" in capsys.readouterr().err
