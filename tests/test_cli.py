"""The plan command as a user runs it: output, JSON shape, and one-line errors with exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from freezetune.cli.commands import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_table(capsys, tiny_llama_dir):
    code, out, _ = run(capsys, "plan", str(tiny_llama_dir), "freeze bottom 75%")
    assert code == 0
    assert "    2          " in out and "frozen" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["3"].endswith("trainable") and lines["2"].endswith("frozen")
    assert lines["embeddings"].endswith("frozen") and lines["norm"].endswith("trainable")
    assert "lowest trainable block: 3" in out
    assert "full fine-tune" in out


def test_plan_json_fields(capsys, tiny_llama_dir):
    code, out, _ = run(capsys, "plan", str(tiny_llama_dir), "train top 1", "--json", "--seq-len", "128", "--dtype", "bfloat16")
    assert code == 0
    info = json.loads(out)
    assert info["model"] == str(tiny_llama_dir)
    assert info["num_layers"] == 4 and info["lowest_trainable_layer"] == 3
    assert [row["trainable_params"] > 0 for row in info["layers"]] == [False, False, False, True]
    assert {"index", "params", "trainable_params"} <= set(info["layers"][0])
    assert info["trainable_params"] == info["layers"][3]["params"]
    assert info["total_params"] > info["trainable_params"] > 0
    assert info["memory_estimate_bytes"]["total"] < info["full_finetune_memory_estimate_bytes"]["total"]
    assert info["memory_settings"] == {"seq_len": 128, "batch_size": 4, "dtype": "bfloat16", "optimizer": "AdamW",
                                       "objective": "sft", "precompute_ref": False}


def test_plan_formats(capsys, tiny_llama_dir):
    code, out, _ = run(capsys, "plan", str(tiny_llama_dir), "train top 2", "--format", "llama-factory")
    assert code == 0 and "freeze_trainable_layers: 2" in out
    code, out, _ = run(capsys, "plan", str(tiny_llama_dir), "train top 1", "--format", "axolotl")
    assert code == 0 and "- ^model.layers.3.mlp.down_proj.weight$" in out


def test_plan_from_yaml_file(capsys, tiny_llama_dir, tmp_path):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text("- freeze all\n- train: mlp@top 1\n")
    code, out, _ = run(capsys, "plan", str(tiny_llama_dir), str(plan_file), "--json")
    assert code == 0 and json.loads(out)["plan"] == ["freeze all", "train mlp@top 1"]


def _bad_inputs(tmp_path, model_dir):
    not_model = tmp_path / "notes.txt"
    not_model.write_text("hello")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    bad_gguf = tmp_path / "broken.gguf"
    bad_gguf.write_bytes(b"GGUF" + b"\x00" * 64)
    for folder, marker in (("cmp", "compare.json"), ("run", "manifest.json"), ("adapter", "adapter_config.json")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / marker).write_text("{}")
    m = str(model_dir)
    return [
        (["plan", "no-such-model", "freeze all"], "unknown model 'no-such-model': not an embedded model (smollm2-135m)"),
        (["plan", "someorg/not-cached", "freeze all"], "unknown model 'someorg/not-cached'"),
        (["plan", "./missing/folder", "freeze all"], "model path ./missing/folder does not exist"),
        (["plan", str(not_model), "freeze all"], "notes.txt is not a model: expected a folder with config.json or a .gguf file"),
        (["plan", str(empty_dir), "freeze all"], "empty is not a model"),
        # freezetune's own folders, given where a model goes: what they are, and where the model is
        (["plan", str(tmp_path / "cmp"), "freeze all"], f"a .gguf file; it is a comparison, whose runs are {tmp_path}/cmp/runs/STRATEGY/seed-N"),
        (["plan", str(tmp_path / "run"), "freeze all"], f"it is a freezetune run: `freezetune export {tmp_path}/run --out DIR` makes a model"),
        (["plan", str(tmp_path / "adapter"), "freeze all"], "it is a PEFT adapter, which generate and evaluate take as it is"),
        (["plan", str(bad_gguf), "freeze all"], "broken.gguf is not a GGUF model transformers can read"),
        (["plan", m, "freeze sideways 3"], "plan rule 1 'freeze sideways 3' at column 1: unknown selector 'sideways 3'"),
        (["plan", m, "freeze all; train re:("], "plan rule 2 'train re:(' at column 13: invalid regular expression"),
        (["plan", m, "freeze layers 9"], "layer 9 is out of range: the model has 4 blocks (0-3)"),
        (["plan", m, "freeze all; train re:nothing"], "plan rule 2 'train re:nothing' at column 13: matches no parameter"),
        # a part of names, as Axolotl's patterns match: re: matches whole ones, and says how to write a part
        (["plan", m, "freeze all; train re:mlp"], "matches no whole parameter name of LlamaForCausalLM, and is part of 12 "
                                                  "(e.g. model.layers.0.mlp.gate_proj.weight); re: matches whole names: write re:.*mlp.*"),
        (["plan", m, " ; "], "empty plan"),
        (["plan", m, "freeze all"], "plan rule 1 'freeze all' at column 1: the plan leaves nothing trainable"),
        (["plan", m, str(tmp_path / "gone.yaml")], "plan file"),
        (["plan", m, "train layers 0,2", "--format", "llama-factory"], "cannot express this plan for LLaMA-Factory"),
        (["plan", m, "freeze all; train head", "--seq-len", "0"], "--seq-len must be at least 1, got 0"),
        # train's spelling, where plan takes them without a flag: argparse said only "unrecognized arguments"
        (["plan", "--model", m, "--plan", "train top 1"], "--model: the model is given without a flag here: freezetune plan MODEL PLAN"),
        (["plan", m, "--plan=train top 1"], "--plan: the plan is given without a flag here: freezetune plan MODEL PLAN"),
    ]


def test_every_bad_input_is_one_line_and_exit_2(capsys, tmp_path, tiny_llama_dir):
    capsys.readouterr()  # the fixture's model, saved first in a lone run, imports DeepSpeed, which logs to stdout
    for argv, message in _bad_inputs(tmp_path, tiny_llama_dir):
        code, out, err = run(capsys, *argv, "--cache-dir", str(tmp_path / "cache"))
        lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
        assert code == 2, (argv, err)
        assert len(lines) == 1 and lines[0].startswith("freezetune plan: error: "), (argv, err)
        assert message in lines[0], (argv, lines[0])
        assert out == ""


def test_bad_verdict_settings_are_one_line_and_exit_2(capsys, tmp_path, tiny_llama_dir):
    m = str(tiny_llama_dir)
    for argv, message in ((["compare", "--model", m, "--margin", "kl=5%"], "--margin 'kl=5%': expected METRIC=SIZE with METRIC"),
                          (["report", m, "--out", str(tmp_path), "--margin", "eval_loss=x"], "SIZE must be a number or a percentage"),
                          # the second value won without a word
                          (["report", m, "--out", str(tmp_path), "--margin", "eval_loss=1%", "--margin", "eval_loss=2%"],
                           "--margin 'eval_loss=2%': eval_loss is given twice"),
                          (["compare", "--model", m, "--search-extensions", "-1"], "--search-extensions must be 0 or more, got -1")):
        code, out, err = run(capsys, *argv)
        lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # the fixture's progress bar
        # DeepSpeed's logger keeps the stream it found at import: under pytest, the capture of whichever test
        # imported it first (a process of its own starts clean: its import happens inside main's redirect)
        out = "".join(line for line in out.splitlines(True) if "real_accelerator.py" not in line)
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"freezetune {argv[0]}: error: ") and out == ""
        assert message in lines[0]


def test_console_script_exit_status(tiny_llama_dir):
    ok = subprocess.run([sys.executable, "-m", "freezetune", "plan", str(tiny_llama_dir), "train top 1"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "lowest trainable block: 3" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "freezetune", "plan", str(tiny_llama_dir), "freeze layers 12"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("freezetune plan: error: plan rule 1 'freeze layers 12'")


def test_version(capsys):
    from freezetune import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"freezetune {__version__}\n"
    import tomllib  # the version written in two places, the package's and its metadata's: one number

    assert tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"] == __version__


def test_help_comes_from_the_typed_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for flag in ("--seq-len", "--batch-size", "--dtype", "--json", "--format", "--cache-dir"):
        assert flag in out
    assert "{axolotl,llama-factory}" in out


def test_an_input_typed_twice_is_refused_and_other_flags_override(capsys, tiny_llama_dir, tmp_path):
    # argparse keeps the last without a word: `--data a --data b` trained on b alone
    for argv, flag, said in ((["train", "--data", "a.jsonl", "--data", "b.jsonl"], "--data",
                              "(a.jsonl, then b.jsonl); a run reads one data file: join the files into one"),
                             (["train", "--plan", "freeze all", "--plan", "train top 2"], "--plan",
                              "(freeze all, then train top 2); one plan: join its rules with ';' (freeze all; train top 2)"),
                             (["train", "--config", "a.yaml", "--config", "b.yaml"], "--config", "(a.yaml, then b.yaml)"),
                             (["advise", str(tiny_llama_dir), "--data", "a.jsonl", "--data", "b.jsonl"], "--data", "(a.jsonl, then")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert f"error: argument {flag}: given twice {said}" in capsys.readouterr().err.splitlines()[-1]
    # the same file twice asks for one; any other flag typed again overrides, as on any command line
    assert main(["plan", str(tiny_llama_dir), "train top 1", "--seq-len", "64", "--seq-len", "128"]) == 0
    assert "seq 128" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # --help, read after both: the parse went past them
        main(["train", "--config", "c.yaml", "--config", "c.yaml", "--help"])
    assert exit_info.value.code == 0


def test_a_start_up_ctrl_c_that_an_import_swallowed_still_stops_before_training():
    import signal as signals

    from freezetune.cli.console import StartUpInterrupt
    from freezetune.runs.stop import StopFlag

    handler = StartUpInterrupt()
    previous = signals.signal(signals.SIGINT, handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            handler(signals.SIGINT, None)  # raised at once; suppose a library's import caught it
        with pytest.raises(KeyboardInterrupt), StopFlag():  # the loop's handler sees it had fired
            pass
        handler.fired = False
        with StopFlag() as stop:  # no interrupt: the loop takes SIGINT over as usual
            assert not stop.requested
    finally:
        signals.signal(signals.SIGINT, previous)


def test_stdout_holds_the_result_alone(capsys, monkeypatch, tmp_path):
    """Whatever a library prints while a command runs goes to stderr, so `$(freezetune ...)` gets the result."""
    from freezetune.cli import commands
    from freezetune.options.commands import ReportOptions

    def noisy(options):
        print("[WARNING] Setting accelerator to CPU.")  # what DeepSpeed's logger writes to stdout
        return f"report: {options.out}"

    monkeypatch.setitem(commands.COMMANDS, "report", (ReportOptions, noisy))
    code, out, err = run(capsys, "report", str(tmp_path / "a-run"), "--out", str(tmp_path / "report"))
    assert code == 0 and out == f"report: {tmp_path / 'report'}\n"
    assert "Setting accelerator to CPU" in err


def test_a_flag_spelled_as_hf_or_llama_factory_spell_it_is_given_ours(capsys):
    # argparse said only "unrecognized arguments: --learning_rate 1e-4"
    for argv, said in ((["train", "--learning_rate", "1e-4"], "--learning_rate: no such flag (did you mean --lr?)"),
                       (["train", "--max_steps=3"], "--max_steps: no such flag (did you mean --max-steps?)"),
                       (["train", "--bf16"], "--bf16: no such flag (did you mean --precision?)"),
                       (["compare", "--plan", "freeze all"], "--plan: no such flag (did you mean --strategy?)"),
                       (["compare", "--learning-rate", "1"], "--learning-rate: no such flag (did you mean --lr-full, --lr-lora, "
                                                             "--lr-plan or --lr-grid?)")):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == f"freezetune {argv[0]}: error: {said}"


def test_argparse_refusals_are_one_line_like_every_other(capsys):
    # argparse printed the command's whole usage first: 28 lines for a mistyped --objective
    for argv, said in ((["train", "--objective", "xyz"], "freezetune train: error: argument --objective: invalid choice: 'xyz'"),
                       (["train", "--max-steps"], "freezetune train: error: argument --max-steps: expected one argument"),
                       (["train", "--max-steps", "two"], "freezetune train: error: argument --max-steps: invalid int value: 'two'"),
                       (["train", "--bogus", "1"], "freezetune train: error: unrecognized arguments: --bogus 1; "
                                                   "freezetune train --help lists its options"),
                       (["plan"], "freezetune plan: error: the following arguments are required: model, plan"),
                       (["bogus"], "freezetune: error: argument COMMAND: invalid choice: 'bogus'"),
                       ([], "freezetune: error: the following arguments are required: COMMAND")):
        try:
            code = main(argv)
        except SystemExit as exit_info:
            code = exit_info.code
        err = capsys.readouterr().err
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith(said), (argv, err)


def test_a_near_miss_of_a_flag_is_given_the_flag(capsys):
    # argparse said "unrecognized arguments: --steps 3"; an abbreviation (--seq) is argparse's to take
    for argv, said in ((["train", "--steps", "3"], "--steps: no such flag (did you mean --max-steps?)"),
                       (["train", "--warmup_ratio", "0.1"], "--warmup_ratio: no such flag (did you mean --warmup-ratio?)"),
                       (["compare", "--strategies", "full"], "--strategies: no such flag (did you mean --strategy?)"),
                       (["plan", "m", "train all", "--seqlen", "8"], "--seqlen: no such flag (did you mean --seq-len?)")):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == f"freezetune {argv[0]}: error: {said}"
