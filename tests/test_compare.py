"""`freezetune compare` and `report` on a tiny chat model: runs, forgetting, report files, bad input."""

import json
from pathlib import Path

import pytest

from freezetune.cli.commands import main
from freezetune.comparison.settings import CompareOptions
from freezetune.comparison.strategies import parse_strategy

RATES = ["--lr-full", "1e-4", "--lr-lora", "1e-3", "--lr-plan", "1e-3"]  # given rates: no search, one worker per strategy


def compare_args(model_dir, order_data, out, *strategies, retain=None, search=False, seeds=1):
    args = ["compare", "--model", str(model_dir), "--data", str(order_data[0]), "--eval-data", str(order_data[1]),
            "--max-steps", "4", "--batch-size", "4", "--seq-len", "64", "--eval-generate", "2", "--out", str(out),
            "--seeds", str(seeds), "--validation", "4", "--search-steps", "2"]
    for strategy in strategies:
        args += ["--strategy", strategy]
    return args + (["--retain", str(retain)] if retain else []) + ([] if search else RATES)


def compare_options(model_dir, order_data, out, **overrides):
    """CompareOptions of a small two-strategy comparison at given rates, for the library's run_comparison."""
    values = dict(model=str(model_dir), data=str(order_data[0]), eval_data=str(order_data[1]), strategy=["full", "freeze bottom 50%"],
                  max_steps=6, batch_size=4, seq_len=64, eval_generate=0, out=str(out), seeds=1, lr_full=1e-4, lr_plan=1e-3)
    return CompareOptions(**{**values, **overrides})


def test_compare_searches_rates_repeats_seeds_and_writes_the_report(tiny_chat_model_dir, order_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    strategies = ("full", "lora r=4 alpha=8", "freeze bottom 50%")
    assert main(compare_args(tiny_chat_model_dir, order_data, out, *strategies, search=True, seeds=2)) == 0
    stdout, err = capsys.readouterr()
    assert "On the frontier of" in stdout and f"report: {out / 'report.html'}" in stdout
    results = json.loads((out / "results.json").read_text())
    runs = {r["strategy"]: r for r in results["runs"]}
    assert list(runs) == list(strategies)
    for row in runs.values():
        assert row["status"] == "finished" and row["seeds"] == [0, 1]
        for key in ("trainable_params", "peak_memory_bytes", "step_time_s", "tokens_per_s", "eval_loss", "eval_loss_mean",
                    "eval_loss_std", "retain_kl_mean", "retain_kl_std", "retain_ppl_delta_mean", "exact_match_mean",
                    "run_dir", "checkpoint_bytes", "wall_time_s", "search_time_s"):
            assert row[key] is not None, key
        assert row["retain_kl"] > 0 and row["eval_loss"] == row["eval_loss_mean"]  # every strategy moved from the base
        # the search: three rates around the kind's default (and any extension past an edge), each scored; the best trains
        search = json.loads((Path(row["run_dir"]).parent / "search.json").read_text())
        assert sorted(p["lr"] for p in row["lr_search"]) == search["grid"] and len(search["grid"]) == 3 + len(search["extended"])
        assert all(p["val_loss"] is not None for p in row["lr_search"]) and (not search["at_grid_edge"] or len(search["extended"]) == 2)
        assert row["lr"] == min(row["lr_search"], key=lambda p: p["val_loss"])["lr"] == search["chosen"]
        for point in row["lr_search"]:
            search_run = json.loads((Path(row["run_dir"]).parent / "search" / f"lr-{point['lr']:g}" / "manifest.json").read_text())["config"]
            assert search_run["max_steps"] == 2 and search_run["validation"] == 4 and search_run["eval_generate"] == 0
        for seed, run_dir in zip((0, 1), row["run_dirs"]):
            config = json.loads((Path(run_dir) / "manifest.json").read_text())["config"]
            assert config["seed"] == seed and config["lr"] == row["lr"] and config["validation"] == 0
        lo, hi = row["exact_match_ci"]
        assert lo <= row["exact_match"] <= hi and row["exact_match_items"] == 2 and row["seeds_count"] == 2  # items, not x seeds
    assert {p["lr"] for p in runs["full"]["lr_search"]} >= {1.25e-5, 5e-5, 2e-4}
    assert {p["lr"] for p in runs["freeze bottom 50%"]["lr_search"]} >= {5e-5, 2e-4, 8e-4}
    assert runs["full"]["trainable_params"] > runs["freeze bottom 50%"]["trainable_params"] > runs["lora r=4 alpha=8"]["trainable_params"]
    assert runs["full"]["checkpoint_bytes"] > runs["freeze bottom 50%"]["checkpoint_bytes"]
    # freezing the bottom half leaves the bottom blocks exactly where they were
    drift = runs["freeze bottom 50%"]["layer_drift"]
    assert drift["layer 0"] == drift["layer 1"] == drift["embeddings"] == 0.0 and drift["layer 3"] > 0
    assert all(v > 0 for k, v in runs["lora r=4 alpha=8"]["layer_drift"].items() if k.startswith("layer"))
    verdict = results["verdict"]
    assert set(verdict) >= {"frontier", "indistinguishable", "best", "gentlest", "sentence", "tests", "metric", "metric_reason"}
    assert verdict["metric"] == "exact_match" and len(verdict["tests"]) == 2 * 3  # 3 pairs on each of 2 axes
    assert "quality metric: exact match (the task has answers to check" in err
    assert verdict["best"] in runs and set(verdict["frontier"]) <= set(runs) and stdout.startswith(verdict["sentence"])
    assert results["base"]["strategy"] == "base model" and results["base"]["retain_kl"] == 0.0
    assert results["provenance"]["versions"]["peft"] and results["invocation_wall_s"] > 0  # where the numbers came from
    # where the time went: every run of every strategy timed, every phase measured, the rest accounted for
    timing = results["timing"]
    assert timing["runs"] == timing["runs_timed"] == sum(len(r["lr_search"]) + 2 for r in runs.values())
    assert all(timing[phase] > 0 for phase in ("training", "search", "evaluation", "generation", "retain", "loading", "base"))
    assert timing["complete"] and timing["total"] == round(results["invocation_wall_s"], 3) and timing["other"] >= 0
    assert timing["total_over_training"] == pytest.approx(timing["total"] / (timing["training"] + timing["search"]), rel=0.01)
    from freezetune.comparison.timing import timing_line

    line = timing_line(timing)
    assert "x the training and search steps): training " in line and line in (out / "report.md").read_text()
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("strategy,kind,status") and len(csv_lines) == 5
    report = (out / "report.md").read_text()
    assert f"on {results['provenance']['cpu']} (" in report.splitlines()[2]
    for name in ("loss_curves", "quality_vs_forgetting", "lr_search", "time_and_memory", "layer_drift"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
        assert f"![{name}](plots/{name}.png)" in report
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 5
    # means carry their spread, exact match its interval and the number of answers behind it
    assert " ± " in report and "% [" in report and " of 2 items × 2 seeds |" in report and "(searched: " in report
    for row in runs.values():
        for run_dir in row["run_dirs"]:
            answers = [json.loads(line) for line in (Path(run_dir) / "generations.jsonl").read_text().splitlines()]
            assert len(answers) == 2 and {"prompt", "reference", "output", "correct"} <= set(answers[0])
            # a reported run keeps its trained tensors, metrics and answers, not its optimizer checkpoints
            assert not (Path(run_dir) / "checkpoints").exists()

    # a second invocation keeps finished runs and searches instead of redoing them
    assert main(compare_args(tiny_chat_model_dir, order_data, out, *strategies, search=True, seeds=2)) == 0
    assert capsys.readouterr().err.count("finished earlier, kept") == 3


def test_a_failing_strategy_is_reported_and_the_others_finish(tiny_chat_model_dir, order_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    # a rate that blows the loss up fails in its run (a LoRA target that matches nothing is refused before any)
    assert main(compare_args(tiny_chat_model_dir, order_data, out, "full lr=1e12", "freeze bottom 50%")) == 0
    runs = {r["strategy"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    failed = runs["full lr=1e12"]
    assert failed["status"] == "failed" and "the loss is" in failed["reason"]
    assert runs["freeze bottom 50%"]["status"] == "finished"
    assert "Failed: full lr=1e12 (" in (out / "report.md").read_text()
    timing = json.loads((out / "results.json").read_text())["timing"]
    assert timing["training"] > 0 and timing["runs_timed"] == timing["runs"] - 1  # the failed run has no timing


def test_bad_comparisons_stop_before_training(tiny_chat_model_dir, order_data, tmp_path, capsys, retain_text):
    empty_retain = tmp_path / "empty.jsonl"
    empty_retain.write_text('{"prompt": "no text field", "completion": "x"}\n')
    out = tmp_path / "cmp"
    args = compare_args(tiny_chat_model_dir, order_data, out, "full")
    cases = [
        (compare_args(tiny_chat_model_dir, order_data, out, "full", "freeze sideways"), "plan rule 1 'freeze sideways'"),
        (compare_args(tiny_chat_model_dir, order_data, out, "freeze layers 40"), "--strategy 'freeze layers 40': plan rule 1"),
        (compare_args(tiny_chat_model_dir, order_data, out, "lora rank=4"), "expected r=N"),
        (compare_args(tiny_chat_model_dir, order_data, out, "full", "full"), "two strategies share the run folder name 'full'"),
        # two spellings of one plan: the same runs twice, then a verdict that they are not separable
        (compare_args(tiny_chat_model_dir, order_data, out, "freeze bottom 50%", "freeze bottom 2"),
         "--strategy 'freeze bottom 2' trains the same 20 tensors as 'freeze bottom 50%', so the comparison would run "
         "one strategy twice"),
        (compare_args(tiny_chat_model_dir, order_data, out, "lora", "lora r=8 alpha=16 targets=all-linear"),
         "--strategy 'lora r=8 alpha=16 targets=all-linear' trains the same adapters as 'lora', so the comparison"),
        (compare_args(tiny_chat_model_dir, order_data, out, "full", retain=empty_retain), "holds no text"),
        (args + ["--objective", "cpt", "--eval-generate", "0", "--max-new-tokens", "9"],
         "--max-new-tokens is for generated answers, and --objective cpt generates none"),
        (args + ["--warmup", "1", "--warmup-ratio", "0.2"], "--warmup-ratio 0.2 has no effect: --warmup 1 sets the warmup"),
        (compare_args(tiny_chat_model_dir, order_data, out, "full", retain=tmp_path / "none.txt"), "--retain"),
        (args + ["--seeds", "0"], "--seeds must be at least 1, got 0"),
        (args + ["--lr-grid", "1,x"], "--lr-grid '1,x': expected comma-separated multiples"),
        (args + ["--lr-grid", "1,1"], "the multiples must be positive and distinct"),
        (args + ["--lr-plan", "-1"], "--lr-plan must be positive"),
        # ranked by answers it would not have: the runs trained, then the report failed on the missing scores
        (args + ["--metric", "exact_match", "--eval-generate", "0"],
         "--metric exact_match checks generated answers, and --eval-generate 0 generates none: give --eval-generate N"),
        # typed where nothing is generated, the answer options are refused first (test_faults.py)
        (args + ["--metric", "exact_match", "--objective", "cpt", "--eval-generate", "0"],
         "--metric exact_match checks generated answers, and --objective cpt has none (its metric is eval loss)"),
        (compare_args(tiny_chat_model_dir, order_data, out, "full", search=True) + ["--validation", "20"],
         "--validation 20 leaves no training example"),
        # every answer is 14 tokens: each run would score 0% and the verdict would rank on nothing
        (args + ["--max-new-tokens", "8"], "exact match cannot rank the strategies: none of the 2 held-out answers can "
         "be matched: each is longer than --max-new-tokens 8 tokens; --max-new-tokens 14 fits every answer, or rank "
         "by --metric eval_loss"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not (out / "runs").exists()  # nothing trained
    # a malformed data file with every rate given: refused before compare.json pins the folder to it
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"\n')
    assert main(compare_args(tiny_chat_model_dir, (broken, order_data[1]), tmp_path / "c2", "full")) == 2
    assert "broken.jsonl line 2: not valid JSON" in capsys.readouterr().err and not (tmp_path / "c2").exists()
    # a folder that holds another comparison is refused
    assert main(compare_args(tiny_chat_model_dir, order_data, out, "freeze bottom 50%", retain=retain_text)) == 0
    other = order_data[0].parent / "other.jsonl"
    other.write_text(order_data[0].read_text().replace("Alice", "Bob"))
    capsys.readouterr()
    assert main(compare_args(tiny_chat_model_dir, (other, order_data[1]), out, "freeze bottom 50%", retain=retain_text)) == 2
    assert "holds a comparison with another data (--data); choose another --out" in capsys.readouterr().err


def test_compare_reads_a_yaml_config_with_a_strategy_list(tiny_chat_model_dir, order_data, tmp_path, capsys):
    config = tmp_path / "compare.yaml"
    config.write_text(
        f"model: {tiny_chat_model_dir}\ndata: {order_data[0]}\neval_data: {order_data[1]}\nmax_steps: 2\n"
        f"batch_size: 4\nseq_len: 64\neval_generate: 0\nseeds: 1\nlr_plan: 0.001\nout: {tmp_path / 'cmp'}\n"
        "strategy:\n  - freeze bottom 50%; train mlp@layers 0-1\n  - lora r=2 lr=1e-3\n"
    )
    assert main(["compare", "--config", str(config), "--max-steps", "3"]) == 0
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert [r["strategy"] for r in results["runs"]] == ["freeze bottom 50%; train mlp@layers 0-1", "lora r=2 lr=1e-3"]
    assert all(r["exact_match"] is None for r in results["runs"])  # eval_generate 0: nothing checked
    assert [r["lr"] for r in results["runs"]] == [1e-3, 1e-3] and not any(r["lr_searched"] for r in results["runs"])
    manifest = json.loads((tmp_path / "cmp" / "runs" / "lora-r-2-lr-1e-3" / "seed-0" / "manifest.json").read_text())
    assert manifest["config"]["max_steps"] == 3 and manifest["config"]["lora_r"] == 2


def test_each_strategy_reports_the_peak_memory_of_its_own_process(tmp_path, order_data):
    """Full fine-tuning first, a freeze plan second: measured in one process the plan's peak could
    not drop below what the full run left mapped; each in its own worker, it shows its own."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from freezetune.comparison.runner import run_comparison

    from conftest import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=2, bos_token_id=1)
    model_dir = tmp_path / "mid-llama"
    LlamaForCausalLM(config).save_pretrained(model_dir)  # 21M parameters: AdamW's state alone is 170 MB
    tokenizer.save_pretrained(model_dir)
    options = compare_options(model_dir, order_data, tmp_path / "cmp", strategy=["full", "freeze bottom 75%"], max_steps=2)
    reached = run_comparison(options.settings(), log=lambda message: None, progress=False)
    peaks = [max(json.loads(line)["peak_memory_bytes"] for line in (run / "metrics.jsonl").read_text().splitlines())
             for run in reached]
    assert peaks[1] < peaks[0] - 150 * 2**20, [p / 2**20 for p in peaks]


def test_each_strategy_is_parsed_once_and_the_checks_use_what_was_parsed(tiny_chat_model_dir, order_data, tmp_path, monkeypatch):
    from freezetune.comparison.preflight import validate
    from freezetune.plans.language import FreezePlan

    parse, texts = FreezePlan.parse.__func__, []
    monkeypatch.setattr(FreezePlan, "parse", classmethod(lambda cls, text: texts.append(text) or parse(cls, text)))
    strategies = ["full", "freeze bottom 50%", "gradual every=2 over freeze bottom 50%"]
    settings = compare_options(tiny_chat_model_dir, order_data, tmp_path / "cmp", strategy=strategies).settings()
    assert sorted(texts) == ["freeze bottom 50%", "freeze bottom 50%", "train all"]  # one parse per strategy
    texts.clear()
    validate(settings)  # resolves every plan and checks every schedule against the model
    assert texts == []


def test_the_seeds_of_a_freeze_plan_share_its_prefix_outputs(tiny_chat_model_dir, order_data, tmp_path, capfd):
    """Every seed of a freeze plan evaluates the same held-out rows through the same frozen blocks: the first
    seed's evaluation leaves their outputs on disk, the second reads them, and its losses are those it computes alone."""
    cache = tmp_path / "cache"
    shared = compare_args(tiny_chat_model_dir, order_data, tmp_path / "both", "freeze bottom 50%", seeds=2)
    assert main(shared + ["--cache-dir", str(cache)]) == 0
    err = capfd.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("prefix cache: disk")]
    assert len(notes) == 2 and "reused" not in notes[0] and notes[1].endswith("(reused from an earlier run)")
    (folder,) = [p.parent for p in (cache / "prefix").glob("*/index.json")]
    index = json.loads((folder / "index.json").read_text())
    assert sorted(k for shard in index["shards"].values() for k in shard["keys"]) == [f"eval:{i}@2" for i in range(4)]
    # the second seed alone, with nothing cached for it: no later run of the plan to read its rows, so no disk cache
    alone = compare_args(tiny_chat_model_dir, order_data, tmp_path / "alone", "freeze bottom 50%", seeds=1)
    assert main(alone + ["--seed", "1", "--cache-dir", str(tmp_path / "empty")]) == 0
    assert "prefix cache: memory" in capfd.readouterr().err and not (tmp_path / "empty" / "prefix").exists()

    def items(out):
        return [json.loads(line) for line in (out / "runs" / "freeze-bottom-50" / "seed-1" / "eval-items.jsonl").read_text().splitlines()]

    replayed, computed = items(tmp_path / "both"), items(tmp_path / "alone")
    assert [i["tokens"] for i in replayed] == [i["tokens"] for i in computed]
    assert [i["loss_sum"] for i in replayed] == pytest.approx([i["loss_sum"] for i in computed], rel=1e-6, abs=1e-6)


def test_options_that_no_run_of_the_comparison_reads_are_said(tiny_chat_model_dir, order_data, tmp_path, capsys):

    options = compare_options(tiny_chat_model_dir, order_data, tmp_path / "cmp", lr_lora=1e-3, search_steps=3,
                              retain_limit=5, lr_grid="0.5,2")
    strategies = [parse_strategy(s) for s in ("full", "freeze bottom 50% lr=2e-3")]
    assert options.unread(strategies) == [
        "notice: --lr-lora 0.001 applies to no strategy: none is LoRA",
        "notice: --lr-plan 0.001 applies to no strategy: none is a freeze plan or schedule without its own lr=",
        "notice: --search-steps 3: every strategy's rate is given, so no rate is searched",
        "notice: --lr-grid 0.5,2: every strategy's rate is given, so no rate is searched",
        "notice: --retain-limit 5 limits the items of --retain-tasks, and none are given"]
    # each read by some run: nothing to say
    options = compare_options(tiny_chat_model_dir, order_data, tmp_path / "cmp", lr_full=None, search_steps=3)
    assert options.unread([parse_strategy(s) for s in ("full", "freeze bottom 50%")]) == []
    # typed at its default, an option was still asked for: the CLI passes what was typed
    options = compare_options(tiny_chat_model_dir, order_data, tmp_path / "cmp")
    assert options.unread([parse_strategy(s) for s in ("full", "freeze bottom 50%")], given={"validation", "retain_limit"}) == [
        "notice: --validation 64: every strategy's rate is given, so no rate is searched",
        "notice: --retain-limit 0 limits the items of --retain-tasks, and none are given"]
    # the command says them before anything trains (compare_args gives all three kinds' rates)
    assert main(compare_args(tiny_chat_model_dir, order_data, tmp_path / "cli", "freeze bottom 50%")) == 0
    printed = capsys.readouterr()
    notices = [line for line in (printed.out + printed.err).splitlines() if line.startswith("notice: --")]
    assert notices == ["notice: --lr-full 0.0001 applies to no strategy: none is full fine-tuning",
                       "notice: --lr-lora 0.001 applies to no strategy: none is LoRA",
                       "notice: --search-steps 2: every strategy's rate is given, so no rate is searched",
                       "notice: --validation 4: every strategy's rate is given, so no rate is searched"]

