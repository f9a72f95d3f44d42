"""A run refuses what it was not trained on: `train --resume` and `compare` check the base model's
weights, config and tokenizer files and the data's content, and name what changed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from freezetune.cli.commands import main

from helpers import train_argv
from test_compare import compare_args


def train_args(model, data, out, *extra):
    return train_argv(model, data, out, *extra, max_steps=4, save_every=2, eval_generate=0, plan="freeze bottom 50%")


@pytest.fixture
def unfinished(tiny_chat_model_dir, order_data, tmp_path):
    """A user's model, data and a run stopped at step 2 of 4 (its later state removed, as a kill leaves it)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_chat_model_dir, model)
    run = tmp_path / "run"
    assert main(train_args(model, order_data, run)) == 0
    for later in sorted((run / "checkpoints").iterdir())[1:]:
        shutil.rmtree(later)
    (run / "trainable.safetensors").unlink()
    (run / "eval.json").unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    return model, order_data, run


def edit_json(path: Path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def refused(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("freezetune ") and "Traceback" not in "\n".join(err)
    return err[-1]


CHANGES = {
    "config.json": (lambda model, data: edit_json(model / "config.json", rms_norm_eps=0.1), "config.json has changed"),
    "tokenizer": (lambda model, data: edit_json(model / "tokenizer_config.json", model_max_length=7),
                  "tokenizer_config.json has changed"),
    "weights": (lambda model, data: (model / "model.safetensors").write_bytes(
        (model / "model.safetensors").read_bytes()[:-4] + b"\x00\x00\x00\x40"), "refusing to mix"),  # a norm weight 1.0 -> 2.0
    "data": (lambda model, data: data[0].write_text(data[0].read_text().replace("Alice", "Bob")),
             "content of --data"),
    "eval data": (lambda model, data: data[1].write_text(data[1].read_text().replace("mug", "cup")),
                  "content of --eval-data"),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_resume_refuses_a_changed_base_or_data_and_names_it(unfinished, capsys, change):
    model, data, run = unfinished
    damage, expected = CHANGES[change]
    damage(model, data)
    assert expected in refused(["train", "--resume", str(run)], capsys)
    assert not (run / "trainable.safetensors").exists()  # nothing trained on the changed input


def test_resume_of_an_unchanged_run_continues(unfinished, capsys):
    _, _, run = unfinished
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "manifest.json").read_text())["status"] == "finished"


def test_resume_of_a_finished_run_changes_nothing(tiny_chat_model_dir, order_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(tiny_chat_model_dir, order_data, run)) == 0
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()}
    assert "the run has finished (4 steps)" in refused(["train", "--resume", str(run)], capsys)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()} == before
    assert main(train_args(tiny_chat_model_dir, order_data, tmp_path / "one", "--max-steps", "1")) == 0
    assert "the run has finished (1 step);" in refused(["train", "--resume", str(tmp_path / "one")], capsys)  # "1 steps"


def test_compare_refuses_to_pool_runs_of_a_base_whose_config_changed(tiny_chat_model_dir, order_data, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_chat_model_dir, model)
    out = tmp_path / "cmp"
    args = compare_args(model, order_data, out, "freeze bottom 50%", seeds=1)
    assert main(args) == 0
    edit_json(model / "config.json", rms_norm_eps=0.1)
    message = refused(args, capsys)
    assert "from before config.json changed" in message and "choose another --out" in message


def test_compare_never_uses_a_damaged_retain_set_and_builds_it_again(tiny_chat_model_dir, order_data, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "cmp"
    args = compare_args(tiny_chat_model_dir, order_data, out, "freeze bottom 50%", seeds=1)
    assert main(args) == 0
    reference = out / "retain-base.safetensors"
    intact = load_file(str(reference))
    data = bytearray(reference.read_bytes())
    data[int(len(data) * 0.9)] ^= 0x04  # one bit of one logit: the file still parses
    reference.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "retain-base.safetensors set aside as retain-base.safetensors.damaged" in err and "built again" in err
    assert (out / "retain-base.safetensors.damaged").read_bytes() == bytes(data)  # kept for a look, never read
    rebuilt = load_file(str(reference))
    assert rebuilt.keys() == intact.keys() and all(rebuilt[k].shape == intact[k].shape for k in intact)
    # built again from the same base: the same top tokens, but for near-ties a random tiny model's logits reorder
    assert (rebuilt["top_ids"] == intact["top_ids"]).float().mean() > 0.95
    # the examples the distributions belong to are checked too
    examples = json.loads((out / "retain.json").read_text())
    examples[0]["input_ids"][1] += 1  # another token: the distributions no longer belong to these examples
    (out / "retain.json").write_text(json.dumps(examples))
    assert main(args) == 0
    assert "retain.json is not the file its distributions were computed on" in capsys.readouterr().err


def test_a_run_given_relative_paths_resumes_and_exports_from_another_folder(tiny_chat_model_dir, order_data, tmp_path,
                                                                            monkeypatch, capsys):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(tiny_chat_model_dir, work / "model")
    for file in order_data:
        shutil.copy(file, work / file.name)
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    assert main(train_args("model", [order_data[0].name, order_data[1].name], "run")) == 0
    run = work / "run"
    shutil.rmtree(sorted((run / "checkpoints").iterdir())[-1])  # stopped at step 2 of 4, as in `unfinished`
    (run / "trainable.safetensors").unlink()
    edit_json(run / "manifest.json", status="running")
    # `--model model` and `--data train.jsonl` name nothing from here: it was "unknown model 'model'"
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "manifest.json").read_text())["status"] == "finished"
    assert main(["export", str(run), "--out", str(elsewhere / "merged")]) == 0
    assert (elsewhere / "merged" / "config.json").is_file()
