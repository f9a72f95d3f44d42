"""A comparison run again: an interrupted one picks up where it stopped, a changed setting never reuses a stale run."""

import json
from pathlib import Path

from freezetune.cli.commands import main

from test_compare import compare_args, compare_options


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_an_interrupted_comparison_picks_up_where_it_stopped(tiny_chat_model_dir, order_data, tmp_path, capfd):
    from freezetune.comparison.runner import run_comparison

    out = tmp_path / "cmp"
    options = compare_options(tiny_chat_model_dir, order_data, out, max_steps=400)
    second = out / "runs" / "freeze-bottom-50" / "seed-0"
    logged = []
    # the stop request reaches the second strategy's worker process mid-run: it checkpoints and exits
    reached = run_comparison(options.settings(), log=logged.append, progress=False,
                             should_stop=lambda: _lines(second / "metrics.jsonl") >= 3)
    assert [p.parent.name for p in reached] == ["full", "freeze-bottom-50"]
    assert "freeze bottom 50%: stopped; run the same command again to continue" in logged
    step = sorted((second / "checkpoints").iterdir())[-1].name
    assert not (second / "trainable.safetensors").exists() and 3 <= int(step.split("-")[1]) < 400
    logged.clear()
    capfd.readouterr()
    run_comparison(options.settings(), log=logged.append, progress=False)
    assert "[1/2] full: finished earlier, kept" in logged
    assert f"resuming {second} from {step}" in capfd.readouterr().err  # the worker's own log
    assert (second / "forgetting.json").is_file()


def test_a_stop_between_runs_ends_the_comparison_before_the_next(tiny_chat_model_dir, order_data, tmp_path):
    from freezetune.comparison.runner import run_comparison

    out = tmp_path / "cmp"
    logged = []
    # the signal arrives once the first strategy is measured: nothing of the second one starts
    reached = run_comparison(compare_options(tiny_chat_model_dir, order_data, out).settings(), log=logged.append, progress=False,
                             should_stop=lambda: (out / "runs" / "full" / "seed-0" / "forgetting.json").is_file())
    assert [p.parent.name for p in reached] == ["full"]
    assert "stopped before freeze bottom 50%; run the same command again to continue" in logged
    assert not (out / "runs" / "freeze-bottom-50").exists()


def test_a_rerun_with_other_settings_never_reuses_a_stale_run(tiny_chat_model_dir, order_data, tmp_path, capsys,
                                                               retain_text):
    out = tmp_path / "cmp"
    base = compare_args(tiny_chat_model_dir, order_data, out, "freeze bottom 50%", "lora r=2", retain=retain_text)
    base.append("--keep-checkpoints")
    assert main(base) == 0
    plan_run, lora_run = out / "runs" / "freeze-bottom-50" / "seed-0", out / "runs" / "lora-r-2" / "seed-0"
    first = (plan_run / "trainable.safetensors").read_bytes()
    capsys.readouterr()
    # another plan learning rate: the plan is trained again, the LoRA run is kept, the old plan run set aside
    assert main(base + ["--lr-plan", "2e-3"]) == 0
    err = capsys.readouterr().err
    assert f"{plan_run}: the run there used another lr; kept as seed-0.stale-1, training again" in err
    assert "[2/2] lora r=2: finished earlier, kept" in err
    assert json.loads((plan_run / "manifest.json").read_text())["config"]["lr"] == 2e-3
    assert (plan_run.parent / "seed-0.stale-1" / "trainable.safetensors").read_bytes() == first
    assert (lora_run / "checkpoints").is_dir()  # --keep-checkpoints
    results = json.loads((out / "results.json").read_text())
    assert [r["run_dir"] for r in results["runs"]] == [str(plan_run), str(lora_run)]
    # another warmup changes every run: all are set aside and trained again
    assert main(base + ["--lr-plan", "2e-3", "--warmup", "1"]) == 0
    assert capsys.readouterr().err.count("the run there used another warmup") == 2
    # more seeds train the new seeds only; seed 0 is reused as it is
    assert main(base + ["--lr-plan", "2e-3", "--warmup", "1", "--seeds", "3"]) == 0
    err = capsys.readouterr().err
    assert "used another" not in err and json.loads((out / "results.json").read_text())["runs"][0]["seeds"] == [0, 1, 2]
    # a searched rate: its runs are new; once the search picks a rate, the seeds train at it
    assert main(base[:-7] + ["--lr-lora", "1e-3", "--warmup", "1", "--seeds", "3", "--retain", str(retain_text)]) == 0
    plan_row = json.loads((out / "results.json").read_text())["runs"][0]
    assert plan_row["lr_searched"] and json.loads((plan_run / "manifest.json").read_text())["config"]["lr"] == plan_row["lr"]
    # what the base reference and every run depend on: another retain file, eval setting or data folder is refused
    other_retain = tmp_path / "other-retain.txt"
    other_retain.write_text(retain_text.read_text().upper())
    folder = tmp_path / "data-folder"
    import datasets

    datasets.Dataset.from_json(str(order_data[0])).save_to_disk(str(folder))
    for argv, setting in [
        (compare_args(tiny_chat_model_dir, order_data, out, "freeze bottom 50%", "lora r=2", retain=other_retain), "retain"),
        (base + ["--eval-generate", "3"], "eval_generate"),
        (base + ["--max-new-tokens", "20"], "max_new_tokens"),  # 20 still fits every answer (14 tokens)
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
