"""Data: every file format, each SFT record shape, loss masks, packing, and bad records."""

import json
import re

import pytest

from freezetune.data.examples import IGNORE, cpt_examples, sft_examples, split_holdout
from freezetune.data.files import read_records
from freezetune.errors import FreezetuneError

from conftest import build_tokenizer

TOKENIZER = build_tokenizer()
PLAIN = build_tokenizer(chat_template=False)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def response_text(tokenizer, example):
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE])


def test_every_file_format(tmp_path):
    import datasets

    rows = [{"prompt": "send two mugs", "completion": "qty=2"}, {"prompt": "send one lamp", "completion": "qty=1"}]
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "b.json").write_text(json.dumps(rows))
    (tmp_path / "c.csv").write_text("prompt,completion\nsend two mugs,qty=2\nsend one lamp,qty=1\n")
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for name in ("a.jsonl", "b.json", "c.csv", "d.parquet", "saved"):
        records = read_records(str(tmp_path / name))
        assert [r.fields["completion"] for r in records] == ["qty=2", "qty=1"], name
    (tmp_path / "e.txt").write_text("Raw text for continued pre-training.\n")
    assert read_records(str(tmp_path / "e.txt"))[0].fields == {"text": "Raw text for continued pre-training.\n"}
    assert read_records(str(tmp_path / "a.jsonl"))[1].where.endswith("a.jsonl line 2")
    assert read_records(str(tmp_path / "c.csv"))[1].where.endswith("c.csv line 3")


def test_sft_shapes_put_loss_on_responses_only(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"prompt": "send two mugs", "completion": "qty=2"},
        {"instruction": "extract", "input": "one lamp", "output": "qty=1"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}, {"role": "user", "content": "qty?"},
                      {"role": "assistant", "content": "qty=3"}]},
    ])
    data = sft_examples(read_records(str(path)), TOKENIZER, seq_len=256)
    first, alpaca, chat = data.examples
    assert response_text(TOKENIZER, first) == "qty=2<|im_end|>\n"
    assert "extract\n\none lamp" in TOKENIZER.decode(alpaca.input_ids)
    assert response_text(TOKENIZER, chat) == "hello<|im_end|>\nqty=3<|im_end|>\n"
    assert TOKENIZER.decode(chat.prompt_ids).endswith("qty?<|im_end|>\n<|im_start|>assistant\n")
    assert chat.reference == "qty=3" and chat.prompt_text == "qty?"


def test_plain_tokenizer_without_template(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "send two mugs ", "completion": "qty=2"}])
    (example,) = sft_examples(read_records(str(path)), PLAIN, seq_len=64).examples
    assert response_text(PLAIN, example) == "qty=2<|im_end|>"
    with pytest.raises(FreezetuneError, match=r"records of several turns \('messages' or 'conversations', or a 'system' or 'history' "
                                              r"field\) need a tokenizer with a chat template"):
        chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": [
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}])
        sft_examples(read_records(str(chat)), PLAIN, seq_len=64)


def test_truncation_is_counted_and_empty_responses_dropped(tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", [
        {"prompt": "short", "completion": "ok"},
        {"prompt": "the quick brown fox " * 30, "completion": "lost"},
        {"prompt": "a bit longer prompt here", "completion": "the quick brown fox jumps " * 10},
    ])
    data = sft_examples(read_records(str(path)), TOKENIZER, seq_len=48)
    assert data.truncated == 2 and data.dropped == 1 and len(data.examples) == 2
    assert all(len(e.input_ids) <= 48 for e in data.examples)
    assert data.notes == ["2 examples longer than --seq-len 48 were truncated; 1 lost its whole response and was skipped"]


def test_cpt_packs_text_into_blocks(tmp_path):
    (tmp_path / "corpus.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    data = cpt_examples(read_records(str(tmp_path / "corpus.txt")), TOKENIZER, seq_len=32)
    assert all(len(e.input_ids) == 32 for e in data.examples[:-1])
    assert all(e.labels == e.input_ids for e in data.examples)
    total = len(TOKENIZER("The quick brown fox jumps over the lazy dog. " * 40, add_special_tokens=False)["input_ids"]) + 1
    assert data.num_tokens == total


def test_holdout_split_is_seeded_and_disjoint(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(40)])
    data = sft_examples(read_records(str(path)), TOKENIZER, 64)
    train, held = split_holdout(data, 0.05, seed=3)
    again, _ = split_holdout(data, 0.05, seed=3)
    assert len(held.examples) == 2 and len(train.examples) == 38
    assert {e.where for e in train.examples}.isdisjoint({e.where for e in held.examples})
    assert [e.where for e in again.examples] == [e.where for e in train.examples]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', "bad.jsonl line 2: field 'completion' is missing"),
        ('{"prompt": "a", "completion": "b"}\n\n{"prompt": "", "completion": "b"}\n', "bad.jsonl line 3: field 'prompt' is empty"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": 3}\n', "bad.jsonl line 2: field 'completion' must be a string, got int"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b"\n', "bad.jsonl line 2: not valid JSON"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b", "completion": "c"}\n',
         "bad.jsonl line 2: field 'completion' is given twice in one record"),
        ('{"question": "a"}\n', "bad.jsonl line 1: no SFT fields; expected 'prompt'+'completion'"),
        # TRL's SFT reads plain 'text' records; here they are continued pre-training's, and the error says so
        ('{"text": "a"}\n', "(found text); raw 'text' records train with --objective cpt"),
        ('{"messages": [{"role": "user", "content": "a"}]}\n', "bad.jsonl line 1: field 'messages' must end with an assistant message"),
        # an empty answer trained EOS alone and an empty generation "matched" it; a flat record's was refused
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]}\n',
         "bad.jsonl line 1: field 'messages[1].content' is empty"),
        ('{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": ""}]}\n',
         "bad.jsonl line 1: field 'conversations[1].value' is empty"),
        ('{"messages": [{"role": "robot", "content": "a"}]}\n', "field 'messages[0]' must be {role: system|user|assistant"),
        ('{"instruction": "x"}\n{"instruction": "y"}\n', "2 malformed records: "),
        # the columns of the other records are None in this one, not fields it gives
        ('{"prompt": "a", "completion": "b"}\n{"question": 1}\n',
         "bad.jsonl line 2: no SFT fields; expected 'prompt'+'completion', 'instruction'+'output', 'messages' or "
         "'conversations' (found question)"),
        # a file of the wrong shape names its fault once, not five times over
        ('{"question": 1}\n' * 7, "bad.jsonl lines 1, 2, 3 and 4 more: no SFT fields"),
        ('{"question": 1}\n{"prompt": "a"}\n{"question": 1}\n',
         "bad.jsonl lines 1, 3: no SFT fields"),
        # one record with two faults is one malformed record, not "2 malformed record(s)"
        ('{"prompt": ["a", "b"], "completion": ["c", "d"]}\n', "1 malformed record: "),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(FreezetuneError) as error:
        sft_examples(read_records(str(tmp_path / "bad.jsonl")), TOKENIZER, 64)
    assert message in str(error.value)


def test_a_field_given_twice_is_refused_where_json_would_keep_the_last(tmp_path):
    records = [{"prompt": "a", "completion": "b"}] * 3
    array = "[\n" + ",\n".join(json.dumps(r) for r in records)
    (tmp_path / "twice.json").write_text(array + ',\n{"prompt": "a",\n "completion": "b", "completion": "c"}\n]\n')
    with pytest.raises(FreezetuneError, match=r"twice.json line 5: field 'completion' is given twice in one record"):
        read_records(str(tmp_path / "twice.json"))
    nested = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    line = json.dumps(nested).replace('"content": "hi"', '"content": "hi", "content": "yo"')
    (tmp_path / "nested.jsonl").write_text(json.dumps(nested) + "\n" + line + "\n")
    with pytest.raises(FreezetuneError, match=r"nested.jsonl line 2: field 'content' is given twice"):
        read_records(str(tmp_path / "nested.jsonl"))
    (tmp_path / "twice.csv").write_text("prompt,completion,completion\na,b,c\n")
    with pytest.raises(FreezetuneError, match=r"twice.csv line 1: column 'completion' appears twice in the header"):
        read_records(str(tmp_path / "twice.csv"))
    (tmp_path / "fine.json").write_text(array + "\n]\n")  # the check passes what has no repeat
    assert [r.where for r in read_records(str(tmp_path / "fine.json"))][-1].endswith("fine.json record 3")


def test_missing_unsupported_and_empty_data(tmp_path):
    with pytest.raises(FreezetuneError, match="data file .*nothing.jsonl does not exist"):
        read_records(str(tmp_path / "nothing.jsonl"))
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(FreezetuneError, match="unsupported type '.xml'"):
        read_records(str(tmp_path / "data.xml"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(FreezetuneError, match="no usable CPT example"):
        cpt_examples(read_records(str(tmp_path / "empty.txt")), TOKENIZER, 32)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(FreezetuneError, match="no usable SFT example"):
        sft_examples(read_records(str(tmp_path / "empty.jsonl")), TOKENIZER, 32)


@pytest.mark.parametrize("record, said", [
    ({"prompt": "a", "completion": "b"}, "(found completion, prompt); records of this shape train with --objective sft"),
    ({"messages": [{"role": "user", "content": "a"}]}, "(found messages (a list of 1 objects)); records of this shape train with --objective sft"),
    ({"prompt": "a", "chosen": "b", "rejected": "c"}, "records of this shape train with --objective dpo"),
    ({"question": "a"}, "field 'text' is missing"),  # no shape freezetune knows: no objective to name
])
def test_cpt_on_records_of_another_objective_names_it(tmp_path, record, said):
    """It said only "field 'text' is missing" to a user who forgot --objective sft."""
    (tmp_path / "data.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(FreezetuneError, match=re.escape("data.jsonl line 1: field 'text' is missing") + ".*") as caught:
        cpt_examples(read_records(str(tmp_path / "data.jsonl")), TOKENIZER, 32)
    assert str(caught.value).endswith(said)


def test_the_ticket_task_routes_messages_to_five_queues_without_a_held_out_message_in_training():
    from freezetune.data.tickets import ASKS, ticket_task

    train, held = ticket_task()
    assert len(train) == 400 and len(held) == 150
    prompts = [r.fields["prompt"] for r in train]
    assert len(set(prompts)) == len(prompts) and not set(prompts) & {r.fields["prompt"] for r in held}
    answers = {r.fields["completion"] for r in train + held}
    assert answers == set(ASKS) and all(r.fields["prompt"].startswith("Route the customer's message") for r in train)
    assert ticket_task()[0][0].fields == train[0].fields  # seeded: the same task every time


def test_evaluation_items_that_are_also_training_items_are_said(tmp_path):
    from freezetune.data.loading import load_data

    rows = [{"prompt": f"send {i} mugs", "completion": f"qty={i}"} for i in range(12)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    held = write_jsonl(tmp_path / "held.jsonl", rows[9:] + [{"prompt": "send a lamp", "completion": "qty=1"}])
    notes = load_data(TOKENIZER, "sft", str(train), str(held), 64)[2]
    assert notes[-1] == (f"notice: 3 of 4 held-out examples are also in the training data, token for token (the first: "
                         f"{held} line 1 is {train} line 10); scores on them measure what was trained on, not "
                         "held-out quality")
    # the same file twice; a record repeated within one file can land on both sides of the split
    assert "12 of 12 held-out examples are also" in load_data(TOKENIZER, "sft", str(train), str(train), 64)[2][-1]
    repeated = write_jsonl(tmp_path / "repeated.jsonl", rows + rows[:1] * 30)
    assert "is also in the training data" in load_data(TOKENIZER, "sft", str(repeated), None, 64)[2][-1]
    assert not any("training data" in n for n in load_data(TOKENIZER, "sft", str(train), None, 64)[2])
    # a preference pair matches only when both its answers do
    pairs = [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad"} for i in range(6)]
    prefs = write_jsonl(tmp_path / "prefs.jsonl", pairs)
    other = write_jsonl(tmp_path / "other.jsonl", [{**pairs[0], "rejected": "worse"}, pairs[1]])
    assert "1 of 2 held-out pairs is also" in load_data(TOKENIZER, "dpo", str(prefs), str(other), 64)[2][-1]


def test_a_saved_dataset_dict_is_read_by_the_split_named(tmp_path):
    import datasets

    rows = [{"prompt": f"send {i} mugs", "completion": f"qty={i}"} for i in range(6)]
    both = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:4]),
                                 "test": datasets.Dataset.from_list(rows[4:])})
    both.save_to_disk(str(tmp_path / "both"))
    # the train split was taken for --data and --eval-data alike, the test split never read
    with pytest.raises(FreezetuneError, match=f"^{tmp_path / 'both'} holds the splits train, test: give one, e.g. "
                                              f"{tmp_path / 'both' / 'train'}$"):
        read_records(str(tmp_path / "both"))
    assert [r.fields["completion"] for r in read_records(str(tmp_path / "both" / "test"))] == ["qty=4", "qty=5"]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "one"))
    assert len(read_records(str(tmp_path / "one"))) == 6  # one split: nothing to choose


def test_without_a_chat_template_the_plain_rendering_is_said_once(tmp_path):
    from freezetune.data.loading import load_data

    rows = [{"prompt": f"send {i} mugs ", "completion": f"qty={i}"} for i in range(8)]
    train, held = write_jsonl(tmp_path / "t.jsonl", rows[:6]), write_jsonl(tmp_path / "h.jsonl", rows[6:])
    notes = load_data(PLAIN, "sft", str(train), str(held), 64)[2]
    # a base model's tokenizer: prompt and answer are joined with nothing between them, which the user should know
    assert notes.count("sft: the tokenizer has no chat template, so each example is its prompt followed directly by "
                       "its answer and EOS (no separator is added)") == 1
    assert not any("chat template" in n for n in load_data(TOKENIZER, "sft", str(train), str(held), 64)[2])


def test_a_json_file_of_wrapped_records_and_of_records_of_one_fault_read_plainly(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(12)]
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows, "version": 1}))
    with pytest.raises(FreezetuneError, match=r"wrapped.json record 1: no SFT fields; .* \(found data \(a list of 12 "
                                              r"objects\), version\)"):
        sft_examples(read_records(str(tmp_path / "wrapped.json")), TOKENIZER, 64)
    # a JSON array's records are numbered, and share one mention as a .jsonl file's lines do
    (tmp_path / "array.json").write_text(json.dumps([{"q": 1}] * 6))
    with pytest.raises(FreezetuneError, match=r"6 malformed records: \S*array.json records 1, 2, 3 and 3 more: no SFT"):
        sft_examples(read_records(str(tmp_path / "array.json")), TOKENIZER, 64)
