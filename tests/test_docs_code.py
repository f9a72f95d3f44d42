"""The Python in docs/python.md runs as written: its names are the library's (a snippet once called
`trainer.module`, which TrainingLoop never had). The model and the run's length are swapped for a
tiny model and two steps; everything else is the doc's text."""

from __future__ import annotations

import re
from pathlib import Path

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
