"""`freezetune advise`: evidence per block, candidates with memory and step estimates, a pick that
respects the budget, and one-line errors where no advice can be given."""

import json
import re
from pathlib import Path

import pytest
import torch

from freezetune.advice.advisor import gradient_scores, pick
from freezetune.advice.candidates import Candidate, predicted_step_ratio
from freezetune.cli.commands import main
from freezetune.config.fields import parse_size
from freezetune.errors import FreezetuneError
from freezetune.plans.anatomy import find_anatomy
from freezetune.plans.language import FreezePlan
from freezetune.plans.resolution import resolve

from conftest import build_tiny


def test_advise_without_data_finds_the_block_whose_spectrum_holds_signal(tiny_chat_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    # random weights are noise (no singular value above the edge); a strong rank-2 component in block 2 is signal
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".layers.2." in name and param.dim() == 2:
                u, v = torch.randn(param.shape[0], 2), torch.randn(2, param.shape[1])
                param.add_(u @ v * param.std() * 3)
    model.save_pretrained(tmp_path / "signal")
    AutoTokenizer.from_pretrained(tiny_chat_model_dir).save_pretrained(tmp_path / "signal")
    assert main(["advise", str(tmp_path / "signal"), "--json", "--seq-len", "64", "--memory-budget", "1GiB"]) == 0
    info = json.loads(capsys.readouterr().out)
    scores = [e["snr_score"] for e in info["evidence"]]
    assert [e["index"] for e in info["evidence"]] == [0, 1, 2, 3] and scores.index(max(scores)) == 2
    assert scores[2] > 10 * max(scores[:2] + scores[3:]) and all(e["gradient_score"] is None for e in info["evidence"])
    fitting = [c for c in info["candidates"] if c["memory_estimate_bytes"] <= info["memory_budget_bytes"]]
    chosen = next(c for c in info["candidates"] if c["plan"] == info["plan"])
    assert chosen in fitting and chosen["score"] == max(c["score"] for c in fitting) and chosen["score"] > 0.9
    assert "layers 2" in chosen["plan"] or chosen["plan"] == "train top 2"
    assert {"train top 1", "train mlp@top 1", "train attn@top 1", "train top 2"} <= {c["plan"] for c in info["candidates"]}
    assert all(0 < c["predicted_step_ratio"] < 1 and 0 <= c["score"] <= 1 for c in info["candidates"])
    assert "weight spectra (no data)" in info["reason"] and "the memory budget of 1.0 GiB" in info["reason"]


def test_advise_with_data_probes_gradients_without_moving_a_weight(tiny_chat_model_dir, order_data, capsys):
    from transformers import AutoModelForCausalLM

    from freezetune.training.accelerator import make_accelerator

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    for name, param in model.named_parameters():
        param.requires_grad_(".layers.3." in name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    from freezetune.data.examples import sft_examples
    from freezetune.data.files import read_records

    from conftest import build_tokenizer

    examples = sft_examples(read_records(str(order_data[0])), build_tokenizer(), 64).examples
    scores = gradient_scores(model, find_anatomy(model), examples, 4, 0, make_accelerator("fp32", None, order_data[0].parent))
    assert len(scores) == 4 and all(s > 0 for s in scores)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) and param.grad is None
        assert param.requires_grad == (".layers.3." in name)  # the plan the model had is restored
    assert main(["advise", str(tiny_chat_model_dir), "--data", str(order_data[0]), "--json", "--seq-len", "64"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert all(e["gradient_score"] > 0 for e in info["evidence"]) and "gradients on the data" in info["reason"]


def test_the_step_ratio_model_orders_plans_by_their_backward_work():
    anatomy = find_anatomy(build_tiny("llama"))
    ratio = {text: predicted_step_ratio(resolve(FreezePlan.parse(text), anatomy))
             for text in ("train all", "train top 1", "train top 2", "train mlp@top 1", "train layers 0")}
    assert ratio["train all"] == pytest.approx(1.0)
    assert ratio["train mlp@top 1"] < ratio["train top 1"] < ratio["train top 2"] < ratio["train layers 0"] < 1.0


def test_the_pick_respects_the_budget_and_says_when_nothing_fits(tiny_chat_model_dir, capsys):
    found = [Candidate("a", 1, 100, 0.4, 0.2), Candidate("b", 2, 300, 0.6, 0.7), Candidate("c", 3, 200, 0.5, 0.7)]
    assert pick(found, 250).plan == "c" and pick(found, 1000).plan == "c" and pick(found, 150).plan == "a"
    with pytest.raises(FreezetuneError, match="no candidate within the memory budget .* trains a block with evidence"):
        pick([Candidate("d", 1, 100, 0.4, 0.0), Candidate("e", 1, 900, 0.9, 1.0)], 500)
    assert main(["advise", str(tiny_chat_model_dir), "--memory-budget", "1KiB"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "Loading weights" not in line]
    assert len(err) == 1 and "no candidate plan fits the memory budget of 1.0 KiB; the smallest" in err[0]
    assert re.search(r"needs about (.*); give a --memory-budget of \1 or more$", err[0])
    assert main(["advise", str(tiny_chat_model_dir), "--memory-budget", "lots"]) == 2
    assert "--memory-budget 'lots': expected a size such as 8GiB" in capsys.readouterr().err


def test_sizes_parse_with_binary_and_decimal_units():
    assert parse_size("8GiB", "--x") == 8 * 2**30 and parse_size("512 MiB", "--x") == 512 * 2**20
    assert parse_size("2e9", "--x") == 2_000_000_000 and parse_size("1.5GB", "--x") == 1_500_000_000


def test_compare_runs_the_advised_plan_as_one_more_strategy(tiny_chat_model_dir, order_data, tmp_path, capsys):
    from freezetune.comparison.strategies import parse_strategy

    assert parse_strategy("advise budget=8GiB").budget == 8 * 2**30 and parse_strategy("advise").advise
    with pytest.raises(FreezetuneError, match="expected budget=SIZE .* or pilot=STEPS"):
        parse_strategy("advise memory=8GiB")
    assert parse_strategy("advise pilot=none").pilot is None and parse_strategy("advise pilot=2min").pilot == (None, 120.0)
    assert parse_strategy("advise").pilot == (80, None)
    out = tmp_path / "cmp"
    assert main(["compare", "--model", str(tiny_chat_model_dir), "--data", str(order_data[0]), "--eval-data",
                 str(order_data[1]), "--max-steps", "2", "--batch-size", "4", "--seq-len", "64", "--eval-generate", "0",
                 "--seeds", "1", "--lr-plan", "1e-3", "--strategy", "advise budget=1GiB", "--strategy", "freeze bottom 50%",
                 "--out", str(out)]) == 0
    advised = json.loads((out / "results.json").read_text())["runs"][0]
    name, _, plan = advised["strategy"].partition(" → ")
    assert name == "advise budget=1GiB" and advised["status"] == "finished"
    manifest = json.loads((Path(advised["run_dir"]) / "manifest.json").read_text())
    assert manifest["config"]["plan"] == plan and plan.startswith("train ")
    # the pilots ran on the comparison's data, and their cost is kept apart from training
    advice = json.loads((out / "advice.json").read_text())["advise budget=1GiB"]
    assert advice["plan"] == plan and plan in advice["pilot_frontier"] and len(advice["pilots"]) >= 2
    assert advice["pilot_rate"] == 1e-3 or advice["pilot_rate_search"]
    timing = json.loads((out / "results.json").read_text())["timing"]
    assert timing["advice"] == pytest.approx(advice["seconds"], abs=0.01) and timing["advice"] > 0
    seconds = timing["advice"]  # two digits under 10 s, whole seconds above
    shown = f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.2g}"
    assert f"advice {shown} s" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["compare", "--model", str(tiny_chat_model_dir), "--data", str(order_data[0]), "--eval-data",
                 str(order_data[1]), "--max-steps", "2", "--batch-size", "4", "--seq-len", "64", "--eval-generate", "0",
                 "--seeds", "1", "--lr-plan", "1e-3", "--strategy", "advise budget=1GiB", "--strategy", "freeze bottom 50%",
                 "--out", str(out)]) == 0
    assert f"advise budget=1GiB: advised earlier ({out / 'advice.json'}), '{plan}'" in capsys.readouterr().err


def test_candidates_span_the_whole_depth_and_the_budget_says_what_it_excluded():
    from freezetune.advice.candidates import candidate_plans, candidates
    from freezetune.plans.anatomy import find_anatomy

    from conftest import build_tiny

    # 8 blocks, evidence concentrated at the bottom: the windows and the bottom-and-top plans reach it
    texts = candidate_plans(8, [8, 7, 1, 1, 1, 1, 1, 1])
    assert {"train layers 0", "train layers 3", "train layers 0-1", "train layers 3-4", "train layers 0,7",
            "train top 2; train norm; train head", "train layers 0-1,6-7", "train layers 0-3", "train layers 2-5"} <= set(texts)
    # the best-evidenced blocks are written as a plan would write them, in ranges
    assert "train layers 0-2,7" in candidate_plans(8, [8, 7, 6, 1, 1, 1, 1, 5])
    anatomy = find_anatomy(build_tiny("llama"))  # 4 blocks
    evidence = [5.0, 1.0, 1.0, 1.0]
    found = candidates(anatomy, evidence, 64, 2, "float32")
    assert len({c.plan for c in found}) == len(found) and all(c.blocks >= 1 for c in found)
    by_plan = {c.plan: c for c in found}
    # a window at the bottom holds the evidence but its backward runs the whole stack: it costs more than the top
    assert by_plan["train layers 0"].score == 0.625 and by_plan["train layers 0"].blocks == 1
    assert by_plan["train layers 0"].memory_estimate_bytes > by_plan["train top 1"].memory_estimate_bytes
    assert by_plan["train layers 0"].predicted_step_ratio > by_plan["train top 1"].predicted_step_ratio
    budget = by_plan["train top 1"].memory_estimate_bytes  # the top block fits, the bottom one does not
    assert pick([c for c in found if c.blocks == 1], budget).plan == "train top 1"


def test_a_model_of_one_block_has_no_layers_to_choose_between(tmp_path, capsys):
    from conftest import ARCHITECTURES, build_tokenizer

    config_cls, model_cls, kwargs = ARCHITECTURES["llama"]
    tokenizer = build_tokenizer()
    model_cls(config_cls(**dict(kwargs, num_hidden_layers=1, vocab_size=len(tokenizer)))).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert main(["advise", str(tmp_path), "--no-pilot"]) == 2
    assert capsys.readouterr().err.strip().endswith("the model has 1 block: there are no layers to choose between")  # not "1 block(s)"


def test_a_default_budget_that_nothing_fits_is_said_to_be_the_default(tmp_path, order_data, capsys):
    # "raise --memory-budget", to a user who had given none
    from conftest import ARCHITECTURES, build_tokenizer

    config_cls, model_cls, kwargs = ARCHITECTURES["llama"]
    build_tokenizer().save_pretrained(tmp_path)
    # a large vocabulary's logits outweigh every block: one block's plan needs more than half of full fine-tuning's
    model_cls(config_cls(**dict(kwargs, vocab_size=20000))).save_pretrained(tmp_path)
    assert main(["advise", str(tmp_path), "--data", str(order_data[0]), "--no-pilot", "--seq-len", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no candidate plan fits" in err and "MiB (no memory budget given: half of full fine-tuning's estimate); the smallest" in err
    assert re.search(r"needs about (.*); give a --memory-budget of \1 or more$", err)


def test_weights_whose_spectra_are_all_noise_give_no_evidence_and_say_data_would(tmp_path, capsys):
    from conftest import ARCHITECTURES, build_tokenizer

    config_cls, model_cls, kwargs = ARCHITECTURES["llama"]
    tokenizer = build_tokenizer()
    model = model_cls(config_cls(**dict(kwargs, vocab_size=len(tokenizer))))
    with torch.no_grad():  # flat spectra: every singular value 1, below the noise edge std * (sqrt(m) + sqrt(n))
        for name, weight in model.named_parameters():
            if ".layers." in name and weight.dim() == 2:
                torch.nn.init.orthogonal_(weight)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert main(["advise", str(tmp_path), "--seq-len", "64", "--no-pilot"]) == 2
    assert capsys.readouterr().err.strip().endswith(  # it named only "no gradient reached them", with no data given
        "no evidence: every block scored 0 (no 2-d weights, or spectra all noise, as random weights have: give --data)")
