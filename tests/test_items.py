"""Per-item records: every run keeps each held-out item's loss (and, where answers are generated,
whether the answer was right) under the item's id, and every seed is scored on the same items,
so that a comparison can pair items and seeds (comparison/inference.py)."""

from __future__ import annotations

import json

import pytest

from freezetune.cli.commands import main

from test_train_cli import train_args


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_keeps_every_items_loss_and_answer_under_its_id(tiny_chat_model_dir, order_data, tmp_path):
    run = tmp_path / "run"
    assert main(train_args(tiny_chat_model_dir, order_data, run, "--max-steps", "2")) == 0
    items = lines(run / "eval-items.jsonl")
    after = json.loads((run / "eval.json").read_text())["after"]
    assert [i["id"] for i in items] == list(range(4))  # the 4 held-out examples, in order
    # the token-weighted mean of the items is the run's eval loss: nothing was lost or counted twice
    assert sum(i["loss_sum"] for i in items) / sum(i["tokens"] for i in items) == pytest.approx(after["eval_loss"], rel=1e-6)
    answers = lines(run / "generations.jsonl")
    assert [a["id"] for a in answers] == [0, 1]  # --eval-generate 2
    assert [items[a["id"]]["correct"] for a in answers] == [a["correct"] for a in answers]
    assert "correct" not in items[2] and "items" not in after  # only what was generated is scored


def test_every_seed_is_scored_on_the_same_held_out_items(tiny_chat_model_dir, order_data, tmp_path, capsys):
    def held_out(seed):
        out = tmp_path / f"seed-{seed}"
        argv = train_args(tiny_chat_model_dir, order_data, out, "--max-steps", "1", "--seed", str(seed))
        at = argv.index("--eval-data")
        assert main(argv[:at] + argv[at + 2:]) == 0  # no --eval-data: 5% of --data is held out
        return [a["prompt"] for a in lines(out / "generations.jsonl")]

    assert held_out(0) == held_out(1)
    assert "the same for every seed" in capsys.readouterr().err
