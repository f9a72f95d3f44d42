"""`freezetune compare` and `report` on a tiny chat model: runs, forgetting, report files, bad input."""

import json
from pathlib import Path

import pytest

from freezetune.cli.commands import main
from freezetune.comparison.strategies import parse_strategy
from freezetune.errors import FreezetuneError


@pytest.fixture
def retain_text(tmp_path):
    path = tmp_path / "retain.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. Def function returns value. " * 20)
    return path


def compare_args(model_dir, order_data, out, *strategies, retain=None):
    args = ["compare", "--model", str(model_dir), "--data", str(order_data[0]), "--eval-data", str(order_data[1]),
            "--max-steps", "4", "--batch-size", "4", "--seq-len", "64", "--eval-generate", "2", "--out", str(out)]
    for strategy in strategies:
        args += ["--strategy", strategy]
    return args + (["--retain", str(retain)] if retain else [])


def test_compare_runs_every_strategy_and_writes_the_report(tiny_chat_model_dir, order_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(compare_args(tiny_chat_model_dir, order_data, out, "full", "lora r=4 alpha=8", "freeze bottom 50%")) == 0
    stdout = capsys.readouterr().out
    assert "On the frontier of quality against KL from the base" in stdout and f"report: {out / 'report.html'}" in stdout
    results = json.loads((out / "results.json").read_text())
    runs = {r["strategy"]: r for r in results["runs"]}
    assert list(runs) == ["full", "lora r=4 alpha=8", "freeze bottom 50%"]
    for row in runs.values():
        assert row["status"] == "finished"
        for key in ("trainable_params", "peak_memory_bytes", "step_time_s", "tokens_per_s", "eval_loss",
                    "exact_match", "retain_ppl_delta", "retain_kl", "run_dir", "checkpoint_bytes", "wall_time_s"):
            assert row[key] is not None, key
        assert row["retain_kl"] > 0  # every strategy moved away from the base
    assert runs["full"]["trainable_params"] > runs["freeze bottom 50%"]["trainable_params"] > runs["lora r=4 alpha=8"]["trainable_params"]
    assert runs["full"]["checkpoint_bytes"] > runs["freeze bottom 50%"]["checkpoint_bytes"]
    # freezing the bottom half leaves the bottom blocks exactly where they were
    drift = runs["freeze bottom 50%"]["layer_drift"]
    assert drift["layer 0"] == drift["layer 1"] == drift["embeddings"] == 0.0 and drift["layer 3"] > 0
    assert all(v > 0 for k, v in runs["lora r=4 alpha=8"]["layer_drift"].items() if k.startswith("layer"))
    assert results["base"]["strategy"] == "base model" and results["base"]["retain_kl"] == 0.0
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("strategy,kind,status") and len(csv_lines) == 5
    for name in ("loss_curves", "quality_vs_forgetting", "time_and_memory", "layer_drift"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
        assert f"![{name}](plots/{name}.png)" in (out / "report.md").read_text()
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4
    # every exact match says how many answers it was scored on, and those answers are kept to audit it
    assert all(row["exact_match_examples"] == 2 for row in runs.values())
    assert "% of 2 |" in (out / "report.md").read_text()
    for row in runs.values():
        answers = [json.loads(line) for line in (Path(row["run_dir"]) / "generations.jsonl").read_text().splitlines()]
        assert len(answers) == 2 and {"prompt", "reference", "output", "correct"} <= set(answers[0])
        assert sum(a["correct"] for a in answers) / 2 == row["exact_match"]
        # a reported run keeps its trained tensors, metrics and answers, not its optimizer checkpoints
        assert not (Path(row["run_dir"]) / "checkpoints").exists()

    # a second invocation keeps finished runs instead of redoing them
    assert main(compare_args(tiny_chat_model_dir, order_data, out, "full", "lora r=4 alpha=8", "freeze bottom 50%")) == 0
    assert capsys.readouterr().err.count("finished earlier, kept") == 3


def test_report_command_rerenders_from_run_folders(tiny_chat_model_dir, order_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(compare_args(tiny_chat_model_dir, order_data, out, "full", "freeze bottom 50%")) == 0
    runs = sorted((out / "runs").iterdir())
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    first = json.loads((out / "results.json").read_text())
    assert {r["strategy"]: r["eval_loss"] for r in again["runs"]} == {r["strategy"]: r["eval_loss"] for r in first["runs"]}


def test_a_failing_strategy_is_reported_and_the_others_finish(tiny_chat_model_dir, order_data, tmp_path, capsys, monkeypatch):
    import freezetune.comparison.runner as comparison

    real = comparison._run_one

    def flaky(settings, strategy, *args):
        if strategy.kind == "lora":
            raise RuntimeError("simulated out-of-memory")
        return real(settings, strategy, *args)

    monkeypatch.setattr(comparison, "_run_one", flaky)
    out = tmp_path / "cmp"
    assert main(compare_args(tiny_chat_model_dir, order_data, out, "lora", "freeze bottom 50%")) == 0
    runs = {r["strategy"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["lora"]["status"] == "failed" and runs["lora"]["reason"] == "RuntimeError: simulated out-of-memory"
    assert runs["freeze bottom 50%"]["status"] == "finished"
    assert "lora failed: RuntimeError: simulated out-of-memory" in (out / "report.md").read_text()


def test_parse_strategy():
    assert parse_strategy("full").plan == "train all"
    lora = parse_strategy("lora r=16 alpha=32 targets=q_proj,v_proj")
    assert lora.lora == {"lora_r": 16, "lora_alpha": 32, "lora_targets": "q_proj,v_proj"}
    assert parse_strategy("freeze bottom 75%; train mlp@layers 20-29").kind == "plan"
    assert parse_strategy("freeze bottom 75%").slug == "freeze-bottom-75"
    with pytest.raises(FreezetuneError, match="expected r=N, alpha=N or targets=a,b after 'lora', not 'rank=4'"):
        parse_strategy("lora rank=4")


def test_bad_comparisons_stop_before_training(tiny_chat_model_dir, order_data, tmp_path, capsys, retain_text):
    empty_retain = tmp_path / "empty.jsonl"
    empty_retain.write_text('{"prompt": "no text field", "completion": "x"}\n')
    out = tmp_path / "cmp"
    cases = [
        (compare_args(tiny_chat_model_dir, order_data, out, "full", "freeze sideways"), "plan rule 1 'freeze sideways'"),
        (compare_args(tiny_chat_model_dir, order_data, out, "freeze layers 40"), "--strategy 'freeze layers 40': plan rule 1"),
        (compare_args(tiny_chat_model_dir, order_data, out, "lora rank=4"), "expected r=N"),
        (compare_args(tiny_chat_model_dir, order_data, out, "full", "full"), "two strategies share the run folder name 'full'"),
        (compare_args(tiny_chat_model_dir, order_data, out, "full", retain=empty_retain), "holds no text"),
        (compare_args(tiny_chat_model_dir, order_data, out, "full", retain=tmp_path / "none.txt"), "--retain"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not (out / "runs").exists()  # nothing trained
    # a folder that holds another comparison is refused
    assert main(compare_args(tiny_chat_model_dir, order_data, out, "freeze bottom 50%", retain=retain_text)) == 0
    other = order_data[0].parent / "other.jsonl"
    other.write_text(order_data[0].read_text().replace("Alice", "Bob"))
    capsys.readouterr()
    assert main(compare_args(tiny_chat_model_dir, (other, order_data[1]), out, "freeze bottom 50%", retain=retain_text)) == 2
    assert "holds a comparison with another data (--data); choose another --out" in capsys.readouterr().err


def test_an_interrupted_comparison_picks_up_where_it_stopped(tiny_chat_model_dir, order_data, tmp_path, capsys):
    from freezetune.comparison.strategies import CompareOptions
    from freezetune.comparison.runner import run_comparison

    options = CompareOptions(model=str(tiny_chat_model_dir), data=str(order_data[0]), eval_data=str(order_data[1]),
                             strategy=["full", "freeze bottom 50%"], max_steps=6, batch_size=4, seq_len=64,
                             eval_generate=0, out=str(tmp_path / "cmp"))
    polls = iter(range(1000))
    stop_at = 1 + 6 + 1 + 3  # before the first run, its 6 steps, before the second, then its step 3
    logged = []
    reached = run_comparison(options.settings(), log=logged.append, progress=False, should_stop=lambda: next(polls) >= stop_at)
    assert [p.name for p in reached] == ["full", "freeze-bottom-50"]
    assert "freeze bottom 50%: stopped; run the same command again to continue" in logged
    second = tmp_path / "cmp" / "runs" / "freeze-bottom-50"
    assert (second / "checkpoints" / "step-000003").is_dir() and not (second / "trainable.safetensors").exists()
    logged.clear()
    run_comparison(options.settings(), log=logged.append, progress=False)
    assert "[1/2] full: finished earlier, kept" in logged
    assert any(line.startswith("resuming") and "step 3 of 6" in line for line in logged)
    assert (second / "forgetting.json").is_file()


def test_compare_reads_a_yaml_config_with_a_strategy_list(tiny_chat_model_dir, order_data, tmp_path, capsys):
    config = tmp_path / "compare.yaml"
    config.write_text(
        f"model: {tiny_chat_model_dir}\ndata: {order_data[0]}\neval_data: {order_data[1]}\nmax_steps: 2\n"
        f"batch_size: 4\nseq_len: 64\neval_generate: 0\nout: {tmp_path / 'cmp'}\n"
        "strategy:\n  - freeze bottom 50%; train mlp@layers 0-1\n  - lora r=2\n"
    )
    assert main(["compare", "--config", str(config), "--max-steps", "3"]) == 0
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert [r["strategy"] for r in results["runs"]] == ["freeze bottom 50%; train mlp@layers 0-1", "lora r=2"]
    assert all(r["exact_match"] is None for r in results["runs"])  # eval_generate 0: nothing checked
    manifest = json.loads((tmp_path / "cmp" / "runs" / "lora-r-2" / "manifest.json").read_text())
    assert manifest["config"]["max_steps"] == 3 and manifest["config"]["lora_r"] == 2


def test_a_rerun_with_other_settings_never_reuses_a_stale_run(tiny_chat_model_dir, order_data, tmp_path, capsys,
                                                               retain_text):
    out = tmp_path / "cmp"
    base = compare_args(tiny_chat_model_dir, order_data, out, "freeze bottom 50%", "lora r=2", retain=retain_text)
    base.append("--keep-checkpoints")
    assert main(base) == 0
    plan_run, lora_run = out / "runs" / "freeze-bottom-50", out / "runs" / "lora-r-2"
    first = (plan_run / "trainable.safetensors").read_bytes()
    capsys.readouterr()
    # another plan learning rate: the plan is trained again, the LoRA run is kept, the old plan run set aside
    assert main(base + ["--lr-plan", "1e-3"]) == 0
    err = capsys.readouterr().err
    assert "freeze bottom 50%: the run there used another lr; kept as freeze-bottom-50.stale-1, training again" in err
    assert "lora r=2: finished earlier, kept" in err
    assert json.loads((plan_run / "manifest.json").read_text())["config"]["lr"] == 1e-3
    assert (out / "runs" / "freeze-bottom-50.stale-1" / "trainable.safetensors").read_bytes() == first
    assert (lora_run / "checkpoints").is_dir()  # --keep-checkpoints
    results = json.loads((out / "results.json").read_text())
    assert [r["run_dir"] for r in results["runs"]] == [str(plan_run), str(lora_run)]
    # what the base reference and every run depend on: another retain file, eval setting or data folder is refused
    other_retain = tmp_path / "other-retain.txt"
    other_retain.write_text(retain_text.read_text().upper())
    folder = tmp_path / "data-folder"
    import datasets

    datasets.Dataset.from_json(str(order_data[0])).save_to_disk(str(folder))
    for argv, setting in [
        (compare_args(tiny_chat_model_dir, order_data, out, "freeze bottom 50%", "lora r=2", retain=other_retain), "retain"),
        (base + ["--eval-generate", "3"], "eval_generate"),
    ]:
        assert main(argv) == 2
        assert f"holds a comparison with another {setting}" in capsys.readouterr().err
    folder_out = tmp_path / "cmp-folder"
    folder_args = compare_args(tiny_chat_model_dir, (folder, order_data[1]), folder_out, "freeze bottom 50%", retain=retain_text)
    assert main(folder_args) == 0
    datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}] * 8).save_to_disk(str(folder))  # same path, new rows
    capsys.readouterr()
    assert main(folder_args) == 2
    assert "holds a comparison with another data (--data)" in capsys.readouterr().err


def test_report_ratios_keep_two_significant_digits():
    from freezetune.comparison.report import _ratio

    assert [_ratio(0.034, 1), _ratio(3, 2), _ratio(12.3, 1), _ratio(None, 1)] == ["0.034×", "1.5×", "12×", "n/a"]


def test_a_stop_between_runs_ends_the_comparison_before_the_next(tiny_chat_model_dir, order_data, tmp_path):
    from freezetune.comparison.runner import run_comparison
    from freezetune.comparison.strategies import CompareOptions

    options = CompareOptions(model=str(tiny_chat_model_dir), data=str(order_data[0]), eval_data=str(order_data[1]),
                             strategy=["full", "freeze bottom 50%"], max_steps=2, batch_size=4, seq_len=64,
                             eval_generate=0, out=str(tmp_path / "cmp"))
    polls = iter(range(1000))
    logged = []
    # the signal arrives after the first run's 2 steps, while it is evaluated: it finishes, the second never starts
    reached = run_comparison(options.settings(), log=logged.append, progress=False, should_stop=lambda: next(polls) >= 3)
    assert [p.name for p in reached] == ["full"]
    assert "stopped before freeze bottom 50%; run the same command again to continue" in logged
    assert (tmp_path / "cmp" / "runs" / "full" / "forgetting.json").is_file()
    assert not (tmp_path / "cmp" / "runs" / "freeze-bottom-50").exists()
