"""The statistics and the verdict over strategy rows: intervals, separation, dominance, and the
plain answer when the data cannot tell strategies apart."""

import pytest
import torch

from freezetune.comparison.results import strategy_row
from freezetune.comparison.statistics import (
    items_needed,
    mean_std,
    proportions_differ,
    seeds_differ,
    seeds_needed,
    wilson,
)
from freezetune.comparison.verdict import _ratio, decide, recommend


def test_wilson_intervals_match_the_textbook_values():
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(20, 20)[1] == 1.0 and wilson(20, 20)[0] == pytest.approx(0.8389, abs=1e-4)
    assert wilson(0, 0) is None


def test_separation_needs_a_difference_beyond_the_spread():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(1.41421, abs=1e-5)) and mean_std([2.0]) == (2.0, None)
    assert seeds_differ([0.50, 0.51, 0.49], [0.80, 0.81, 0.79])
    assert not seeds_differ([0.50, 0.60], [0.52, 0.58])  # the gap is inside the seeds' spread
    assert not seeds_differ([0.5], [0.9])  # one seed: no spread is known, so nothing is separated
    assert proportions_differ(180, 200, 100, 200) and not proportions_differ(19, 20, 18, 20)
    assert not proportions_differ(0, 200, 0, 200)
    assert items_needed(0.5, 0.6) == pytest.approx(385, abs=2) and items_needed(0.5, 0.5) is None
    assert seeds_needed([0.50, 0.60], [0.54, 0.62]) > 2 and seeds_needed([0.5], [0.6]) is None


def _run(strategy, eval_loss, kl, hits=None, total=100, seed=0, memory=2**30, status="finished"):
    return {"strategy": strategy, "kind": "plan", "run_dir": f"/runs/{strategy}/seed-{seed}", "seed": seed, "lr": 1e-4,
            "status": status, "reason": None if status == "finished" else "boom", "layer_drift": None, "loss_curve": [],
            "eval_curve": [], "trainable_params": 10, "total_params": 100, "peak_memory_bytes": memory, "step_time_s": 1.0,
            "tokens_per_s": 100.0, "wall_time_s": 10.0, "checkpoint_bytes": 10, "eval_loss": eval_loss,
            "eval_perplexity": 1.0, "exact_match": None if hits is None else hits / total,
            "exact_match_examples": None if hits is None else total, "retain_ppl": 2.0, "retain_ppl_delta": 0.1,
            "retain_kl": kl}


def _strategy(name, losses, kls, hits=None, **kw):
    runs = [_run(name, loss, kl, None if hits is None else hits[i], seed=i, **kw) for i, (loss, kl) in enumerate(zip(losses, kls))]
    return strategy_row(runs, {"chosen": 1e-4, "results": [{"lr": 1e-4, "val_loss": 0.5}], "train_s": 3.0})


def test_a_strategy_row_pools_its_seeds():
    row = _strategy("a", [0.5, 0.7], [0.01, 0.03], hits=[60, 70])
    assert row["eval_loss"] == row["eval_loss_mean"] == pytest.approx(0.6) and row["eval_loss_std"] == pytest.approx(0.1414, abs=1e-4)
    assert row["exact_match"] == 0.65 and row["exact_match_examples"] == 200 and row["exact_match_ci"] == list(wilson(130, 200))
    assert row["seeds"] == [0, 1] and row["lr"] == 1e-4 and row["lr_searched"] and row["search_time_s"] == 3.0
    failed = strategy_row([_run("b", 0.5, 0.1), _run("b", None, None, seed=1, status="failed")], None)
    assert failed["status"] == "failed" and failed["reason"] == "boom"


def test_runs_the_data_cannot_tell_apart_get_no_measurable_difference():
    rows = [_strategy("full", [0.50, 0.60], [0.02, 0.03], hits=[60, 64]),
            _strategy("lora", [0.52, 0.58], [0.021, 0.028], hits=[62, 61])]
    verdict = decide(rows)
    assert verdict["sentence"].startswith("No measurable difference: full, lora cannot be told apart on eval loss")
    assert verdict["quality_metric"] == "eval_loss"  # exact match separates nothing, so it does not rank
    assert verdict["indistinguishable"] == [["full", "lora"]] and set(verdict["frontier"]) == {"full", "lora"}
    assert verdict["hints"] and "would likely separate" in verdict["hints"][0]
    assert verdict["dominated"] == []


def test_a_clear_winner_dominates_and_a_tradeoff_stays_on_the_frontier():
    rows = [_strategy("full", [0.30, 0.31, 0.29], [0.050, 0.052, 0.048], hits=[80, 82, 81]),
            _strategy("lora", [0.60, 0.61, 0.59], [0.050, 0.051, 0.049], hits=[40, 42, 41]),
            _strategy("freeze", [0.45, 0.46, 0.44], [0.010, 0.011, 0.009], hits=[60, 62, 61])]
    verdict = decide(rows)
    assert verdict["quality_metric"] == "exact_match"  # it separates these runs, so it ranks them
    assert verdict["frontier"] == ["full", "freeze"] and verdict["dominated"] == [{"strategy": "lora", "by": "full"}]
    assert verdict["best"] == "full" and verdict["gentlest"] == "freeze" and verdict["indistinguishable"] == []
    assert verdict["sentence"].startswith("Best exact match: full (exact match 81% [")
    lines = recommend(rows, verdict)
    assert any(line.startswith("lora is dominated by full") for line in lines)


def test_one_seed_never_separates_losses_and_failures_are_named():
    rows = [_strategy("a", [0.3], [0.01]), _strategy("b", [0.9], [0.2]),
            strategy_row([_run("c", None, None, status="failed")], None)]
    verdict = decide(rows)
    assert verdict["sentence"].startswith("No measurable difference: a, b") and "Failed: c (boom)" in verdict["sentence"]
    assert decide([strategy_row([_run("c", None, None, status="failed")], None)])["frontier"] == []


def test_report_ratios_keep_two_significant_digits():
    assert [_ratio(0.034, 1), _ratio(3, 2), _ratio(12.3, 1), _ratio(None, 1)] == ["0.034×", "1.5×", "12×", "n/a"]


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


def test_alike_in_a_chain_is_not_alike_as_a_whole():
    # a ~ b and b ~ c on every test, but a's KL is measurably below c's: not "no measurable difference"
    rows = [_strategy("a", [0.50, 0.52], [0.100, 0.102]),
            _strategy("b", [0.51, 0.53], [0.100, 0.300]),
            _strategy("c", [0.50, 0.52], [0.300, 0.302])]
    verdict = decide(rows)
    assert not verdict["sentence"].startswith("No measurable difference")
    assert verdict["dominated"] == [{"strategy": "c", "by": "a"}]
    assert all(not {"a", "c"} <= set(group) for group in verdict["indistinguishable"])
