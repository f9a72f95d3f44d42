"""Does the advice hold up? `freezetune advise` with its pilot runs, checked by the `compare` a user would run.

    .venv/bin/python bench/advice.py        # writes bench/results/advice.json (an hour on 2 CPU cores)

Three tasks the project generates, on the embedded SmolLM2-135M:

- dispatch: the built-in SFT task (read quantity, colour, city and day into one line);
- tickets: short-answer classification (route a customer's message to one of five queues, one-word
  answers: data/tickets.py), written to JSONL files as a user's data would be;
- cpt: continued pre-training on the standard library's docstrings (`--objective cpt`, built in).

Per task, `freezetune advise smollm2-135m ... --pilot` runs as a user runs it (its own process; the
wall time is the process's), then `freezetune compare` checks its pick against full fine-tuning,
LoRA and `freeze bottom 75%`, each with its rate searched, 2 seeds, the verdict on held-out loss
against KL from the base. The advised plan is on the measured frontier when the verdict lists it
there (not dominated under its statistics). Each task's result is written as soon as it is done,
and a rerun skips the tasks already in the results file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FREEZETUNE = [sys.executable, "-m", "freezetune"]
SHARED = ["--seq-len", "256", "--batch-size", "4"]
COMPARE = [
    "--max-steps",
    "16",
    "--search-steps",
    "8",
    "--validation",
    "32",
    "--eval-generate",
    "0",
    "--seeds",
    "2",
]
OTHERS = ["full", "lora", "freeze bottom 75%"]


def task_args(task: str, folder: Path) -> tuple[list[str], list[str]]:
    """The training-data flags of ``task`` and its held-out flags (files written under ``folder``)."""
    if task == "dispatch":
        return [], []
    if task == "cpt":
        return ["--objective", "cpt"], []
    from freezetune.data.tickets import ticket_task

    train, held = ticket_task()
    for name, records in (("train", train), ("eval", held)):
        (folder / f"tickets-{name}.jsonl").write_text(
            "".join(json.dumps(r.fields) + "\n" for r in records)
        )
    return ["--data", str(folder / "tickets-train.jsonl")], [
        "--eval-data",
        str(folder / "tickets-eval.jsonl"),
    ]


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def measure(task: str, folder: Path) -> dict:
    data, held = task_args(task, folder)  # advise sees the training data only
    advise_s, out = timed(
        FREEZETUNE + ["advise", "smollm2-135m", *data, *SHARED, "--pilot", "--json"]
    )
    advice = json.loads(out)
    print(f"{task}: advise picked '{advice['plan']}' in {advise_s:.0f} s", flush=True)
    strategies = [s for plan in [advice["plan"], *OTHERS] for s in ("--strategy", plan)]
    compare_s, _ = timed(
        FREEZETUNE
        + [
            "compare",
            "--model",
            "smollm2-135m",
            *data,
            *held,
            *SHARED,
            *COMPARE,
            *strategies,
            "--out",
            str(folder / f"compare-{task}"),
        ]
    )
    results = json.loads((folder / f"compare-{task}" / "results.json").read_text())
    verdict = results["verdict"]
    print(f"{task}: compare took {compare_s:.0f} s; frontier {verdict['frontier']}", flush=True)
    rows = [
        {
            key: run.get(key)
            for key in (
                "strategy",
                "lr",
                "eval_loss",
                "eval_loss_ci",
                "retain_kl",
                "retain_kl_ci",
                "peak_memory_bytes",
                "step_time_s",
            )
        }
        for run in results["runs"]
    ]
    return {
        "advised_plan": advice["plan"],
        "evidence_plan": advice["evidence_plan"],
        "advice_reason": advice["reason"],
        "pilots": advice["pilots"],
        "pilot_frontier": advice["pilot_frontier"],
        "pilot_rate": advice["pilot_rate"],
        "advise_wall_s": round(advise_s, 1),
        "compare_wall_s": round(compare_s, 1),
        "advise_over_compare": round(advise_s / compare_s, 3),
        "verdict_metric": verdict["metric"],
        "frontier": verdict["frontier"],
        "dominated": verdict["dominated"],
        "on_frontier": advice["plan"] in verdict["frontier"],
        "verdict": verdict["sentence"],
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["dispatch", "tickets", "cpt"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "advice.json"))
    args = parser.parse_args()
    from freezetune.runs.durable import write_json
    from freezetune.runs.provenance import provenance

    out = Path(args.out)
    kept = json.loads(out.read_text()) if out.is_file() else {}
    tasks = kept.get("tasks", {})
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            if task in tasks:
                print(f"{task}: in {out} already, skipped")
                continue
            tasks[task] = measure(task, Path(tmp))
            write_json(
                out,
                {
                    "provenance": provenance(),
                    "model": "smollm2-135m",
                    "advise": SHARED + ["--pilot"],
                    "compare": SHARED + COMPARE,
                    "others": OTHERS,
                    "tasks": tasks,
                },
            )


if __name__ == "__main__":
    main()
