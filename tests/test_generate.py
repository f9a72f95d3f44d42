"""`freezetune generate`: what it puts before the prompt, where it reads the prompt, and what it says of an
empty answer."""

from freezetune.cli.commands import main


def test_an_empty_answer_is_said_not_left_blank(tiny_chat_model_dir, monkeypatch, capsys):
    import freezetune.training.evaluation as evaluation

    monkeypatch.setattr(evaluation, "generate", lambda *args, **kwargs: [""])  # stripped whitespace
    assert main(["generate", str(tiny_chat_model_dir), "--prompt", "send 3 red mugs"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "generate: the answer is empty" in err


def test_generate_puts_a_system_prompt_before_the_prompt_as_training_data_does(tiny_chat_model_dir, monkeypatch, capsys):
    from transformers import AutoTokenizer

    import freezetune.training.evaluation as evaluation

    prompts = []
    monkeypatch.setattr(evaluation, "generate", lambda model, tokenizer, ids, *a, **k: prompts.append(ids[0]) or ["ok"])
    assert main(["generate", str(tiny_chat_model_dir), "--prompt", "send 3", "--system", "You dispatch orders."]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    turns = [{"role": "system", "content": "You dispatch orders."}, {"role": "user", "content": "send 3"}]
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert prompts == [tokenizer(text, add_special_tokens=False)["input_ids"]]  # the order a record's 'system' gives
    assert main(["generate", str(tiny_chat_model_dir), "--prompt", "send 3", "--system", "S", "--plain"]) == 2
    assert "--system goes into the chat template, and --plain continues the prompt" in capsys.readouterr().err


def test_a_prompt_of_dash_is_read_from_stdin(tiny_chat_model_dir, monkeypatch, capsys):
    import io

    import freezetune.training.evaluation as evaluation

    prompts = []
    monkeypatch.setattr(evaluation, "generate", lambda model, tokenizer, ids, *a, **k: prompts.append(ids[0]) or ["ok"])
    monkeypatch.setattr("sys.stdin", io.StringIO("send 3 red mugs\nto Alice"))
    assert main(["generate", str(tiny_chat_model_dir), "--plain", "--prompt", "-"]) == 0
    assert main(["generate", str(tiny_chat_model_dir), "--plain", "--prompt", "send 3 red mugs\nto Alice"]) == 0
    assert prompts[0] == prompts[1] and capsys.readouterr().out == "ok\nok\n"
