"""`freezetune export` and `generate` from a run or its export, as a user runs them: what the merged
model holds, a LoRA run folded in, another base refused, and nothing on stdout but where it wrote."""

import subprocess
import sys

import torch
from safetensors.torch import load_file

from freezetune.cli.commands import main

from test_train_cli import train_args


def test_export_round_trip_and_generate(tiny_chat_model_dir, order_data, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    assert main(train_args(tiny_chat_model_dir, order_data, run_dir, "--max-steps", "3", "--plan", "freeze bottom 50%")) == 0
    assert main(["export", str(run_dir), "--out", str(tmp_path / "exported")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    trained = load_file(str(run_dir / "trainable.safetensors"))
    params = dict(exported.named_parameters())
    assert all(torch.equal(params[name], tensor) for name, tensor in trained.items())
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir).named_parameters())
    assert torch.equal(params["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(params["model.layers.3.mlp.up_proj.weight"], base["model.layers.3.mlp.up_proj.weight"])
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--prompt", "send 3 red mugs to Alice", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.strip() != ""
    assert main(["generate", str(tmp_path / "exported"), "--prompt", "send 3 red mugs", "--max-new-tokens", "5"]) == 0
    # plain text (no chat template), and sampling that the seed alone decides
    sampled = []
    for seed in ("1", "1", "2"):
        capsys.readouterr()
        assert main(["generate", str(run_dir), "--prompt", "send 3", "--plain", "--temperature", "1.5", "--seed", seed,
                     "--max-new-tokens", "12"]) == 0
        sampled.append(capsys.readouterr().out)
    assert sampled[0] == sampled[1] != sampled[2]
    assert main(["generate", str(run_dir), "--prompt", "x", "--temperature", "-1"]) == 2
    assert "--temperature must be 0 (greedy) or more" in capsys.readouterr().err
    # greedy decoding reads neither: asked for, they would change nothing
    for flag, value in (("--top-p", "0.5"), ("--top-p", "1"), ("--seed", "0")):  # typed, even at the default
        for temperature in ([], ["--temperature", "0"]):  # it said "without --temperature" to one who gave 0
            assert main(["generate", str(run_dir), "--prompt", "x", flag, value, *temperature]) == 2
            assert capsys.readouterr().err.strip().splitlines()[-1] == (
                f"freezetune generate: error: {flag} is for sampling, and at --temperature 0 (the default) the answer "
                f"is greedy (the same tokens whatever {flag}): give a --temperature above 0 too")


def test_a_run_refuses_another_base_model(tiny_chat_model_dir, order_data, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    assert main(train_args(tiny_chat_model_dir, order_data, run_dir, "--max-steps", "2")) == 0
    other = tmp_path / "other-base"
    shutil.copytree(tiny_chat_model_dir, other)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1.0)
    model.save_pretrained(other)
    capsys.readouterr()
    assert main(["export", str(run_dir), "--out", str(tmp_path / "x"), "--base", str(other)]) == 2
    err = capsys.readouterr().err
    assert "was trained on base model" in err and "refusing to mix them" in err
    assert not (tmp_path / "x").exists()


def test_lora_run_exports_merged_weights(tiny_chat_model_dir, order_data, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "lora"
    assert main(train_args(tiny_chat_model_dir, order_data, run_dir, "--max-steps", "3", "--lora-r", "4", "--lr", "0.05")) == 0
    saved = load_file(str(run_dir / "trainable.safetensors"))
    assert saved and all(".lora_A." in name or ".lora_B." in name for name in saved)
    assert main(["export", str(run_dir), "--out", str(tmp_path / "merged")]) == 0
    merged = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "merged").named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir).named_parameters())
    assert not any("lora" in name for name in merged)
    # W' = W + (alpha / r) * B @ A for an adapted projection
    prefix = "base_model.model.model.layers.1.self_attn.q_proj"
    delta = (16 / 4) * saved[f"{prefix}.lora_B.default.weight"] @ saved[f"{prefix}.lora_A.default.weight"]
    expected = base["model.layers.1.self_attn.q_proj.weight"] + delta
    torch.testing.assert_close(merged["model.layers.1.self_attn.q_proj.weight"], expected, rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--prompt", "send 3 red mugs", "--max-new-tokens", "4"]) == 0


def test_export_prints_only_where_it_wrote(tiny_chat_model_dir, order_data, tmp_path, capsys):
    """A fresh process, as a user runs it: saving imports DeepSpeed, whose notice used to land on stdout."""
    run_dir, exported = tmp_path / "run", tmp_path / "exported"
    assert main(train_args(tiny_chat_model_dir, order_data, run_dir, "--max-steps", "1")) == 0
    assert capsys.readouterr().out.startswith("finished 1 step: ")  # not "1 steps"
    done = subprocess.run([sys.executable, "-m", "freezetune", "export", str(run_dir), "--out", str(exported)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout == f"exported to {exported}\n"
