"""FSDP2 and DeepSpeed ZeRO on CPU (torchrun, gloo): sharded runs against unsharded ones, checkpoints
across layouts, bad configs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from freezetune.cli.commands import main

from helpers import losses
from test_distributed import args, freezetune

CONFIGS = Path(__file__).parent.parent / "configs"


SHARDINGS = {
    "fsdp": (("--fsdp",), "sharding: FSDP2 over 2 processes, one unit per block of 4", "Fsdp"),
    "zero1": (("--zero-stage", "1"), "sharding: DeepSpeed ZeRO-1 over 2 processes, partitioning the trained tensors' "
                                     "optimizer state", "Zero"),
    "zero2": (("--zero-stage", "2"), "sharding: DeepSpeed ZeRO-2 over 2 processes, partitioning the trained tensors' "
                                     "optimizer state and gradients", "Zero"),
    "zero3": (("--zero-stage", "3"), "sharding: DeepSpeed ZeRO-3 over 2 processes, partitioning the trained tensors' "
                                     "optimizer state and gradients, and all weights", "Zero"),
}


@pytest.mark.parametrize("sharding, extra", [
    ("fsdp", ()), ("fsdp", ("--gradient-checkpointing",)), ("fsdp", ("--lora-r", "4")),
    ("zero1", ()), ("zero2", ()), ("zero2", ("--gradient-checkpointing",)), ("zero2", ("--lora-r", "4")),
    ("zero3", ()), ("zero3", ("--lora-r", "4")),
], ids=["fsdp-plan", "fsdp-checkpointing", "fsdp-lora", "zero1-plan", "zero2-plan", "zero2-checkpointing", "zero2-lora",
        "zero3-plan", "zero3-lora"])
def test_two_sharded_processes_match_one_plain_process(tiny_chat_model_dir, order_data, tmp_path, sharding, extra):
    flags, note, backend = SHARDINGS[sharding]
    single, sharded = tmp_path / "one", tmp_path / "sharded"
    steps = ["--max-steps", "6", "--save-every", "3", *extra]
    assert main(args(tiny_chat_model_dir, order_data, single, *steps)) == 0
    result = freezetune(*args(tiny_chat_model_dir, order_data, sharded, *steps, "--num-processes", "2", *flags))
    assert result.returncode == 0, result.stderr[-3000:]
    assert note in result.stderr
    assert losses(sharded) == pytest.approx(losses(single), rel=1e-4)
    trained, reference = load_file(str(sharded / "trainable.safetensors")), load_file(str(single / "trainable.safetensors"))
    assert sorted(trained) == sorted(reference)  # whole tensors, only the trained ones
    for name, tensor in reference.items():
        assert trained[name].shape == tensor.shape
        torch.testing.assert_close(trained[name], tensor, rtol=1e-3, atol=1e-5)
    assert sorted(p.name for p in (sharded / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
    assert json.loads((sharded / "checkpoints" / "step-000006" / "state.json").read_text())["backend"] == backend
    config = json.loads((sharded / "manifest.json").read_text())["config"]
    assert (config["fsdp"], config["zero_stage"]) == {"fsdp": (True, 0), "zero1": (False, 1), "zero2": (False, 2), "zero3": (False, 3)}[sharding]
    assert len((sharded / "metrics.jsonl").read_text().splitlines()) == 6


def _rewind_to_step_3(run_dir: Path) -> None:
    """As if the run had been killed after its step-3 checkpoint."""
    shutil.rmtree(run_dir / "checkpoints" / "step-000006")
    (run_dir / "trainable.safetensors").unlink()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))


def test_a_sharded_run_replays_the_prefix_cache_like_one_process(tiny_chat_model_dir, order_data, tmp_path):
    single, sharded = tmp_path / "one", tmp_path / "fsdp"
    run = ["--epochs", "3", "--save-every", "0"]
    one = args(tiny_chat_model_dir, order_data, single, *run)
    one[one.index("--prefix-cache") + 1] = "memory"
    assert main(one) == 0
    two = args(tiny_chat_model_dir, order_data, sharded, *run, "--num-processes", "2", "--fsdp")
    two[two.index("--prefix-cache") + 1] = "memory"
    result = freezetune(*two)
    assert result.returncode == 0, result.stderr[-3000:]
    # epochs 2 and 3 skip the frozen blocks' compute, yet every process still enters them: no collective is left unpaired
    assert len(losses(sharded)) == 15
    assert losses(sharded) == pytest.approx(losses(single), rel=1e-4)


@pytest.mark.parametrize("first, then", [(("--num-processes", "2", "--fsdp"), ()),
                                         (("--num-processes", "2"), ("--num-processes", "2", "--fsdp")),
                                         (("--num-processes", "2"), ("--num-processes", "2")),
                                         (("--num-processes", "2", "--zero-stage", "2"), ()),
                                         (("--num-processes", "2"), ("--num-processes", "2", "--zero-stage", "2")),
                                         (("--num-processes", "2", "--zero-stage", "2"), ("--num-processes", "2", "--fsdp")),
                                         (("--num-processes", "2", "--zero-stage", "3"), ()),
                                         (("--num-processes", "2"), ("--num-processes", "2", "--zero-stage", "3"))],
                         ids=["fsdp2-to-plain1", "ddp2-to-fsdp2", "ddp2-to-ddp2", "zero2-to-plain1", "ddp2-to-zero2",
                              "zero2-to-fsdp2", "zero3-to-plain1", "ddp2-to-zero3"])
def test_checkpoints_resume_across_layouts(tiny_chat_model_dir, order_data, tmp_path, first, then):
    reference, run = tmp_path / "straight", tmp_path / "switched"
    steps = ["--max-steps", "6", "--save-every", "3"]
    assert main(args(tiny_chat_model_dir, order_data, reference, *steps)) == 0
    started = freezetune(*args(tiny_chat_model_dir, order_data, run, *steps, *first))
    assert started.returncode == 0, started.stderr[-3000:]
    _rewind_to_step_3(run)
    resumed = freezetune("train", "--resume", str(run), *then)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and "from step-000003" in resumed.stderr
    # the optimizer's moments came back too: steps 4-6 match the uninterrupted run
    assert losses(run) == pytest.approx(losses(reference), rel=1e-4)
    for name, tensor in load_file(str(reference / "trainable.safetensors")).items():
        torch.testing.assert_close(load_file(str(run / "trainable.safetensors"))[name], tensor, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("config, note", [("fsdp.yaml", "sharding: FSDP2 over 2 processes"),
                                          ("deepspeed.yaml", "sharding: DeepSpeed ZeRO-2 over 2 processes")])
def test_accelerate_launch_with_the_shipped_sharding_configs(tiny_chat_model_dir, order_data, tmp_path, config, note):
    out = tmp_path / "launched"
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
                               "-m", "freezetune", *args(tiny_chat_model_dir, order_data, out, "--max-steps", "3")],
                              capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert note in launched.stderr  # taken over, not quietly run as DDP
    assert len(losses(out)) == 3


FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}


@pytest.mark.parametrize("extra, message", [
    ({"FSDP_VERSION": "1"}, "FSDP config: fsdp_version 1; freezetune shards with FSDP2"),
    ({"FSDP_OFFLOAD_PARAMS": "true"}, "FSDP config: fsdp_offload_params is not supported"),
    ({"FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"}, "FSDP config: fsdp_auto_wrap_policy SIZE_BASED_WRAP"),
    ({"FSDP_ACTIVATION_CHECKPOINTING": "true"}, "use --gradient-checkpointing, which recomputes the trained blocks only"),
    ({"FSDP_TRANSFORMER_CLS_TO_WRAP": "GPT2Block"},
     "fsdp_transformer_layer_cls_to_wrap GPT2Block does not name this model's block class LlamaDecoderLayer"),
], ids=["fsdp1", "offload", "size-wrap", "activation-checkpointing", "wrong-block-class"])
def test_fsdp_configs_that_conflict_are_refused_before_training(tiny_chat_model_dir, order_data, tmp_path, monkeypatch,
                                                                capsys, extra, message):
    for name, value in {**FSDP_ENV, **extra}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WORLD_SIZE", "1")  # as under a launcher: no relaunch, the checks run here
    out = tmp_path / "refused"
    assert main(args(tiny_chat_model_dir, order_data, out, "--max-steps", "1")) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # above it: only the model-loading bar
    assert error.startswith("freezetune train: error: ") and message in error, error
    assert not out.exists()


DEEPSPEED_ENV = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                 "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
                 "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1", "ACCELERATE_GRADIENT_CLIPPING": "none",
                 "ACCELERATE_DEEPSPEED_CONFIG_FILE": "None"}


@pytest.mark.parametrize("extra, flags, message", [
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "0"}, (), "stage 0 is plain DDP: configs/ddp.yaml"),
    ({"ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, (), "give zero_stage in the accelerate config instead of a deepspeed_config_file"),
    ({"ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, (), "offload_optimizer_device cpu is not supported"),
    ({"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, (), "set gradient accumulation with --grad-accum"),
    ({"ACCELERATE_GRADIENT_CLIPPING": "1.0"}, (), "set gradient clipping with --max-grad-norm"),
    ({}, ("--fsdp",), "--fsdp conflicts with the DeepSpeed launch"),
    ({}, ("--zero-stage", "2", "--fsdp"), "--fsdp and --zero-stage are two ways of sharding"),
], ids=["zero0", "config-file", "offload", "grad-accum", "clipping", "fsdp-flag", "both-flags"])
def test_deepspeed_configs_that_conflict_are_refused_before_training(tiny_chat_model_dir, order_data, tmp_path, monkeypatch,
                                                                     capsys, extra, flags, message):
    for name, value in {**DEEPSPEED_ENV, **extra}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WORLD_SIZE", "1")
    out = tmp_path / "refused"
    assert main(args(tiny_chat_model_dir, order_data, out, "--max-steps", "1", *flags)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("freezetune train: error: ") and message in error, error
    assert not out.exists()


@pytest.mark.parametrize("flags, kind", [(("--fsdp",), "FSDP"), (("--zero-stage", "2"), "DeepSpeed")])
def test_fp16_with_sharding_is_refused(tiny_chat_model_dir, order_data, tmp_path, monkeypatch, capsys, flags, kind):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(args(tiny_chat_model_dir, order_data, tmp_path / "fp16", *flags, "--precision", "fp16")) == 2
    assert f"{kind} with fp16 would need a loss scaler across the shards" in capsys.readouterr().err


def test_the_launch_flag_is_taken_over_so_accelerate_runs_its_plain_path():
    from freezetune.distributed.processes import launch_sharding

    env = {**FSDP_ENV, "FSDP_RESHARD_AFTER_FORWARD": "false", "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer"}
    settings = launch_sharding(env)
    assert settings.reshard_after_forward is False and settings.wrap_classes == ("LlamaDecoderLayer",)
    assert "ACCELERATE_USE_FSDP" not in env
    assert launch_sharding({}) is None and launch_sharding({}, fsdp_flag=True).reshard_after_forward is True


def test_frozen_tensors_hold_no_gradient_and_no_optimizer_state_under_fsdp():
    probe = Path(__file__).parent / "fsdp_probe.py"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(probe)],
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    for report in reports:
        assert report["frozen_with_grad"] == []
        # each process holds half of the trained gradients, two AdamW moments for them, and half of every weight
        assert report["local_grad_numel"] == report["trainable_numel"] // 2
        assert report["optimizer_state_numel"] == 2 * report["local_grad_numel"]
        assert report["local_param_numel"] == report["total_numel"] // 2
