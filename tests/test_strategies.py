"""A comparison's strategies as the user writes them: full, LoRA with its words, advise, plans and
schedules, each ending in an optional lr=X; and the one-line errors for what does not parse."""

import pytest

from freezetune.comparison.strategies import parse_strategy
from freezetune.errors import FreezetuneError


def test_parse_strategy():
    assert parse_strategy("full").plan == "train all" and parse_strategy("full").lr is None
    lora = parse_strategy("lora r=16 alpha=32 targets=q_proj,v_proj")
    assert lora.lora == {"lora_r": 16, "lora_alpha": 32, "lora_targets": "q_proj,v_proj"}
    assert parse_strategy("freeze bottom 75%; train mlp@layers 20-29").kind == "plan"
    assert parse_strategy("freeze bottom 75%").slug == "freeze-bottom-75"
    fixed = parse_strategy("freeze bottom 75% lr=3e-4")
    assert (fixed.plan, fixed.lr, fixed.name) == ("freeze bottom 75%", 3e-4, "freeze bottom 75% lr=3e-4")
    assert parse_strategy("lora r=4 lr=1e-3").lora == {"lora_r": 4} and parse_strategy("full lr=1e-5").lr == 1e-5
    with pytest.raises(FreezetuneError, match="expected r=N, alpha=N or targets=a,b after 'lora', not 'rank=4'"):
        parse_strategy("lora rank=4")
    with pytest.raises(FreezetuneError, match="lr must be a positive number, not 'fast'"):
        parse_strategy("full lr=fast")
    # no adapter to train: every search run failed on "matches no parameter", then "every strategy failed"
    with pytest.raises(FreezetuneError, match=r"^--strategy 'lora r=0': r must be at least 1, not 0$"):
        parse_strategy("lora r=0")
    # a word given twice: one of the two values was dropped without a word
    for text, key in (("lora r=4 r=8", "r"), ("lora targets=q_proj targets=v_proj", "targets"),
                      ("advise budget=1GiB budget=2GiB", "budget")):
        with pytest.raises(FreezetuneError, match=rf"^--strategy '{text}': {key} is given twice$"):
            parse_strategy(text)
