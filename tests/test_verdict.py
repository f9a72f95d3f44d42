"""The verdict over strategy rows: paired tests on the same items and seeds, Holm across pairs, the
metric fixed before the results, dominance that needs evidence on one axis and a margin on the other,
and the plain answer when the data cannot tell strategies apart."""

import json

import numpy as np
import pytest
import torch

from freezetune.comparison.results import strategy_row
from freezetune.comparison.statistics import mean_std, wilson
from freezetune.comparison.verdict import decide
from freezetune.comparison.wording import ratio, recommend
from freezetune.errors import FreezetuneError
from freezetune.options.commands import parse_margins

ITEMS, TOKENS = 60, 10


def test_wilson_intervals_match_the_textbook_values():
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(20, 20)[1] == 1.0 and wilson(20, 20)[0] == pytest.approx(0.8389, abs=1e-4)
    assert wilson(0, 0) is None
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(1.41421, abs=1e-5)) and mean_std([2.0]) == (2.0, None)


def _run(root, strategy, seed, loss, kl, correct=None, memory=2**30, status="finished", ids=None):
    """A run folder with its per-item files, and its row as results.read_run gives it."""
    run_dir = root / strategy / f"seed-{seed}"
    run_dir.mkdir(parents=True)
    ids = list(range(ITEMS)) if ids is None else ids
    items = [{"id": i, "loss_sum": float(loss[k]) * TOKENS, "tokens": TOKENS} for k, i in enumerate(ids)]
    for k, item in enumerate(items):
        if correct is not None:
            item["correct"] = bool(correct[k])
    (run_dir / "eval-items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (run_dir / "forgetting.json").write_text(json.dumps(
        {"retain_kl_items": [{"id": d, "kl_sum": float(v) * TOKENS, "tokens": TOKENS} for d, v in enumerate(kl)]}))
    return {"strategy": strategy, "kind": "plan", "run_dir": str(run_dir), "seed": seed, "lr": 1e-4, "status": status,
            "reason": None if status == "finished" else "boom", "layer_drift": None, "loss_curve": [], "eval_curve": [],
            "trainable_params": 10, "total_params": 100, "peak_memory_bytes": memory, "step_time_s": 1.0,
            "tokens_per_s": 100.0, "wall_time_s": 10.0, "checkpoint_bytes": 10, "eval_loss": float(np.mean(loss)),
            "eval_perplexity": 1.0, "exact_match": None if correct is None else float(np.mean(correct)),
            "exact_match_examples": None if correct is None else len(correct), "retain_ppl": 2.0, "retain_ppl_delta": 0.1,
            "retain_kl": float(np.mean(kl))}


def _strategy(root, rng, name, loss, kl, accuracy=None, seeds=3, noise=0.05, **kw):
    """A strategy whose seeds score the same items: shared item difficulty (seeded by the test), its own
    per-seed shift, noise per item."""
    difficulty = np.random.default_rng(99).normal(0, 0.3, ITEMS)
    runs = []
    for seed in range(seeds):
        shift = rng.normal(0, noise / 3)
        losses = loss + difficulty + shift + rng.normal(0, noise, ITEMS)
        kls = np.clip(kl + rng.normal(0, kl * 0.05 + 1e-6, ITEMS), 0, None)
        correct = None if accuracy is None else rng.random(ITEMS) < np.clip(accuracy - difficulty / 3, 0, 1)
        runs.append(_run(root, name, seed, losses, kls, correct, **kw))
    return strategy_row(runs, {"chosen": 1e-4, "results": [{"lr": 1e-4, "val_loss": 0.5}], "train_s": 3.0})


def test_a_strategy_row_averages_seeds_over_the_same_items(tmp_path):
    rng = np.random.default_rng(0)
    row = _strategy(tmp_path, rng, "a", 0.6, 0.02, accuracy=0.6, seeds=2)
    assert row["exact_match_items"] == ITEMS  # distinct items, never answers x seeds
    assert row["exact_match"] == pytest.approx(np.mean([s["exact_match"] for s in row["per_seed"]]))
    assert row["seeds"] == [0, 1] and row["lr"] == 1e-4 and row["lr_searched"] and row["search_time_s"] == 3.0
    failed = strategy_row([_run(tmp_path, "b", 0, [0.5] * ITEMS, [0.1] * ITEMS),
                           _run(tmp_path, "b", 1, [0.5] * ITEMS, [0.1] * ITEMS, status="failed")], None)
    assert failed["status"] == "failed" and failed["reason"] == "boom"


def test_runs_the_data_cannot_tell_apart_get_no_measurable_difference(tmp_path):
    rng = np.random.default_rng(1)
    rows = [_strategy(tmp_path, rng, "full", 0.50, 0.020, noise=0.3), _strategy(tmp_path, rng, "lora", 0.50, 0.020, noise=0.3)]
    verdict = decide(rows, "eval_loss", "test")
    assert verdict["sentence"].startswith("No measurable difference: full, lora cannot be told apart on eval loss")
    assert verdict["indistinguishable"] == [["full", "lora"]] and set(verdict["frontier"]) == {"full", "lora"}
    assert verdict["dominated"] == []
    test = verdict["tests"][0]
    assert set(test) == {"a", "b", "axis", "metric", "estimate", "ci", "p", "p_adjusted", "method"}


def test_a_clear_winner_dominates_and_a_tradeoff_stays_on_the_frontier(tmp_path):
    rng = np.random.default_rng(2)
    rows = [_strategy(tmp_path, rng, "full", 0.30, 0.050, accuracy=0.8),
            _strategy(tmp_path, rng, "lora", 0.60, 0.050, accuracy=0.4),
            _strategy(tmp_path, rng, "freeze", 0.45, 0.010, accuracy=0.6)]
    verdict = decide(rows, "exact_match", "the task has answers to check")
    assert verdict["frontier"] == ["full", "freeze"] and verdict["dominated"] == [{"strategy": "lora", "by": "full"}]
    assert verdict["best"] == "full" and verdict["gentlest"] == "freeze" and verdict["indistinguishable"] == []
    assert verdict["sentence"].startswith("Best exact match: full (exact match ")
    assert "Holm-corrected over 3 pairs" in verdict["sentence"] and "chosen before training" in verdict["sentence"]
    assert len(verdict["tests"]) == 6 and all(t["p_adjusted"] >= t["p"] for t in verdict["tests"])
    lines = recommend(rows, verdict)
    assert any(line.startswith("lora is dominated by full") for line in lines)


def test_the_metric_is_the_one_chosen_not_the_one_that_separates(tmp_path):
    rng = np.random.default_rng(3)
    # exact match favours a, eval loss favours b: asked for eval loss, eval loss ranks, whatever separates more
    rows = [_strategy(tmp_path, rng, "a", 0.6, 0.02, accuracy=0.9), _strategy(tmp_path, rng, "b", 0.3, 0.02, accuracy=0.2)]
    verdict = decide(rows, "eval_loss", "asked for with --metric")
    assert verdict["metric"] == "eval_loss" and verdict["best"] == "b" and verdict["sentence"].startswith("Best eval loss: b")
    assert verdict["metric_reason"] == "asked for with --metric" and {t["metric"] for t in verdict["tests"]} == {"eval_loss", "retain_kl"}
    assert decide(rows, "exact_match", "the task has answers to check")["best"] == "a"


def test_better_on_one_axis_is_not_dominance_without_evidence_on_the_other(tmp_path):
    rng = np.random.default_rng(4)
    # a forgets far less; its quality is noisy, so "not worse" on eval loss is not shown: no dominance
    rows = [_strategy(tmp_path, rng, "a", 0.50, 0.010, noise=0.6, seeds=2), _strategy(tmp_path, rng, "b", 0.50, 0.100, noise=0.6, seeds=2)]
    verdict = decide(rows, "eval_loss", "test")
    assert verdict["dominated"] == [] and set(verdict["frontier"]) == {"a", "b"}
    # a user who accepts a far larger loss as "not worse" (--margin eval_loss=500%) gets the dominance from the same runs
    wide = decide(rows, "eval_loss", "test", parse_margins(["eval_loss=500%"]))
    assert wide["dominated"] == [{"strategy": "b", "by": "a"}]
    assert wide["margins"]["eval_loss"] == pytest.approx(5 * np.mean([r["eval_loss"] for r in rows]))
    assert wide["margins"]["retain_kl"] == verdict["margins"]["retain_kl"]  # the other axis keeps its default
    # the same with quality measured tightly: now a dominates
    rows = [_strategy(tmp_path / "tight", rng, "a", 0.50, 0.010, noise=0.002),
            _strategy(tmp_path / "tight", rng, "b", 0.50, 0.100, noise=0.002)]
    assert decide(rows, "eval_loss", "test")["dominated"] == [{"strategy": "b", "by": "a"}]


def test_runs_told_apart_on_forgetting_alone_have_no_best_quality(tmp_path):
    rng = np.random.default_rng(7)
    # the same loss, measured tightly; b forgets ten times more. It was "Best eval loss: a", as if a scored better
    rows = [_strategy(tmp_path, rng, "a", 0.50, 0.010, noise=0.002), _strategy(tmp_path, rng, "b", 0.50, 0.100, noise=0.002)]
    verdict = decide(rows, "eval_loss", "test")
    assert verdict["dominated"] == [{"strategy": "b", "by": "a"}] and not verdict["quality_separated"]
    assert verdict["sentence"].startswith("No measurable difference in eval loss: a, b cannot be told apart on it; "
                                          "least forgetting: a (KL ")
    assert "dominated: b (by a). Ranked by eval loss" in verdict["sentence"]
    assert "Best quality: none measurably; eval loss cannot tell the strategies apart." in recommend(rows, verdict)
    # without a forgetting measure the other axis is peak memory, and the sentence says so
    rows = [_strategy(tmp_path / "memory", rng, name, 0.50, 0.010, noise=0.002, memory=memory)
            for name, memory in (("a", 2**30), ("b", 2**32))]
    for run_dir in (tmp_path / "memory").glob("*/seed-*"):
        (run_dir / "forgetting.json").unlink()
    assert "; least memory: a (1.00 GiB peak); dominated: b (by a)" in decide(rows, "eval_loss", "test")["sentence"]


def test_one_seed_never_separates_and_failures_are_named(tmp_path):
    rng = np.random.default_rng(5)
    rows = [_strategy(tmp_path, rng, "a", 0.3, 0.01, seeds=1), _strategy(tmp_path, rng, "b", 0.9, 0.2, seeds=1),
            strategy_row([_run(tmp_path, "c", 0, [0.5] * ITEMS, [0.1] * ITEMS, status="failed")], None)]
    verdict = decide(rows, "eval_loss", "test")
    assert verdict["sentence"].startswith("No measurable difference: a, b") and "Failed: c (boom)" in verdict["sentence"]
    assert decide([rows[2]], "eval_loss", "test")["frontier"] == []
    # one run finished: no "Best quality: none measurably; eval loss cannot tell the strategies apart" beside it
    alone = decide([rows[0], rows[2]], "eval_loss", "test")
    lines = recommend([rows[0], rows[2]], alone)
    assert lines[0].startswith("Only a finished; there is nothing to compare it with.")
    assert lines[1].startswith("On the frontier of eval loss") and not any(line.startswith("Best") for line in lines)


def test_seeds_scored_on_different_items_are_refused(tmp_path):
    from freezetune.errors import FreezetuneError

    runs = [_run(tmp_path, "a", 0, [0.5] * ITEMS, [0.1] * ITEMS), _run(tmp_path, "a", 1, [0.5] * ITEMS, [0.1] * ITEMS,
                                                                        ids=list(range(1, ITEMS + 1)))]
    with pytest.raises(FreezetuneError, match="scored on different items"):
        decide([strategy_row(runs, None)], "eval_loss", "test")


def test_report_ratios_keep_two_significant_digits():
    assert [ratio(0.034, 1), ratio(3, 2), ratio(12.3, 1), ratio(None, 1)] == ["0.034×", "1.5×", "12×", "n/a"]


def test_the_stored_top_k_kl_is_exact_with_every_token_and_a_lower_bound_with_fewer():
    from freezetune.comparison.forgetting import base_distributions, forgetting
    from freezetune.data.examples import Example

    torch.manual_seed(0)

    class Toy(torch.nn.Module):  # a bigram table as a "language model"
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(20, 20)

        def forward(self, input_ids, attention_mask=None, use_cache=False):
            return type("Out", (), {"logits": self.table(input_ids)})()

    base, tuned = Toy(), Toy()
    examples = [Example([1, 5, 7, 3, 9], [-100, -100, 7, 3, 9], "toy 1"),
                Example([2, 4, 6], [-100, 4, 6], "toy 2")]
    exact_reference = base_distributions(base, examples, 2, 0, "cpu", top_k=20)
    exact = forgetting(tuned, examples, exact_reference, 2, 0, "cpu")
    logits_b, logits_t = base.table.weight[[5, 7, 3, 2, 4]].detach(), tuned.table.weight[[5, 7, 3, 2, 4]].detach()
    p_b = torch.log_softmax(logits_b, -1)
    direct = (p_b.exp() * (p_b - torch.log_softmax(logits_t, -1))).sum(-1).mean()
    assert exact["retain_kl"] == pytest.approx(float(direct), rel=1e-5) and exact["retain_tokens"] == 5
    coarse = forgetting(tuned, examples, base_distributions(base, examples, 2, 0, "cpu", top_k=3), 2, 0, "cpu")
    assert 0 < coarse["retain_kl"] <= exact["retain_kl"] and coarse["retain_ppl"] == pytest.approx(exact["retain_ppl"])




def test_runs_without_per_item_records_are_not_called_alike(tmp_path):
    rng = np.random.default_rng(6)
    rows = [_strategy(tmp_path, rng, "a", 0.3, 0.01), _strategy(tmp_path, rng, "b", 0.9, 0.2)]
    for run_dir in rows[1]["run_dirs"]:
        (tmp_path / run_dir / "eval-items.jsonl").unlink()  # as an older freezetune left it
    verdict = decide(rows, "eval_loss", "test")
    assert verdict["sentence"].startswith("No test on eval loss was possible") and "No measurable" not in verdict["sentence"]


def test_margins_are_parsed_with_their_units_and_bad_ones_named():
    assert parse_margins(["eval_loss=2%", "exact_match=3%", "retain_kl=0.05"]) == {
        "eval_loss": ("relative", 0.02), "exact_match": ("absolute", 0.03), "retain_kl": ("absolute", 0.05)}
    for bad, said in (("loss=1%", "METRIC one of eval_loss"), ("eval_loss=lots", "a number or a percentage"),
                      ("retain_kl=-1", "0 or more")):
        with pytest.raises(FreezetuneError, match=said):
            parse_margins([bad])
