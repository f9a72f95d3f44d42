"""SFT record shapes: LLaMA-Factory's system and history fields, ShareGPT conversations, and records
that mix two shapes."""

from freezetune.data.examples import sft_examples
from freezetune.data.files import Record, read_records

from test_data import TOKENIZER, response_text, write_jsonl


def test_system_and_history_fields_join_the_conversation_and_mixed_shapes_are_refused(tmp_path):
    from freezetune.data.shapes import to_messages

    def turns(record):
        errors = []
        return to_messages(Record(record, "r.jsonl line 1"), errors), errors

    # LLaMA-Factory's Alpaca fields: they were dropped without a word, the answer trained without its context
    messages, _ = turns({"system": "You dispatch orders.", "history": [["hi", "hello"]], "instruction": "send two mugs",
                         "input": "", "output": "qty=2"})
    assert messages == [{"role": "system", "content": "You dispatch orders."}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "send two mugs"},
                        {"role": "assistant", "content": "qty=2"}]
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert turns({"system": "S", "messages": chat})[0][0] == {"role": "system", "content": "S"}
    assert turns({"prompt": "a", "completion": "b", "system": ""})[0] == chat  # an empty system prompt is none
    for record, error in [
        ({"messages": chat, "prompt": "a", "completion": "b"},
         "the fields of two record shapes, messages (messages) and prompt (prompt/completion): give one"),
        ({"instruction": "a", "output": "b", "completion": "c"},
         "the fields of two record shapes, Alpaca (instruction/output) and prompt (prompt/completion): give one"),
        ({"messages": [{"role": "system", "content": "T"}, *chat], "system": "S"},
         "a system prompt in field 'system' and another in 'messages'"),
        ({"messages": chat, "history": [["x", "y"]]}, "field 'history' is for flat records; 'messages' holds every turn"),
        ({"prompt": "a", "completion": "b", "history": [["x"]]},
         "field 'history' must be a list of [user, assistant] string pairs"),
        ({"prompt": "a", "completion": "b", "system": 3}, "field 'system' must be a string, got int"),
    ]:
        assert turns(record) == (None, [f"r.jsonl line 1: {error}"]), record
    # rendered with the template, the history's answers carry the loss too, as every assistant turn does
    path = write_jsonl(tmp_path / "h.jsonl", [{"history": [["hi", "hello"]], "prompt": "qty?", "completion": "qty=3"}])
    (example,) = sft_examples(read_records(str(path)), TOKENIZER, seq_len=128).examples
    assert response_text(TOKENIZER, example) == "hello<|im_end|>\nqty=3<|im_end|>\n"


def test_sharegpt_conversations_train_as_the_same_messages(tmp_path):
    """LLaMA-Factory's and Axolotl's ShareGPT shape: it was refused as 'no SFT fields'."""
    from freezetune.data.shapes import to_messages

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "qty?"},
            {"role": "assistant", "content": "qty=3"}]
    tags = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt = [{"from": tags[m["role"]], "value": m["content"]} for m in chat]
    path = write_jsonl(tmp_path / "s.jsonl", [{"messages": chat}, {"conversations": sharegpt}])
    as_messages, as_sharegpt = sft_examples(read_records(str(path)), TOKENIZER, seq_len=256).examples
    assert as_sharegpt.input_ids == as_messages.input_ids and as_sharegpt.labels == as_messages.labels

    def errors_of(record):
        errors = []
        return to_messages(Record(record, "r.jsonl line 1"), errors), errors

    plain = [{"from": "user", "value": "a"}, {"from": "assistant", "value": "b"}]
    assert errors_of({"conversations": plain, "system": "S"})[0] == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    for record, error in [
        # a tool turn dropped would train the answer without what the tool said
        ({"conversations": [*sharegpt[1:3], {"from": "observation", "value": "{}"}, sharegpt[4]]},
         "field 'conversations[2]' must be {from: human|gpt|system, value: string}, not from 'observation'"),
        ({"conversations": [{"role": "user", "content": "a"}]},
         "field 'conversations[0]' must be {from: human|gpt|system, value: string}"),
        ({"conversations": sharegpt[1:2]}, "field 'conversations' must end with an assistant message"),
        ({"conversations": []}, "field 'conversations' must be a non-empty list"),
        ({"conversations": sharegpt, "system": "S"}, "a system prompt in field 'system' and another in 'conversations'"),
        ({"conversations": sharegpt, "messages": chat},
         "the fields of two record shapes, messages (messages) and ShareGPT (conversations): give one"),
    ]:
        assert errors_of(record) == (None, [f"r.jsonl line 1: {error}"]), record
