"""The Python in docs/python.md runs as written: its names are the library's (a snippet once called
`trainer.module`, which TrainingLoop never had). The model and the run's length are swapped for a
tiny model and two steps; everything else is the doc's text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_library_walkthrough_runs(tiny_chat_model_dir, tmp_path, monkeypatch):
    code = snippets()[0]
    swaps = {
        'load_model("smollm2-135m")': f'load_model("{tiny_chat_model_dir}")',
        "layers 20-21": "layers 2-3",  # the tiny model has 4 blocks
        'TrainConfig(plan="freeze bottom 75%", max_steps=60)': (
            f'TrainConfig(model="{tiny_chat_model_dir}", plan="freeze bottom 75%", max_steps=2, batch_size=2, '
            f'seq_len=256, eval_generate=0, show_generations=0, out="{tmp_path / "run"}")'),
    }
    for text, swap in swaps.items():
        assert text in code, f"docs/python.md no longer says {text}: update this test with it"
        code = code.replace(text, swap)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(DOC), "exec"), scope)
    assert scope["result"]["status"] == "finished" and scope["result"]["step"] == 2 and scope["record"]["loss"] > 0
    assert scope["measured"] is not None and (tmp_path / "run" / "manifest.json").is_file()


def shown_commands() -> list[tuple[str, str]]:
    """Every `freezetune ...` line of the README's and the docs' shell blocks, continuations joined."""
    found = []
    for doc in [DOC.parents[1] / "README.md", *sorted(DOC.parent.glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", doc.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                if line.strip().startswith("freezetune ") and ": error:" not in line:  # an error shown is output
                    found.append((doc.name, line.strip()))
    return found


def test_every_command_the_docs_show_is_one_the_cli_takes():
    import shlex

    from freezetune.cli.commands import COMMANDS, build_parser, from_namespace
    from freezetune.config.fields import check_finite

    commands = shown_commands()
    assert len(commands) > 20  # README, train, compare, advise, preferences, distributed...
    for doc, line in commands:
        words = shlex.split(line, comments=True)[1:]
        words = words[: next((i for i, w in enumerate(words) if w in ("<", ">", "|")), len(words))]  # the shell's
        elided = "..." in words  # "freezetune compare ... --retain-tasks x.yaml": the flags alone are checked
        try:
            args = build_parser().parse_args([w for w in words if w != "..."])
        except SystemExit:  # argparse's way to refuse an unknown flag or a bad value
            pytest.fail(f"{doc}: `{line}` is not a command the CLI takes")
        options = from_namespace(COMMANDS[args.command][0], args)
        if not elided:
            check_finite(options)
            options.validate()  # values a user would be refused for, e.g. --top-p without --temperature
