"""Preference data for DPO: records as TRL accepts them, rendered to chosen/rejected token pairs that share
the prompt, with the loss on the final answer only; the built-in preference task; bad records in one line."""

import json
import random

import pytest

from freezetune.data.examples import IGNORE
from freezetune.data.files import Record
from freezetune.data.preferences import LINE, near_miss, preference_examples, preference_task
from freezetune.errors import FreezetuneError

from conftest import build_tokenizer


@pytest.mark.parametrize("chat", [True, False])
def test_a_pair_shares_its_prompt_and_carries_the_loss_on_the_answer_only(chat):
    tokenizer = build_tokenizer(chat_template=chat)
    record = Record({"prompt": "send three red mugs", "chosen": "qty=3", "rejected": "qty=30"}, "prefs.jsonl:1")
    pair = preference_examples([record], tokenizer, 64).pairs[0]
    prompt = pair.chosen.prompt_ids
    assert pair.rejected.prompt_ids == prompt and pair.chosen.input_ids[: len(prompt)] == prompt
    for example, answer in ((pair.chosen, "qty=3"), (pair.rejected, "qty=30")):
        assert example.labels[: len(prompt)] == [IGNORE] * len(prompt)
        learned = [t for t in example.labels if t != IGNORE]
        assert learned == example.input_ids[len(prompt):] and answer in tokenizer.decode(learned)
    assert pair.where == "prefs.jsonl:1"


def test_conversational_records_keep_earlier_assistant_turns_as_context():
    tokenizer = build_tokenizer()
    prompt = [{"role": "user", "content": "send mugs"}, {"role": "assistant", "content": "how many?"},
              {"role": "user", "content": "three"}]
    record = Record({"prompt": prompt, "chosen": [{"role": "assistant", "content": "qty=3"}],
                     "rejected": [{"role": "assistant", "content": "qty=2"}]}, "prefs.jsonl:4")
    pair = preference_examples([record], tokenizer, 128).pairs[0]
    learned = tokenizer.decode([t for t in pair.chosen.labels if t != IGNORE])
    assert "qty=3" in learned and "how many" not in learned  # the earlier turn is context, not preference


def test_a_system_field_is_the_system_prompt_of_both_sides():
    tokenizer = build_tokenizer()
    record = Record({"system": "You dispatch orders.", "prompt": "send three", "chosen": "qty=3", "rejected": "qty=30"},
                    "prefs.jsonl:5")
    pair = preference_examples([record], tokenizer, 128).pairs[0]
    for example in (pair.chosen, pair.rejected):  # it was dropped without a word
        assert tokenizer.decode(example.prompt_ids).startswith("<|im_start|>system\nYou dispatch orders.<|im_end|>")
        assert "dispatch" not in tokenizer.decode([t for t in example.labels if t != IGNORE])  # context, not preference


@pytest.mark.parametrize("fields, message", [
    ({"prompt": "p", "chosen": "c"}, "prefs.jsonl:2: a preference record needs 'prompt', 'chosen' and 'rejected'; 'rejected' is missing (found chosen, prompt)"),
    # columns other records have read as None here: not fields this record gives
    ({"prompt": "p", "chosen": "c", "rejected": None, "system": None},
     "prefs.jsonl:2: a preference record needs 'prompt', 'chosen' and 'rejected'; 'rejected' is missing (found chosen, prompt)"),
    ({"prompt": "p", "chosen": "c", "rejected": 3}, "prefs.jsonl:2: field 'rejected' must be a string or a non-empty list of messages, got int"),
    ({"prompt": "p", "chosen": " ", "rejected": "r"}, "prefs.jsonl:2: field 'chosen' is empty"),
    ({"prompt": "p", "chosen": "c", "rejected": []},
     "prefs.jsonl:2: field 'rejected' must be a string or a non-empty list of messages, got an empty list"),
    ({"prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "user", "content": "c"}], "rejected": "r"},
     "prefs.jsonl:2: field 'chosen' must end with an assistant message"),
    # an empty answer as a message is refused as an empty string is, naming the user's own field
    ({"prompt": "p", "chosen": "c", "rejected": [{"role": "assistant", "content": ""}]},
     "prefs.jsonl:2: field 'rejected[0].content' is empty"),
    ({"prompt": [{"role": "robot", "content": "p"}], "chosen": "c", "rejected": "r"},
     "prefs.jsonl:2: field 'prompt[0]' must be {role: system|user|assistant, content: string}"),
])
def test_a_bad_record_names_its_file_line_and_field(fields, message):
    with pytest.raises(FreezetuneError) as caught:
        preference_examples([Record(fields, "prefs.jsonl:2")], build_tokenizer(), 64)
    assert str(caught.value) == f"1 malformed preference record: {message}"


def test_a_pair_that_loses_an_answer_to_seq_len_is_skipped_and_said():
    tokenizer = build_tokenizer()
    long = Record({"prompt": "send mugs " * 40, "chosen": "qty=3", "rejected": "qty=2"}, "prefs.jsonl:1")
    short = Record({"prompt": "send mugs", "chosen": "qty=3", "rejected": "qty=2"}, "prefs.jsonl:2")
    # at 24 tokens the short pair was cut before its answers differ, and trained as if it held a preference
    data = preference_examples([long, short], tokenizer, 28)
    assert [p.where for p in data.pairs] == ["prefs.jsonl:2"] and data.dropped == 1 and "skipped" in data.notes[0]
    with pytest.raises(FreezetuneError, match="no usable preference pair"):
        preference_examples([long], tokenizer, 28)


def test_a_pair_with_the_same_answer_twice_is_skipped_and_said(tmp_path):
    """Its loss is log 2 whatever the weights, and its reward accuracy was rounding noise (100% on a tie)."""
    tokenizer = build_tokenizer()
    same = Record({"prompt": "send mugs", "chosen": "qty=3", "rejected": "qty=3"}, "prefs.jsonl:1")
    good = Record({"prompt": "send mugs", "chosen": "qty=3", "rejected": "qty=2"}, "prefs.jsonl:2")
    # different answers that --seq-len cuts before they differ are the same pair too
    cut = Record({"prompt": "send mugs", "chosen": "qty=3 " + "a" * 40, "rejected": "qty=3 " + "a" * 40 + "b"},
                 "prefs.jsonl:3")
    data = preference_examples([same, good, cut], tokenizer, 32)
    assert [p.where for p in data.pairs] == ["prefs.jsonl:2"] and data.identical == 2
    assert "2 preference pairs with the same chosen and rejected answer (as written, or once --seq-len 32 cut them) " \
           "skipped: no preference to learn" in data.notes
    with pytest.raises(FreezetuneError, match="^no usable preference pair: 1 has the same chosen and rejected answer$"):
        preference_examples([same], tokenizer, 32)
    # one pair held out is one pair, not "1 pairs"
    from freezetune.data.loading import load_data

    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(12)))
    notes = load_data(tokenizer, "dpo", str(path), None, 64)[2]
    assert "eval: no --eval-data, holding out 1 pair of --data (the same for every seed)" in notes


def test_the_built_in_preference_task_pairs_the_right_line_with_one_field_wrong():
    train, held = preference_task()
    assert len(train) == 600 and len(held) == 200 and train == preference_task()[0]
    for record in train + held:
        right, wrong = (LINE.fullmatch(record.fields[k]).groups() for k in ("chosen", "rejected"))
        differ = [i for i in range(5) if right[i] != wrong[i]]
        assert len(differ) == 1 and differ[0] != 2  # exactly one field, never the item
    # the near misses are the ones a careless reader makes: the colour taken back, the decoy city
    rng = random.Random(0)
    prompt = "Uma needs 14 pink, no wait, purple pillows sent from our Busan shop to Quito, arriving Friday."
    misses = {near_miss("14 x purple pillow to Quito on Friday", prompt, rng) for _ in range(60)}
    assert "14 x pink pillow to Quito on Friday" in misses and "14 x purple pillow to Busan on Friday" in misses
