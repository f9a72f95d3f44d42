"""The learning-rate search does not stop at its own edge: a best rate at the grid's end extends the grid."""

import json
import math
from pathlib import Path

import pytest

from freezetune.comparison.rate_search import choose_rate
from freezetune.comparison.settings import CompareOptions, CompareSettings
from freezetune.comparison.strategies import parse_strategy
from freezetune.config.run import TrainConfig
from freezetune.errors import FreezetuneError


def search(tmp_path, best_lr: float, extensions: int = 2, grid=(0.25, 1, 4)):
    """Run the plan strategy's search where the validation loss is a parabola in log(lr) around ``best_lr``;
    returns (search.json, the rates the workers trained, in order, and the log)."""
    trained, lines = [], []

    def fake_train(configs, announce):
        pending = [c for c in configs if not (Path(c.out) / "eval.json").is_file()]
        if pending and announce:
            lines.append(announce)
        for config in pending:
            trained.append(config.lr)
            Path(config.out).mkdir(parents=True, exist_ok=True)
            loss = 1 + (math.log(config.lr) - math.log(best_lr)) ** 2
            (Path(config.out) / "eval.json").write_text(json.dumps({"after": {"eval_loss": loss}}))
        return "done" if pending else "kept"

    settings = CompareSettings("m", [parse_strategy("freeze bottom 50%")], tmp_path, TrainConfig(model="m"),
                               {"full": None, "lora": None, "plan": None}, lr_grid=list(grid), search_extensions=extensions)
    chosen = choose_rate(settings, settings.strategies[0], fake_train, lines.append)
    result = json.loads((tmp_path / "runs" / "freeze-bottom-50" / "search.json").read_text())
    assert chosen == result["chosen"]
    return result, trained, "\n".join(lines)


def test_a_best_rate_inside_the_grid_is_chosen_without_extending(tmp_path):
    result, trained, _ = search(tmp_path, best_lr=2e-4)
    assert trained == [5e-5, 2e-4, 8e-4] and result["extended"] == [] and result["chosen"] == 2e-4
    assert not result["at_grid_edge"]


def test_a_best_rate_at_the_top_extends_upward_until_it_is_inside(tmp_path):
    result, trained, log = search(tmp_path, best_lr=3e-3)
    # 8e-4 is the top and best: try 3.2e-3, best again: try 1.28e-2, which is worse, so 3.2e-3 is inside
    assert trained == [5e-5, 2e-4, 8e-4, 3.2e-3, 1.28e-2] and result["extended"] == [3.2e-3, 1.28e-2]
    assert result["chosen"] == 3.2e-3 and not result["at_grid_edge"]
    assert result["grid"] == [5e-5, 2e-4, 8e-4, 3.2e-3, 1.28e-2] and len(result["results"]) == 5
    assert "lr 0.0008 is the highest rate tried; extending the search to 0.0032" in log


def test_a_best_rate_at_the_bottom_extends_downward(tmp_path):
    result, trained, _ = search(tmp_path, best_lr=2e-5)
    assert result["extended"] == [1.25e-5, 3.13e-6] and result["chosen"] == 1.25e-5 and not result["at_grid_edge"]


def test_the_extensions_are_bounded_and_the_log_says_the_edge_remains(tmp_path):
    result, trained, log = search(tmp_path, best_lr=1.0, extensions=1)
    assert result["extended"] == [3.2e-3] and result["chosen"] == 3.2e-3 and result["at_grid_edge"]
    assert "still the highest rate after 1 extension, " in log
    none, _, _ = search(tmp_path / "never", best_lr=1.0, extensions=0)
    assert none["extended"] == [] and none["chosen"] == 8e-4 and none["at_grid_edge"]


def test_a_resumed_search_trains_nothing_again_and_chooses_the_same(tmp_path):
    first, trained, _ = search(tmp_path, best_lr=3e-3)
    again, trained_again, _ = search(tmp_path, best_lr=3e-3)
    assert trained_again == [] and again == first


def test_a_negative_extension_count_is_refused():
    with pytest.raises(FreezetuneError, match="--search-extensions"):
        CompareOptions(model="m", search_extensions=-1).validate()
