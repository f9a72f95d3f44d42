"""`freezetune train`: one run folder with manifest, trained tensors, metrics and eval; with
--num-processes N (or sharding) outside a distributed launch, the same command again under torchrun."""

from __future__ import annotations

import os
import signal
import sys

from freezetune.cli.console import say
from freezetune.config.run import TrainConfig
from freezetune.errors import FreezetuneError
from freezetune.runs.stop import StopFlag

RELAUNCHED = "FREEZETUNE_WORKER"  # set for the processes freezetune itself starts through torchrun


def _relaunch(config: TrainConfig, argv: list[str]) -> str:
    """--num-processes N (or sharding) outside a distributed launch: start N processes through torchrun."""
    import subprocess

    args = [
        a
        for i, a in enumerate(argv)
        if a != "--num-processes" and (i == 0 or argv[i - 1] != "--num-processes")
    ]
    args = [a for a in args if not a.startswith("--num-processes=")]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={config.num_processes}",
        "-m",
        "freezetune",
        *args,
    ]
    code = subprocess.call(command, env={**os.environ, RELAUNCHED: "1"})
    if code:
        raise FreezetuneError(
            f"the {config.num_processes}-process run failed (exit status {code}); see the messages above"
        )
    return f"finished with {config.num_processes} process{'es' if config.num_processes > 1 else ''}"


def run_train(config: TrainConfig, argv: list[str]) -> str:
    """`freezetune train`: one run folder with manifest, trained tensors, metrics and eval."""
    from freezetune.distributed.processes import die_with_parent, launch_sharding, process_state
    from freezetune.distributed.sharding import FsdpSettings
    from freezetune.training.loop import TrainingLoop
    from freezetune.training.session import open_session

    # compare's search runs take both (validation to score, the eval data for their siblings); a user's run reads one
    if config.eval_data and config.validation and not config.resume:
        raise FreezetuneError(
            f"--eval-data and --validation {config.validation} both choose what the run is scored on: "
            "give one (with --validation, --eval-data would not be read)"
        )
    # torchrun puts its workers in a session of their own: they go when it goes
    if os.environ.get(RELAUNCHED):
        die_with_parent(signal.SIGKILL)

    # before accelerate reads the launch
    sharding = launch_sharding(os.environ, config.fsdp, config.zero_stage)
    # recorded in the manifest, whichever way it was asked for
    config.fsdp, config.zero_stage = (
        isinstance(sharding, FsdpSettings),
        getattr(sharding, "stage", 0),
    )
    if (config.num_processes > 1 or sharding is not None) and "WORLD_SIZE" not in os.environ:
        return _relaunch(config, argv)

    session = open_session(config, sharding=sharding)
    if process_state().is_main_process:
        say(f"run folder: {session.run_dir}")
    with StopFlag() as stop:
        result = TrainingLoop(session, log=say).run(should_stop=lambda: stop.requested)
    if not process_state().is_main_process:
        return ""  # the main process reports for all of them
    if result["status"] != "finished":
        return f"interrupted at step {result['step']}: {result['run_dir']}"
    before, after = result["before"], result["after"]
    summary = f"eval loss {before['eval_loss']:.4f} -> {after['eval_loss']:.4f}"
    if "eval_accuracy" in after:  # DPO: held-out pairs
        summary = f"eval DPO loss {before['eval_loss']:.4f} -> {after['eval_loss']:.4f}, reward "
        summary += f"accuracy {100 * after['eval_accuracy']:.1f}%, policy prefers chosen "
        summary += f"{100 * before['eval_policy_accuracy']:.1f}% -> {100 * after['eval_policy_accuracy']:.1f}%"
    if "exact_match" in after:
        summary += (
            f", exact match {100 * before['exact_match']:.1f}% -> {100 * after['exact_match']:.1f}%"
        )
    steps = f"{result['step']} step{'s' * (result['step'] != 1)}"
    return f"finished {steps}: {summary}\nrun: {result['run_dir']}"
