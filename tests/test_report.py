"""`freezetune report`: the comparison report re-rendered from run folders, without a model, and
the runs it refuses to pair (scored on other items, or ranked by answers they never gave)."""

import json

from freezetune.cli.commands import main

from helpers import train_argv
from test_compare import compare_args


def test_report_command_rerenders_from_run_folders(tiny_chat_model_dir, order_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(compare_args(tiny_chat_model_dir, order_data, out, "full", "freeze bottom 50%", seeds=2)) == 0
    runs = sorted((out / "runs").glob("*/seed-*"))
    assert len(runs) == 4
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    first = json.loads((out / "results.json").read_text())
    assert {r["strategy"]: (r["eval_loss"], r["seeds"]) for r in again["runs"]} == \
        {r["strategy"]: (r["eval_loss"], r["seeds"]) for r in first["runs"]}
    # the verdict is recomputed from the per-item files the runs saved: the same tests, the same numbers
    # (the folders came sorted, so a pair may be named the other way round: b - a is -(a - b))
    def oriented(test):
        if test["a"] < test["b"]:
            return test
        ci = [-test["ci"][1], -test["ci"][0]] if test["ci"] else None
        return {**test, "a": test["b"], "b": test["a"], "estimate": -test["estimate"] + 0.0, "ci": ci}
    key = lambda t: (t["axis"], t["a"], t["b"])  # noqa: E731
    assert sorted(map(oriented, again["verdict"]["tests"]), key=key) == sorted(map(oriented, first["verdict"]["tests"]), key=key)
    assert len(first["verdict"]["tests"]) == 2
    # the comparison folder itself stands for its reported runs, in its strategies' order: it was "no manifest.json"
    assert main(["report", str(out), "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert [r["strategy"] for r in whole["runs"]] == ["full", "freeze bottom 50%"]
    assert whole["verdict"]["tests"] == first["verdict"]["tests"]
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    (tmp_path / "empty" / "compare.json").write_text(json.dumps({"strategies": ["full"]}))
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "none")]) == 2
    assert "is a comparison folder with no reported run yet" in capsys.readouterr().err


def test_report_refuses_to_rank_by_answers_the_runs_never_gave(tiny_chat_model_dir, order_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_argv(tiny_chat_model_dir, order_data, run, "--max-steps", "2", eval_generate=0)) == 0
    capsys.readouterr()
    # it drew the plots from exact match scores that were None: a TypeError, after an empty report folder was made
    assert main(["report", str(run), "--out", str(tmp_path / "rep"), "--metric", "exact_match"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "freezetune report: error: exact match ranks these runs (asked for with --metric), but freeze bottom 75% "
        "generated no answers (--eval-generate 0): give --metric eval_loss, or runs that answered")
    assert not (tmp_path / "rep").exists()
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0  # auto: eval loss ranks


def test_report_refuses_runs_scored_on_different_items(tiny_chat_model_dir, order_data, tmp_path, capsys, monkeypatch):
    other = tmp_path / "other-eval.jsonl"
    other.write_text("".join(json.dumps({"prompt": f"ship {i} lamps to Bob", "completion": f"qty={i}"}) + "\n"
                             for i in range(4)))
    monkeypatch.chdir(tmp_path)  # run folders named as a user types them: relative, one level deep
    for name, held, plan in (("a", order_data[1], "freeze bottom 50%"), ("b", order_data[1], "train all"),
                             ("c", other, "train all")):
        argv = train_argv(tiny_chat_model_dir, (order_data[0], held), name, "--plan", plan, "--max-steps", "2")
        assert main(argv) == 0
    capsys.readouterr()
    # items paired by their place in two different held-out files: a verdict on nothing
    assert main(["report", "a", "c", "--out", "rep"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"freezetune report: error: a and c were not scored on the same items (held-out items: --eval-data "
        f"{order_data[1]} vs --eval-data {other}); the report pairs runs item by item, so it takes the runs of one "
        "comparison")
    assert main(["report", "a", "b", "--out", "rep", "--forgetting", "kl"]) == 0  # a relative path had no parents[2]
    assert [r["strategy"] for r in json.loads((tmp_path / "rep" / "results.json").read_text())["runs"]] == [
        "freeze bottom 50%", "train all"]
