"""What the first-step check costs, in steps of `freeze bottom 75%` on the embedded model, and
where the time before a run's first step goes.

    .venv/bin/python bench/first_step_check.py       # writes bench/results/first_step_check.json

The run is the one `freezetune train --model smollm2-135m --plan "freeze bottom 75%"` opens
(`open_session`, `TrainingLoop`), at --seq-len 256 --batch-size 4 on the built-in task. In each
round, side by side in this process, one step runs as every later step of a run does (no check),
and one as the first step does: the check's snapshot taken before it, its gradient and update
checks inside it. Both ways of checking frozen tensors are timed: by version counter (what one
process and DDP use, since torch's AdamW writes through the counters) and by hashing every
frozen weight (what FSDP and ZeRO use). The cost of a check is the median checked step minus
the median plain step, reported as a multiple of the plain step. Start-up: the imports `train`
needs, timed in a fresh interpreter, and the parts of `open_session` (the seconds it records in
every run's manifest as `startup_s`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from freezetune.config.run import TrainConfig
from freezetune.runs.durable import write_json
from freezetune.runs.provenance import provenance
from freezetune.training.guards import FirstStepGuard
from freezetune.training.loop import TrainingLoop
from freezetune.training.session import open_session

PLAN, SEQ_LEN, BATCH = "freeze bottom 75%", 256, 4
RESULTS = Path(__file__).parent / "results" / "first_step_check.json"
IMPORTS = (
    "import time; started = time.perf_counter(); "
    "import freezetune.training.loop, freezetune.training.session; "
    "print(time.perf_counter() - started)"
)


def import_seconds() -> float:
    """The imports of `train`'s library path, in a fresh interpreter (the shell command's own start aside)."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS], capture_output=True, text=True, check=True
    )
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=7, help="rounds of (plain, light, full) steps"
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(
            model="smollm2-135m",
            plan=PLAN,
            seq_len=SEQ_LEN,
            batch_size=BATCH,
            max_steps=3 * args.rounds + 1,
            eval_generate=0,
            prefix_cache="off",
            out=str(Path(folder) / "run"),
        )
        imports = import_seconds()
        session = open_session(config)
        loop = TrainingLoop(session, log=lambda _: None, progress=False)
        loop.train_step(loop.micro_batches(0), config.max_grad_norm)  # one-time costs: allocation
        times: dict[str, list[float]] = {"plain": [], "light": [], "full": []}
        step = 1
        for _ in range(args.rounds):
            for way in times:  # the three side by side, in turn, so drift hits each alike
                micro = loop.micro_batches(step)
                started = time.perf_counter()
                guard = None
                if way != "plain":
                    names = set(loop.trainable.applied)
                    guard = FirstStepGuard(
                        loop.model, names, loop.backend.grad, loop.backend.view, way == "light"
                    )
                loop.train_step(micro, config.max_grad_norm, guard)
                times[way].append(time.perf_counter() - started)
                step += 1
    medians = {way: statistics.median(values) for way, values in times.items()}
    plain = medians["plain"]
    result = {
        "provenance": provenance(),
        "measured": "train_step with and without FirstStepGuard, as TrainingLoop runs them",
        "plan": PLAN,
        "seq_len": SEQ_LEN,
        "batch_size": BATCH,
        "rounds": args.rounds,
        "step_time_s": {way: round(value, 4) for way, value in medians.items()},
        "step_times_s": times,
        "startup_s": {"imports": round(imports, 3), **session.startup_s},
        "ratios": {
            "light_check_in_steps": round((medians["light"] - plain) / plain, 3),
            "full_check_in_steps": round((medians["full"] - plain) / plain, 3),
        },
    }
    write_json(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("step_time_s", "startup_s", "ratios")}))


if __name__ == "__main__":
    main()
