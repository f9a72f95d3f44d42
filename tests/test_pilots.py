"""advise's pilot runs: successive halving over the strongest candidates, scored per item on validation loss
and KL from the base, the weights put back after every pilot, and a pick on the last round's frontier."""

import json

import pytest
import torch

from freezetune.advice.candidates import Candidate
from freezetune.advice.pilot_choice import better_half, differs, frontier, pick_pilot
from freezetune.advice.pilots import PilotBudget, choose_pilots, first_steps, rounds
from freezetune.cli.commands import main
from freezetune.options.advise import parse_budget


def _pilot(plan, val, kl, memory, val_items=None, kl_items=None):
    return {"plan": plan, "val_loss": val, "kl": kl, "memory_estimate_bytes": memory,
            "val_items": val_items or [val] * 8, "kl_items": kl_items or [kl] * 8}


def _noisy(mean, spread=1.0, turn=0):
    """Eight per-item values around ``mean``; another ``turn`` pairs them with other items' deviations,
    so that two pilots' paired differences carry noise."""
    offsets = [-0.7, 0.4, -0.2, 0.9, -0.5, 0.1, 0.3, -0.3]
    return [mean + spread * d for d in offsets[turn:] + offsets[:turn]]


def test_the_rounds_halve_until_two_remain_and_spend_the_budget():
    assert rounds(6) == [6, 3, 2] and rounds(8) == [8, 4, 2] and rounds(2) == [2] and rounds(1) == [1]
    # 6x4 + 3x8 + 2x16 = 80 steps
    assert first_steps(PilotBudget(steps=80), [6, 3, 2], 1.0) == 4
    assert first_steps(PilotBudget(seconds=60), [6, 3, 2], 0.5) == 6  # 120 predicted steps / 20
    assert first_steps(PilotBudget(steps=3), [6, 3, 2], 1.0) == 1  # never 0


def test_budgets_parse_as_steps_or_time_and_bad_ones_are_one_line_errors():
    assert parse_budget("80", "--pilot") == (80, None) and parse_budget("40 steps", "--pilot") == (40, None)
    assert parse_budget("5min", "--pilot") == (None, 300.0) and parse_budget("90s", "--pilot") == (None, 90.0)
    from freezetune.errors import FreezetuneError

    for bad in ("lots", "0", "2.5", "-3min"):
        with pytest.raises(FreezetuneError, match="--pilot"):
            parse_budget(bad, "--pilot")


def test_the_first_round_spans_the_families_before_the_next_best_of_one():
    found = [Candidate("top 4", 4, 100, 0.5, 0.6, 4, "top"), Candidate("top 3", 3, 90, 0.4, 0.5, 3, "top"),
             Candidate("mlp 4", 2, 80, 0.3, 0.3, 4, "mlp"), Candidate("bottom", 4, 500, 0.9, 0.9, 4, "bottom"),
             Candidate("none", 1, 10, 0.1, 0.0, 1, "attn")]
    assert [c.plan for c in choose_pilots(found, 200, 2)] == ["top 4", "mlp 4"]  # over budget, no evidence: out
    assert [c.plan for c in choose_pilots(found, 200, 5)] == ["top 4", "mlp 4", "top 3"]


def test_halving_keeps_the_pilots_nearest_the_frontier_or_the_best_losses_for_quality():
    pilots = [_pilot("a", 1.0, 0.5, 1), _pilot("b", 1.2, 0.1, 1), _pilot("c", 1.1, 0.6, 1), _pilot("d", 2.0, 0.05, 1)]
    assert [p["plan"] for p in frontier(pilots)] == ["a", "b", "d"]
    assert [p["plan"] for p in better_half(pilots, 2, "balanced")] == ["a", "b"]
    assert [p["plan"] for p in better_half(pilots, 2, "quality")] == ["a", "c"]


def test_the_pick_follows_the_preference_and_counts_noise():
    base = {"val_loss": 3.0, "val_items": _noisy(3.0, 0.1)}
    best = _pilot("best", 1.0, 0.5, 300, _noisy(1.0, 0.1), _noisy(0.5, 0.01))
    close = _pilot("close", 1.02, 0.2, 200, _noisy(1.02, 0.1, 1), _noisy(0.2, 0.01, 1))  # within noise of best on loss
    gentle = _pilot("gentle", 2.0, 0.05, 100, _noisy(2.0, 0.1, 2), _noisy(0.05, 0.01, 2))  # learned less, forgot least
    final = [best, close, gentle]
    assert not differs(best["val_items"], close["val_items"]) and differs(best["val_items"], gentle["val_items"])
    assert pick_pilot(final, base, "quality") == (close, None)  # as good as the best, cheaper
    assert pick_pilot(final, base, "balanced") == (close, None)  # within noise of the best loss, less KL
    assert pick_pilot(final, base, "forgetting") == (gentle, None)  # measurably learned, the least KL


def test_pilots_that_cannot_be_separated_say_so_and_the_cheapest_is_picked():
    base = {"val_loss": 3.0, "val_items": _noisy(3.0)}
    a = _pilot("a", 1.0, 0.10, 300, _noisy(1.0), _noisy(0.10, 0.5))
    b = _pilot("b", 1.05, 0.12, 100, _noisy(1.05, 1.0, 3), _noisy(0.12, 0.5, 3))
    chosen, said = pick_pilot([a, b], base, "balanced")
    assert chosen is b and "could not separate the 2 candidates" in said and "cheapest" in said


def test_advise_runs_pilots_on_the_data_and_puts_every_weight_back(tiny_chat_model_dir, tmp_path):
    from freezetune.advice.advisor import advise
    from freezetune.advice.pilot_data import hold_out, pilot_data
    from freezetune.advice.pilots import PilotRequest, score
    from freezetune.data.loading import load_data
    from freezetune.models.loading import load_model

    rows = [{"prompt": f"send {i} red mugs to Alice", "completion": f"qty={i}; item=mug"} for i in range(40)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_model(str(tiny_chat_model_dir))
    for name, param in loaded.model.named_parameters():
        param.requires_grad_(".layers.3." in name)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    train = load_data(loaded.tokenizer, "sft", str(data), seq_len=64)[0]
    kept, held = hold_out(train, 8)
    assert len(held) == 8 and len(kept) == train.units - 8
    request = PilotRequest(pilot_data(loaded, kept, held, None, 4, 64), PilotBudget(steps=20), 1e-2, 4, "balanced")
    assert score(loaded.model, request.data, torch.device("cpu"))["kl"] == pytest.approx(0.0, abs=1e-6)
    info = advise(loaded, train.examples, 2**30, 64, 4, pilots=request)
    for name, param in loaded.model.named_parameters():
        assert torch.equal(param, before[name]) and param.grad is None
        assert param.requires_grad == (".layers.3." in name)
    pilots = info["pilots"]
    sizes = [sum(p["round"] == r for p in pilots) for r in (1, 2, 3)]
    assert sizes == [4, 2, 0] and {p["steps"] for p in pilots if p["round"] == 2} == {2 * pilots[0]["steps"]}
    assert sum(p["steps"] for p in pilots) <= 20
    for p in pilots:
        assert {"plan", "steps", "val_loss", "kl", "memory_estimate_bytes", "step_time_s"} <= set(p)
        assert p["kl"] > 0 and p["step_time_s"] > 0
    last = [p for p in pilots if p["round"] == 2]
    assert info["plan"] in info["pilot_frontier"] and set(info["pilot_frontier"]) <= {p["plan"] for p in last}
    assert min(p["val_loss"] for p in last) < info["pilot_base"]["val_loss"]  # at lr 1e-2 the pilots learn
    assert info["pilot_rate"] == 1e-2 and info["pilot_rate_search"] == [] and info["evidence_plan"]
    assert "Picked on the pilots' frontier for balanced" in info["reason"] and "From the evidence alone" in info["reason"]


def test_the_command_prints_pilots_and_refuses_contradictions(tiny_chat_model_dir, tmp_path, capsys):
    rows = [{"prompt": f"send {i} red mugs to Alice", "completion": f"qty={i}; item=mug"} for i in range(24)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["advise", str(tiny_chat_model_dir), "--data", str(data), "--seq-len", "64", "--memory-budget", "1GiB"]
    assert main(argv + ["--pilot", "12", "--prefer", "quality", "--pilot-candidates", "3"]) == 0
    out = capsys.readouterr().out
    assert "pilots: successive halving, lr" in out and "searched over 5e-05, 0.0002, 0.0008" in out
    assert "scored on 5 held-out examples" in out and "pilot frontier (last round):" in out
    assert "Picked on the pilots' frontier for quality" in out
    assert main(argv + ["--no-pilot", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "pilots" not in info and info["plan"] == info["evidence_plan"]
    assert main(argv + ["--pilot", "--no-pilot"]) == 2
    assert "--pilot and --no-pilot contradict each other" in capsys.readouterr().err
    assert main(argv + ["--pilot", "soon"]) == 2
    assert "--pilot 'soon': expected a positive budget" in capsys.readouterr().err
    assert main(argv + ["--validation", "20"]) == 2
    assert "too few to hold out --validation 20" in capsys.readouterr().err
    # what only the pilots read, where none run: taken without a word, it changed nothing
    assert main(argv + ["--no-pilot", "--lr", "1e-3", "--prefer", "quality"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "freezetune advise: error: --lr, --prefer are for the pilot runs, and none run (--no-pilot)")
    assert main(argv + ["--no-pilot", "--prefer", "balanced"]) == 2  # typed, even at its default value
    assert "--prefer is for the pilot runs, and none run (--no-pilot)" in capsys.readouterr().err
    assert main(argv + ["--pilot-candidates", "0"]) == 2
    assert "--pilot-candidates must be at least 1, got 0" in capsys.readouterr().err
    assert main(["advise", str(tiny_chat_model_dir), "--memory-budget", "1GiB", "--retain", str(data)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "freezetune advise: error: --retain is for the pilot runs, and none run (without --data, only --pilot runs them)")


def test_the_kl_through_the_target_positions_and_the_prefix_cache_is_the_plain_one(tiny_chat_model_dir):
    from transformers import AutoModelForCausalLM

    from freezetune.comparison.forgetting import base_distributions, forgetting
    from freezetune.data.examples import sft_examples
    from freezetune.data.files import Record
    from freezetune.plans.anatomy import find_anatomy
    from freezetune.plans.language import FreezePlan
    from freezetune.plans.resolution import apply_plan, resolve
    from freezetune.training.prefix import PrefixRunner
    from freezetune.training.prefix_cache import PrefixCache

    from conftest import build_tokenizer

    tokenizer = build_tokenizer()
    records = [Record({"prompt": f"tell me about {i} mugs", "completion": f"mugs {i} are red " * (i % 3 + 1)}, f"r{i}")
               for i in range(7)]
    examples = sft_examples(records, tokenizer, 64).examples
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    tuned = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if ".layers.3." in name:
                param.add_(0.05 * torch.randn_like(param))
    reference = base_distributions(base, examples, 3, 0, "cpu")
    fast_cache = PrefixCache()
    resolved = resolve(FreezePlan.parse("train top 1"), find_anatomy(tuned))
    apply_plan(tuned, resolved)
    runner = PrefixRunner(tuned, resolved, cache=fast_cache).install()
    runner.probe("cpu")
    ranks = []  # the head's output: (targets, vocabulary) when only the target positions are projected
    hook = tuned.lm_head.register_forward_hook(lambda module, args, out: ranks.append(out.dim()))
    fast = [forgetting(tuned, examples, reference, 3, 0, "cpu", runner=runner) for _ in range(2)]  # fills, replays
    runner.remove()
    assert len(fast_cache.keys()) == len(examples)
    tuned.lm_head.forward = tuned.lm_head.forward  # an instance patch: the target-only head stays out
    assert set(ranks) == {2}
    ranks.clear()
    plain = forgetting(tuned, examples, reference, 3, 0, "cpu")
    assert set(ranks) == {3}
    hook.remove()
    for measured in fast:
        assert measured["retain_kl"] > 0 and measured["retain_kl"] == pytest.approx(plain["retain_kl"], rel=1e-5)
        assert measured["retain_ppl"] == pytest.approx(plain["retain_ppl"], rel=1e-6)
        assert [i["kl_sum"] for i in measured["retain_kl_items"]] == pytest.approx([i["kl_sum"] for i in plain["retain_kl_items"]], rel=1e-5)


def test_a_pilot_that_diverges_is_recorded_and_a_search_where_every_rate_diverges_is_one_line(tiny_chat_model_dir, tmp_path,
                                                                                               monkeypatch):
    from freezetune.advice import pilots as pilot_module
    from freezetune.advice.advisor import advise
    from freezetune.advice.pilot_data import hold_out, pilot_data
    from freezetune.advice.pilots import PilotRequest
    from freezetune.data.loading import load_data
    from freezetune.errors import FreezetuneError
    from freezetune.models.loading import load_model
    from freezetune.training.step import NonFiniteLoss

    rows = [{"prompt": f"send {i} red mugs to Alice", "completion": f"qty={i}; item=mug"} for i in range(40)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_model(str(tiny_chat_model_dir))
    train = load_data(loaded.tokenizer, "sft", str(data), seq_len=64)[0]
    kept, held = hold_out(train, 8)
    real, seen = pilot_module.train_pilot, []

    def diverging(model, anatomy, plan, steps, rate, *rest):
        seen.extend([] if plan in seen else [plan])
        if rate > 5e-4 or (len(seen) > 1 and plan == seen[1]):  # the fastest rate; the second candidate
            raise NonFiniteLoss("the loss is nan")
        return real(model, anatomy, plan, steps, rate, *rest)

    monkeypatch.setattr(pilot_module, "train_pilot", diverging)
    request = PilotRequest(pilot_data(loaded, kept, held, None, 4, 64), PilotBudget(steps=20), None, 4, "balanced")
    info = advise(loaded, train.examples, 2**30, 64, 4, pilots=request)
    assert [s["val_loss"] is None for s in info["pilot_rate_search"]] == [False, False, True]  # 5e-5, 2e-4, 8e-4
    assert info["pilot_rate"] in (5e-5, 2e-4)
    failed = [p for p in info["pilots"] if p.get("failed")]
    assert failed and all(p["plan"] == seen[1] and p["round"] == 1 and "diverged" in p["failed"] for p in failed)
    assert info["plan"] != seen[1] and seen[1] not in info["pilot_frontier"]
    assert all(p["plan"] != seen[1] for p in info["pilots"] if p["round"] == 2)  # not trained further
    monkeypatch.setattr(pilot_module, "train_pilot", lambda *args: (_ for _ in ()).throw(NonFiniteLoss("the loss is inf")))
    with pytest.raises(FreezetuneError, match="every rate of the pilots' search .* diverged on"):
        advise(loaded, train.examples, 2**30, 64, 4, pilots=request)
