"""Config files as users write them: one value for a list option, a plan listed as rules, numbers
in exponent form, and one-line errors naming the file, line and option."""

import re

import pytest

from freezetune.comparison.settings import CompareOptions
from freezetune.config.run import TrainConfig
from freezetune.errors import FreezetuneError
from freezetune.options.schema import read_config_file


def test_a_config_file_takes_one_value_for_a_list_and_names_the_options_an_unknown_key_begins(tmp_path):
    config = tmp_path / "compare.yaml"
    config.write_text("strategy: freeze bottom 50%\nretain_tasks: builtin\n")  # what `--strategy X` gives
    assert read_config_file(CompareOptions, config) == {"strategy": ["freeze bottom 50%"], "retain_tasks": ["builtin"]}
    for key, hint in (("lr", "'lr_full', 'lr_lora', 'lr_plan' or 'lr_grid'"), ("max", "'max_steps' or 'max_new_tokens'"),
                      ("max_stepz", "'max_steps'"), ("cutoff_len", "'seq_len'"), ("output_dir", "'out'"), ("freeze_trainable_layers", "'strategy'"),
                      ("learning_rate", "'lr_full', 'lr_lora', 'lr_plan' or 'lr_grid'")):
        config.write_text(f"seeds: 2\n{key}: 1\n")
        with pytest.raises(FreezetuneError, match=rf"^config file .*compare.yaml line 2: unknown option '{key}' \(did you mean {hint}\?\)$"):
            read_config_file(CompareOptions, config)


def test_a_config_file_lists_a_plan_as_a_plan_file_does_and_refuses_items_of_another_kind(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("max_steps: 2\nplan:\n  - freeze all\n  - train: top 2\n")  # was "'plan' must be str"
    assert read_config_file(TrainConfig, config) == {"max_steps": 2, "plan": "freeze all; train top 2"}
    config.write_text("plan:\n  - freeze all; train top 2\n")
    with pytest.raises(FreezetuneError, match=r"^config file .*run.yaml line 1: 'plan': rule 1 'freeze all; train top 2' holds more"):
        read_config_file(TrainConfig, config)
    # a list option's items: a list or a mapping in a strategy list was an AttributeError traceback
    for text, said in (("strategy:\n  - full\n  - [freeze all, train top 2]\n", "'strategy' item 2 must be str, got ['freeze all', 'train top 2']"),
                       ("retain_tasks:\n  - {name: hellaswag}\n", "'retain_tasks' item 1 must be str, got {'name': 'hellaswag'}")):
        config.write_text(text)
        with pytest.raises(FreezetuneError, match=rf"^config file .*run.yaml line 1: {re.escape(said)}$"):
            read_config_file(CompareOptions, config)


def test_a_rate_written_1e_3_in_a_config_file_is_the_number(tmp_path):
    """PyYAML reads 1e-3 (no dot) as a string: 'lr' must be float, got '1e-3' refused what users write."""
    config = tmp_path / "compare.yaml"
    config.write_text("lr_full: 1e-3\nlr_plan: 5E+1\nlr_lora: '-2.5e-4'\nmax_steps: 4\n")
    assert read_config_file(CompareOptions, config) == {"lr_full": 1e-3, "lr_plan": 50.0, "lr_lora": -2.5e-4,
                                                         "max_steps": 4}
    for text, said in (("lr_full: 1e999\n", "'lr_full' must be a finite number, got inf"),
                       ("lr_full: one\n", "'lr_full' must be float, got 'one'"),
                       ("max_steps: 1e3\n", "'max_steps' must be int, got '1e3'")):  # a count is no float
        config.write_text(text)
        with pytest.raises(FreezetuneError, match=rf"^config file .*compare.yaml line 1: {re.escape(said)}$"):
            read_config_file(CompareOptions, config)
