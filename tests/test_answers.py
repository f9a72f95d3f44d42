"""Exact match counts what the user asked for, or says why not: fewer held-out answers than
--eval-generate, or answers longer than --max-new-tokens, which no generation can reach."""

import json

import pytest

from freezetune.cli.commands import main
from freezetune.errors import FreezetuneError
from freezetune.training.answers import out_of_reach

from helpers import train_argv
from test_compare import compare_options


def said(capsys) -> list[str]:
    printed = capsys.readouterr()
    return [line for line in (printed.out + printed.err).splitlines()
            if line.startswith("notice:") and ("exact match" in line or "answers" in line)]


def test_fewer_held_out_answers_than_eval_generate_asks_for_are_said(tiny_chat_model_dir, order_data, tmp_path, capsys):
    # the eval file holds 4 examples: exact match over 4 when 6 were asked for, which it scored silently
    assert main(train_argv(tiny_chat_model_dir, order_data, tmp_path / "six", "--max-steps", "1", eval_generate=6)) == 0
    assert said(capsys) == ["notice: exact match is scored on the 4 held-out examples with an answer, fewer than "
                            "--eval-generate 6 asks for"]
    assert json.loads((tmp_path / "six" / "eval.json").read_text())["after"]["exact_match_examples"] == 4
    assert main(train_argv(tiny_chat_model_dir, order_data, tmp_path / "four", "--max-steps", "1", eval_generate=4)) == 0
    assert said(capsys) == []


def test_answers_longer_than_max_new_tokens_are_said_before_training(tiny_chat_model_dir, order_data, tmp_path, capsys):
    # "qty=20; item=mug" is 14 tokens here: cut at 8, no answer could match, and exact match read 0% with no reason
    argv = train_argv(tiny_chat_model_dir, order_data, tmp_path / "cut", "--max-steps", "1", eval_generate=4,
                      max_new_tokens=8)
    assert main(argv) == 0
    assert said(capsys) == ["notice: none of the 4 held-out answers can be matched: each is longer than "
                            "--max-new-tokens 8 tokens; --max-new-tokens 14 fits every answer"]
    assert main(train_argv(tiny_chat_model_dir, order_data, tmp_path / "fit", "--max-steps", "1", eval_generate=4,
                           max_new_tokens=14)) == 0
    assert said(capsys) == []


def test_some_answers_out_of_reach_are_counted():
    assert out_of_reach([3, 12, 5], 10) == ("1 of the 3 held-out answers is longer than --max-new-tokens 10 tokens, so "
                                            "exact match cannot count it as right; --max-new-tokens 12 fits every answer")
    assert out_of_reach([11, 12, 5], 10).startswith("2 of the 3 held-out answers are longer")
    assert out_of_reach([10, 4], 10) is None  # an answer of exactly --max-new-tokens tokens can be generated whole


def test_a_comparison_ranked_by_eval_loss_is_not_refused_for_answers_out_of_reach(tiny_chat_model_dir, order_data,
                                                                                   tmp_path):
    from freezetune.comparison.preflight import validate

    settings = compare_options(tiny_chat_model_dir, order_data, tmp_path / "cmp", eval_generate=2,
                               max_new_tokens=8).settings()
    with pytest.raises(FreezetuneError, match="exact match cannot rank the strategies"):
        validate(settings)  # auto ranks SFT with generated answers by exact match
    validate(settings, "eval_loss")  # the loss ranks; the runs still say which answers cannot match
