"""`freezetune report`: the comparison report re-rendered from run folders, without a model, and
the runs it refuses to pair (scored on other items, or ranked by answers they never gave), and its
timing line."""

import json
import shutil

from freezetune.cli.commands import main

from helpers import train_argv
from test_compare import compare_args


def test_report_command_rerenders_from_run_folders(tiny_chat_model_dir, order_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    # ranked by eval loss, fixed before training where auto would pick exact match: the report keeps it
    argv = compare_args(tiny_chat_model_dir, order_data, out, "full", "freeze bottom 50%", seeds=2)
    assert main(argv + ["--metric", "eval_loss"]) == 0
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
    # a user's own report.html or results.csv is not written over, by report or a new compare; an earlier report is
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("mine")
    (mine / "results.csv").write_text("a,b\n")
    assert main(["report", str(out), "--out", str(mine)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--out {mine} holds report.html, which the report would write over, "
                                                    "and no freezetune report (its results.json): choose another --out")
    assert main(compare_args(tiny_chat_model_dir, order_data, mine, "full")) == 2
    assert "holds report.html, which the report would write over" in capsys.readouterr().err
    assert (mine / "report.html").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == ["report.html", "results.csv"]
    assert main(["report", str(out), "--out", str(tmp_path / "whole"), "--margin", "eval_loss=0.1"]) == 0
    # a metric asked for once the results are in is not one fixed before training, as the verdict said it was
    def ranked(metric):
        assert main(["report", str(out), "--out", str(tmp_path / metric), "--metric", metric]) == 0
        verdict = json.loads((tmp_path / metric / "results.json").read_text())["verdict"]
        return verdict["metric_chosen"], verdict["metric_reason"], verdict["sentence"]
    assert ranked("exact_match")[:2] == ("after training", "asked for with report --metric once the runs had finished")
    assert "Ranked by exact match, chosen after training: asked for with report" in ranked("exact_match")[2]
    # the comparison's own metric, asked for again or by auto, stays the one it fixed, with its reason
    assert ranked("eval_loss")[:2] == ("before training", "asked for with --metric") == \
        (whole["verdict"]["metric_chosen"], whole["verdict"]["metric_reason"])
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
        "freezetune report: error: exact match ranks these runs (asked for with report --metric once the runs had "
        "finished), but freeze bottom 75% "
        "generated no answers (--eval-generate 0): give --metric eval_loss, or runs that answered")
    assert not (tmp_path / "rep").exists()
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0  # auto: eval loss ranks
    # the same run twice, or a copy of it, was one strategy with seeds [0, 0]: its evidence counted twice
    shutil.copytree(run, tmp_path / "copy")
    for twice in ([run, run], [run, tmp_path / "copy"]):
        assert main(["report", *map(str, twice), "--out", str(tmp_path / "twice")]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"freezetune report: error: {twice[0]} and {twice[1]} are both 'freeze bottom 75%' with seed 0: runs of "
            "one strategy are its seeds, and each counts once; give one of them")
    assert not (tmp_path / "twice").exists()
    # one plan at another rate is no seed of it: the row showed the first run's rate over both
    other_rate = tmp_path / "other-rate"
    assert main(train_argv(tiny_chat_model_dir, order_data, other_rate, "--max-steps", "2", "--seed", "1", "--lr", "1e-3",
                           eval_generate=0)) == 0
    capsys.readouterr()
    assert main(["report", str(run), str(other_rate), "--out", str(tmp_path / "rates")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"freezetune report: error: {run} and {other_rate} are both 'freeze bottom 75%', at lr 0.0002 and 0.001: runs "
        "of one strategy are its seeds, at one rate; report each rate's runs apart")


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


def test_report_says_when_the_runs_did_not_train_on_one_budget(tiny_chat_model_dir, order_data, tmp_path, capsys):
    # the same held-out items, so the tests pair them; but a longer run on other data is not a better strategy
    other = tmp_path / "other-train.jsonl"
    other.write_text(order_data[0].read_text().replace("Alice", "Bob"))
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(train_argv(tiny_chat_model_dir, order_data, a, "--max-steps", "2", eval_generate=0)) == 0
    assert main(train_argv(tiny_chat_model_dir, (other, order_data[1]), b, "--plan", "train all", "--max-steps", "3",
                           "--batch-size", "2", eval_generate=0)) == 0
    capsys.readouterr()
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "rep")]) == 0
    said = capsys.readouterr().out.splitlines()
    tail = "; the verdict compares the runs as they trained, not the strategies on one budget."
    assert said[0].startswith(f"Not the same training data: {order_data[0]} (sha256 ") and said[0].endswith(tail)
    assert said[1:3] == [f"Not the same steps: 2 in {a}, 3 in {b}{tail}",
                         f"Not the same examples per step: 4 in {a}, 2 in {b}{tail}"]
    assert said[1] in json.loads((tmp_path / "rep" / "results.json").read_text())["recommendation"]
    assert said[1] in (tmp_path / "rep" / "report.md").read_text()
    # one budget: nothing to say
    assert main(["report", str(a), "--out", str(tmp_path / "alone")]) == 0
    assert capsys.readouterr().out.startswith("report: ")


def test_the_timing_breakdown_adds_up_and_says_when_it_cannot(tmp_path):
    from freezetune.comparison.timing import timing_breakdown, timing_line

    def run(folder, steps, **seconds):
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "step_time_s": s}) + "\n" for i, s in enumerate(steps)))
        (folder / "timing.json").write_text(json.dumps(seconds))

    run(tmp_path / "runs" / "a" / "seed-0", [1.0, 2.0], loading=1.0, evaluation=2.0, generation=0.5, retain=0.5)
    run(tmp_path / "runs" / "a" / "search" / "lr-0.001", [1.0], loading=1.0, evaluation=0.5)
    (tmp_path / "base-timing.json").write_text(json.dumps({"base": 3.0}))
    timing = timing_breakdown([tmp_path / "runs" / "a" / "seed-0"], wall_s=20.0)
    assert {k: timing[k] for k in ("training", "search", "evaluation", "generation", "retain", "loading", "base", "other")} == \
        {"training": 3.0, "search": 1.0, "evaluation": 2.5, "generation": 0.5, "retain": 0.5, "loading": 2.0, "base": 3.0, "other": 7.5}
    assert timing["complete"] and timing["total_over_training"] == 5.0 and timing["runs"] == timing["runs_timed"] == 2
    assert timing_line(timing).startswith("Time: 20 s in all (5.0x the training and search steps): training 3 s, search 1 s")
    # a resumed comparison: its runs' seconds exceed this invocation's wall time, so nothing is left to call "other"
    resumed = timing_breakdown([tmp_path / "runs" / "a" / "seed-0"], wall_s=10.0)
    assert resumed["other"] is None and not resumed["complete"] and resumed["total_over_training"] is None
    # no ratio of this invocation's seconds over steps an earlier one trained (a re-rendered demo said "0.0x")
    assert timing_line(resumed).startswith("Time: 10 s in this invocation; the runs, some trained by an earlier one: training 3 s")
    # the runs of `train`, reported side by side: their own steps, not a comparison's layout (it said "Time (runs only): .")
    run(tmp_path / "mine" / "run-1", [0.01, 0.02])
    (tmp_path / "mine" / "seed-9").mkdir()  # a folder beside it is no run of these
    alone = timing_breakdown([tmp_path / "mine" / "run-1"], wall_s=None)
    assert alone["training"] == 0.03 and alone["runs"] == 1 and timing_line(alone) == "Time (runs only): training 0.03 s."
    assert timing_line(timing_breakdown([], wall_s=None)) == "Time (runs only): none recorded."
