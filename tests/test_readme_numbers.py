"""Numbers in the README and docs/ are the committed results files' numbers, not numbers typed by hand."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_readme_performance_tables_match_bench_results():
    result = json.loads((ROOT / "bench" / "results" / "step_time.json").read_text())
    section = (ROOT / "docs" / "performance.md").read_text()
    assert result["measured"] == "train_step"  # the step `train` runs, not a shortcut beside it
    assert f"({100 * result['target_fraction']:.0f}% of the\nbatches' positions here)" in section
    assert f"fp32 on a {result['provenance']['cpu_cores']}-core CPU" in section and f"median of {result['steps']} steps" in section
    reference = result["paths"]["freeze75"]["step_time_s"]
    for path, values in result["paths"].items():
        row = (f"| `{path}` | {values['step_time_s']:.2f} | {values['step_time_s'] / reference:.2f} | "
               f"{values['peak_memory_bytes'] / 2**20:,.0f} |")
        assert row in section, f"README row for {path} should read: {row}"
    for name, value in result["ratios"].items():
        assert f"| `{name}` | {value:.2f} |" in section, f"README ratio {name} should be {value:.2f}"


def test_readme_memory_table_matches_bench_results():
    result = json.loads((ROOT / "bench" / "results" / "memory.json").read_text())
    readme = (ROOT / "docs" / "performance.md").read_text()
    for row in result["rows"]:
        line = (f"| {row['strategy']} | {row['precision']} | {row['dtypes']['frozen']} / {row['dtypes']['trainable']} | "
                f"{row['estimate_bytes'] / 2**30:.2f} | {row['measured_bytes'] / 2**30:.2f} | "
                f"{row['measured_bytes'] / row['estimate_bytes']:.2f} |")
        assert line in readme, f"README memory row should read: {line}"
        assert 0.75 <= row["measured_bytes"] / row["estimate_bytes"] <= 4 / 3  # the estimate within a third
    assert f"peaks at {result['ratios']['bf16_over_fp32_freeze75']:.2f}× its fp32 peak" in readme


def test_readme_integration_ratio_matches_bench_results():
    result = json.loads((ROOT / "bench" / "results" / "integration.json").read_text())
    readme = (ROOT / "docs" / "python.md").read_text()
    steps = result["steps"]
    for name, label in (("trl_default", "frozen by hand"), ("freeze", "with `freeze()`")):
        assert f"| {label} | {steps[name]['step_time_s']:.2f} | {len(steps[name]['step_times_s'])} |" in readme
    assert f"TRL {'.'.join(result['provenance']['versions']['trl'].split('.')[:2])} `SFTTrainer`" in readme
    assert f"| `trl_default_over_freeze` | {result['ratios']['trl_default_over_freeze']:.2f} |" in readme


def test_startup_and_first_step_check_match_bench_results():
    result = json.loads((ROOT / "bench" / "results" / "first_step_check.json").read_text())
    doc = (ROOT / "docs" / "performance.md").read_text()
    assert result["measured"].startswith("train_step with and without FirstStepGuard")
    times = result["startup_s"]
    assert "| " + " | ".join(f"{times[k]:.2f}" for k in ("imports", "model", "hash", "plan", "data", "cache")) + " |" in doc
    assert f"as a multiple of a plain step ({result['step_time_s']['plain']:.2f} s)" in doc
    assert f"| by version counter (one process, DDP) | {result['ratios']['light_check_in_steps']:.2f} |" in doc
    assert f"| by hashing every frozen weight (FSDP, ZeRO) | {result['ratios']['full_check_in_steps']:.2f} |" in doc
    assert result["ratios"]["light_check_in_steps"] <= 1  # issue 22: the check costs at most one step


def test_the_dpo_tables_match_bench_results():
    result = json.loads((ROOT / "bench" / "results" / "dpo.json").read_text())
    page, readme = (ROOT / "docs" / "preferences.md").read_text(), (ROOT / "README.md").read_text()
    labels = {"freeze": "freezetune `freeze bottom 75%`", "full": "freezetune `train all`", "lora": "freezetune LoRA r=16",
              "trl_freeze": "TRL `DPOTrainer`, frozen by hand",
              "trl_freeze_checkpointing": "the same, TRL's default checkpointing"}
    for model, measured in result["models"].items():
        for name, row in measured["runs"].items():
            line = (f"| {model} | {labels[name]} | {row['reference_bytes'] / 2**20:,.0f} | {row['peak_bytes'] / 2**30:.2f} | "
                    f"{row['step_time_s']:.2f} |")
            assert line in page, f"docs/preferences.md row should read: {line}"
            if name in ("freeze", "full", "trl_freeze"):
                assert line in readme, f"README DPO row should read: {line}"
        runs = measured["runs"]
        # the claim: under a freeze plan the reference is the trained tensors (fp32), TRL's the whole model
        assert runs["freeze"]["reference_bytes"] == 4 * runs["freeze"]["trainable_params"]
        assert runs["trl_freeze"]["reference_bytes"] == runs["full"]["reference_bytes"]
        assert runs["freeze"]["trainable_params"] == runs["trl_freeze"]["trainable_params"]  # the same tensors train
    for name in next(iter(result["models"].values()))["ratios"]:
        line = f"| `{name}` | " + " | ".join(f"{m['ratios'][name]:.2f}" for m in result["models"].values()) + " |"
        assert line in page and line in readme, f"DPO ratio row should read: {line}"


def test_every_results_file_says_where_its_numbers_came_from():
    for path in [*(ROOT / "bench" / "results").glob("*.json"), ROOT / "docs" / "results" / "demo" / "results.json"]:
        where = json.loads(path.read_text())["provenance"]
        assert re.fullmatch(r"[0-9a-f]{40}", where["commit"]), path  # measured on committed code
        assert where["uncommitted_changes"] is False, path
        assert where["versions"]["torch"] and where["cpu"] and where["date"], path


def test_the_readme_demo_block_is_rendered_from_the_committed_demo_results():
    render = runpy.run_path(str(ROOT / "docs" / "render_demo.py"))
    results = json.loads((ROOT / "docs" / "results" / "demo" / "results.json").read_text())
    expected = render["render"](results)
    assert render["block"]((ROOT / "README.md").read_text()) == expected, \
        "README demo block is stale: run .venv/bin/python docs/render_demo.py"
    # the demo the README describes is the demo `make demo` runs
    assert {r["strategy"] for r in results["runs"]} == {"full", "lora", "freeze bottom 75%"}
    assert all(r["seeds"] == [0, 1] and r["status"] == "finished" for r in results["runs"])
    assert all(r["retain_tasks"]["freezetune_builtin"]["items"] == 222 for r in [results["base"], *results["runs"]])
    # docs/compare.md quotes the base's accuracy on the quiz and what scoring one model costs, from the same file
    compare_doc = (ROOT / "docs" / "compare.md").read_text()
    assert f"SmolLM2-135M-Instruct answers {100 * results['base']['retain_tasks']['freezetune_builtin']['before']:.1f}% of it" in compare_doc
    per_model = results["timing"]["tasks"] / (1 + sum(len(r["seeds"]) for r in results["runs"]))  # the base and every seed
    assert f"built-in quiz takes about {per_model:.0f} s per model" in compare_doc


@pytest.mark.integration
def test_the_readme_plan_preview_is_what_plan_prints(capsys):
    """Every line the README shows of `freezetune plan smollm2-135m "freeze bottom 75%"` is a line it prints."""
    from freezetune.cli.commands import main

    readme = (ROOT / "README.md").read_text()
    shown = readme.split('freezetune plan smollm2-135m "freeze bottom 75%"\n```\n\n```\n', 1)[1].split("```", 1)[0]
    assert main(["plan", "smollm2-135m", "freeze bottom 75%"]) == 0
    printed = capsys.readouterr().out.splitlines()
    for line in shown.splitlines():
        if line.strip() != "...":  # where the README leaves rows out
            assert line in printed, f"README shows a line plan does not print: {line!r}"


@pytest.mark.integration
def test_the_documented_advice_on_the_embedded_model_is_what_advise_picks(capsys):
    """docs/advise.md quotes `advise smollm2-135m --seq-len 256 --batch-size 4`; the command must agree."""
    from freezetune.cli.commands import main

    assert main(["advise", "smollm2-135m", "--seq-len", "256", "--batch-size", "4", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    pick = next(c for c in info["candidates"] if c["plan"] == info["plan"])
    quoted = (f"it picks `{info['plan']}`: {100 * pick['score']:.0f}% of the spectral evidence,\n"
              f"{pick['memory_estimate_bytes'] / 2**30:.1f} GiB estimated against a {info['memory_budget_bytes'] / 2**30:.1f} GiB "
              f"default budget, a step about {pick['predicted_step_ratio']:.2f}× full's")
    assert quoted in (ROOT / "docs" / "advise.md").read_text()
    over = info["over_budget"]  # the 7 best-ranked blocks, block 0 among them, over the budget
    assert over["blocks"] == pick["blocks"] == 7 and over["plan"].startswith("train layers 0,")
    assert (f"of the 7-block\nplans, the 7 best-ranked blocks hold more of the evidence ({100 * over['score']:.0f}%) but, with block 0 "
            f"among them,\nthe backward pass runs the whole stack: {over['memory_estimate_bytes'] / 2**30:.1f} GiB.") in (ROOT / "docs" / "advise.md").read_text()


def test_the_advice_tables_are_rendered_from_the_advice_results():
    """bench/advice.py's three tasks: the README and docs/advise.md tables say what the results file says."""
    render = runpy.run_path(str(ROOT / "docs" / "render_bench.py"))
    result = json.loads((ROOT / "bench" / "results" / "advice.json").read_text())
    assert set(result["tasks"]) == {"dispatch", "tickets", "cpt"}
    for name in ("README.md", "docs/advise.md"):
        page = (ROOT / name).read_text()
        assert render["advice"](page) == page, f"{name}: advice tables are stale: run .venv/bin/python docs/render_bench.py"
    for task in result["tasks"].values():
        assert task["on_frontier"] == (task["advised_plan"] in task["frontier"])
        assert task["advise_over_compare"] == round(task["advise_wall_s"] / task["compare_wall_s"], 3)
        assert task["advised_plan"] in {row["strategy"] for row in task["rows"]}
        assert {p["plan"] for p in task["pilots"] if p["round"] == max(q["round"] for q in task["pilots"])} >= set(task["pilot_frontier"])
        assert task["on_frontier"] and task["advise_over_compare"] <= 1 / 3  # issue 23's bar
    # what docs/advise.md says in words about these comparisons
    tasks = result["tasks"]
    assert all(t["dominated"] == [] for t in tasks.values()) and len({t["advised_plan"] for t in tasks.values()}) == 1
    assert f"least forgetting: {tasks['dispatch']['advised_plan']} " in tasks["dispatch"]["verdict"]
    assert tasks["tickets"]["verdict"].startswith("No measurable difference")
    assert "least forgetting: freeze bottom 75%" in tasks["cpt"]["verdict"] and "Best eval loss: lora" in tasks["cpt"]["verdict"]


def test_the_peers_tables_are_rendered_from_the_peers_results():
    """bench/peers.py: the README's side-by-side table and ratios are the results file's, and the ratios are
    what its runs give (each round's peer over that round's freezetune, median over rounds)."""
    render = runpy.run_path(str(ROOT / "docs" / "render_bench.py"))
    result = json.loads((ROOT / "bench" / "results" / "peers.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert render["peers"](readme) == readme, "README peers tables are stale: run .venv/bin/python docs/render_bench.py"
    job, runs = result["job"], result["runs"]
    assert job["records"] == 120 and job["epochs"] == 3 and job["plan"] == "freeze bottom 75%" and result["rounds"] >= 2
    steps = job["epochs"] * job["steps_per_epoch"]
    assert all(len(run["step_times_s"]) == steps for tool in runs.values() for run in tool)
    assert all(len(tool) == result["rounds"] for tool in runs.values())
    _ratios_are_the_runs(result)
    # the same parameters train, but for the final norm LLaMA-Factory cannot name alone (bench/peers/run_llamafactory.py)
    trainable = job["trainable_params"]
    assert trainable["freezetune"] == trainable["trl"] == trainable["llamafactory"] + 576


def test_the_control_without_the_peers_checkpointing_is_rendered_from_its_results():
    render = runpy.run_path(str(ROOT / "docs" / "render_bench.py"))
    result = json.loads((ROOT / "bench" / "results" / "peers-no-checkpointing.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert render["peers_control"](readme) == readme, "README control table is stale: run .venv/bin/python docs/render_bench.py"
    assert result["gradient_checkpointing"] == {"freezetune": False, "trl": False, "llamafactory": False}
    assert result["job"]["records"] == 120 and result["job"]["epochs"] == 3 and result["rounds"] >= 2
    _ratios_are_the_runs(result)


def _ratios_are_the_runs(result: dict) -> None:
    """Each ratio is what the runs give: each round's peer over that round's freezetune, median over rounds."""
    per_epoch, runs = result["job"]["steps_per_epoch"], result["runs"]
    measures = {"3_epochs": lambda r: sum(r["step_times_s"]), "epoch_1": lambda r: sum(r["step_times_s"][:per_epoch]),
                "process_wall": lambda r: r["process_wall_s"]}
    for peer, short in (("trl", "trl"), ("llamafactory", "lf")):
        for name, measure in measures.items():
            ratios = sorted(measure(p) / measure(f) for p, f in zip(runs[peer], runs["freezetune"]))
            middle = len(ratios) // 2
            median = ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2
            assert result["ratios"][f"{short}_over_freezetune_{name}"] == pytest.approx(median, abs=1e-3)


def test_the_demo_at_more_steps_is_quoted_from_its_results():
    """docs/compare.md sets the demo beside the same comparison at 96 steps: wall time, ratio and the
    exact match of each strategy come from the two committed files, and so does 'measurably behind'."""
    compare_doc = " ".join((ROOT / "docs" / "compare.md").read_text().split())
    for folder, steps, search_steps in [("demo", 16, 8), ("demo-96-steps", 96, 16)]:
        results = json.loads((ROOT / "docs" / "results" / folder / "results.json").read_text())
        assert {len(r["loss_curve"]) for r in results["runs"]} == {steps}  # the step count the doc names
        assert [r["strategy"] for r in results["runs"]] == ["full", "lora", "freeze bottom 75%"]
        assert f"`--max-steps {steps} --search-steps {search_steps}`" in compare_doc
        assert f"{results['invocation_wall_s']:.0f} s, {results['timing']['total_over_training']:.1f}×" in compare_doc
        scores = [f"{100 * r['exact_match_mean']:.1f}%" for r in results["runs"]]
        adjusted = {(t["a"], t["b"]): t["p_adjusted"] for t in results["verdict"]["tests"] if t["metric"] == "exact_match"}
        if steps == 16:
            assert f"(exact match {', '.join(scores)}: no measurable difference)" in compare_doc
            assert min(adjusted.values()) >= 0.05
        else:
            assert "full fine-tuning scores {}, LoRA {} and `freeze bottom 75%` {}".format(*scores) in compare_doc
            # the freeze plan measurably behind both, full and LoRA not yet separable
            assert adjusted[("full", "freeze bottom 75%")] < 0.05 and adjusted[("lora", "freeze bottom 75%")] < 0.05
            assert adjusted[("full", "lora")] >= 0.05
