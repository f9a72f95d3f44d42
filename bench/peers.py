"""freezetune against TRL and LLaMA-Factory: the same fine-tuning job in each, timed side by side.

    .venv/bin/python bench/peers.py        # writes bench/results/peers.json (about 40 minutes here)
    .venv/bin/python bench/peers.py --peer-checkpointing off   # the control: peers-no-checkpointing.json

The job is one a user of any of the three would run: SmolLM2-135M (the embedded model), 120
instruction records (Alpaca fields; the standard library's documentation as the answers), loss on
the answers only, `freeze bottom 75%` (blocks 0-21 and the tied embeddings frozen, blocks 22-29 and
the final norm trained), at most 256 tokens, batch 4, AdamW (torch's) at 2e-4 with warmup and cosine
decay, fp32 on the CPU, 3 epochs, the trained weights saved at the end.

- freezetune: `freezetune train` with the records as a JSONL file (its defaults otherwise: prefix
  cache, target-only head), each step's time from its metrics.jsonl.
- TRL: SFTTrainer with the blocks frozen by hand (bench/peers/run_trl.py, this venv).
- LLaMA-Factory: freeze mode through `run_exp` (bench/peers/run_llamafactory.py) in its own venv,
  built by bench/peers/build_llamafactory.py from the pinned bench/peers/llamafactory.txt on first
  use (it needs transformers <= 5.6).

All three train on the same token ids and labels: freezetune renders the records once, the peers
get those rows pre-tokenized, and an untimed check asks each peer's own loader what it will train
on, and how many parameters train (all must agree). A round runs the three one after another, in
alternating order from round to round, so a busy spell hits all alike. Training time is the sum of
the optimizer steps as each tool's loop brackets them (batch fetch outside); process wall time is
the whole command, start-up, evaluation and save included; peak RSS is the process's own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / "peers"
LF_VENV = PEERS / "llamafactory"
TOOLS = ("freezetune", "trl", "llamafactory")
PLAN, FROZEN, BLOCKS = "freeze bottom 75%", 22, 30


def instruction_records(count: int) -> list[dict]:
    """Alpaca-style records: what a piece of the standard library does, answered by its documentation."""
    from freezetune.data.tasks import stdlib_docstrings

    docs = [record.fields["text"] for record in stdlib_docstrings()]
    random.Random(0).shuffle(docs)
    records = []
    for text in docs[:count]:
        title, body = text.split("\n\n", 1)
        records.append({"instruction": f"What does {title} do?", "input": "", "output": body})
    return records


def write_job(folder: Path, records: list[dict], model: str, args) -> dict:
    """The records as freezetune's input file, their token rows as the peers' job file."""
    from transformers import AutoTokenizer

    from freezetune.data.examples import IGNORE, sft_examples
    from freezetune.data.files import Record

    for name, part in (
        ("train.jsonl", records[: args.records]),
        ("eval.jsonl", records[args.records :]),
    ):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    tokenizer = AutoTokenizer.from_pretrained(model)
    data = sft_examples(
        [Record(r, f"record {i}") for i, r in enumerate(records[: args.records])],
        tokenizer,
        args.seq_len,
    )
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in data.examples]
    job = {
        "model": model,
        "rows": rows,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "lr": args.lr,
        "warmup_ratio": 0.1,
        "seed": 0,
        "frozen_blocks": FROZEN,
        "num_blocks": BLOCKS,
        "hidden_size": hidden_size(model),
        # None: each peer's default (both checkpoint); False: the peers without checkpointing
        "gradient_checkpointing": None if args.peer_checkpointing == "default" else False,
        # each row's loss tokens: a label predicted from the token before it
        "loss_tokens": sum(sum(label != IGNORE for label in r["labels"][1:]) for r in rows),
    }
    (folder / "job.json").write_text(json.dumps(job))
    return job


def hidden_size(model: str) -> int:
    return json.loads((Path(model) / "config.json").read_text())["hidden_size"]


def run(command: list[str], answer: Path | None = None) -> dict:
    """Run one command; its wall time, its own peak RSS, and the JSON answer it wrote."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        tail = output.decode(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{tail}")
    found = json.loads(answer.read_text()) if answer else {}
    return {**found, "process_wall_s": round(wall, 2), "peak_rss_bytes": usage.ru_maxrss * 1024}


def freezetune_run(folder: Path, out: Path, job: dict) -> dict:
    command = [
        str(Path(sys.executable).parent / "freezetune"), "train", "--model", "smollm2-135m",
        "--data", str(folder / "train.jsonl"), "--eval-data", str(folder / "eval.jsonl"),
        "--plan", PLAN, "--seq-len", str(job["seq_len"]), "--batch-size", str(job["batch_size"]),
        "--epochs", str(job["epochs"]), "--lr", str(job["lr"]), "--precision", "fp32",
        "--eval-generate", "0", "--out", str(out),
    ]  # fmt: skip
    measured = run(command)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "step_time_s" in s]
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        **measured,
        "step_times_s": [s["step_time_s"] for s in steps],
        "loss_tokens": sum(s["targets"] for s in steps),
        "trainable": manifest["trainable_params"],
    }


def peer_command(tool: str, folder: Path, mode: str, *paths: Path) -> list[str]:
    """A peer driver's command line: its venv's python, the script, the mode, the job (and for
    LLaMA-Factory the tokenized dataset), then ``paths`` (the run folder, the answer file)."""
    python, script = {
        "trl": (sys.executable, "run_trl.py"),
        "llamafactory": (str(LF_VENV / "bin" / "python"), "run_llamafactory.py"),
    }[tool]
    dataset = [str(folder / "lf-dataset")] if tool == "llamafactory" else []
    job = str(folder / "job.json")
    return [python, str(PEERS / script), mode, job, *dataset, *map(str, paths)]


def per_epoch(step_times: list[float], steps_per_epoch: int, epochs: int) -> list[float]:
    return [sum(step_times[e * steps_per_epoch : (e + 1) * steps_per_epoch]) for e in range(epochs)]


def check(folder: Path, job: dict) -> dict:
    """Each peer's own loader on the rows, and its trainable parameters; refuse to time a different job."""
    subprocess.run(peer_command("llamafactory", folder, "prepare"), check=True, capture_output=True)
    found = {}
    for tool in ("trl", "llamafactory"):
        answer = folder / f"{tool}-check.json"
        found[tool] = run(peer_command(tool, folder, "check", answer), answer)
        if not found[tool]["rows_equal"]:
            raise SystemExit(f"{tool} would train on other token ids or labels than freezetune")
        if job["gradient_checkpointing"] is False and found[tool]["gradient_checkpointing"]:
            raise SystemExit(f"{tool} would checkpoint, though the job turns it off")
    return {
        tool: {k: found[tool][k] for k in ("trainable", "gradient_checkpointing")} for tool in found
    }


def summary(runs: list[dict], steps_per_epoch: int, epochs: int) -> dict:
    epochs_s = [per_epoch(r["step_times_s"], steps_per_epoch, epochs) for r in runs]
    return {
        "training_s": statistics.median(sum(e) for e in epochs_s),
        "epoch_1_s": statistics.median(e[0] for e in epochs_s),
        "later_epochs_s": [statistics.median(e[i] for e in epochs_s) for i in range(1, epochs)],
        "process_wall_s": statistics.median(r["process_wall_s"] for r in runs),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--records", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument(
        "--peer-checkpointing",
        choices=("default", "off"),
        default="default",
        help="the peers' gradient checkpointing: their default (on), or off (a control)",
    )
    parser.add_argument(
        "--out", help="default: bench/results/peers.json (peers-no-checkpointing.json with off)"
    )
    args = parser.parse_args()
    name = "peers.json" if args.peer_checkpointing == "default" else "peers-no-checkpointing.json"
    args.out = args.out or str(BENCH / "results" / name)

    import torch

    from freezetune.models.loading import resolve_model_path
    from freezetune.runs.provenance import provenance

    model = str(resolve_model_path("smollm2-135m"))
    steps_per_epoch = args.records // args.batch_size
    runs, trainable = {tool: [] for tool in TOOLS}, {}
    with tempfile.TemporaryDirectory(prefix="freezetune-peers-") as tmp:
        folder = Path(tmp)
        builder = [sys.executable, str(PEERS / "build_llamafactory.py"), str(folder / "venv.json")]
        subprocess.run(builder, check=True)
        venv = json.loads((folder / "venv.json").read_text())
        built = f"built in {venv['seconds']:.0f} s" if venv["built"] else "reused"
        print(f"LLaMA-Factory venv: {built}")
        job = write_job(folder, instruction_records(args.records + 4), model, args)
        checked = check(folder, job)
        for rounds in range(args.rounds):
            for tool in TOOLS if rounds % 2 == 0 else TOOLS[::-1]:
                out, answer = folder / f"{tool}-{rounds}", folder / f"{tool}-{rounds}.json"
                if tool == "freezetune":
                    found = freezetune_run(folder, out, job)
                    if found["loss_tokens"] != job["loss_tokens"] * args.epochs:
                        raise SystemExit("freezetune trained on other loss tokens than the job's")
                else:
                    found = run(peer_command(tool, folder, "train", out, answer), answer)
                trainable.setdefault(tool, found.pop("trainable", None))
                if len(found["step_times_s"]) != steps_per_epoch * args.epochs:
                    raise SystemExit(f"{tool} ran {len(found['step_times_s'])} steps")
                runs[tool].append(found)
                print(f"round {rounds + 1} {tool:<13} training {sum(found['step_times_s']):7.1f} s, "
                      f"process {found['process_wall_s']:7.1f} s")  # fmt: skip
    trainable.update({tool: checked[tool]["trainable"] for tool in checked})
    # LLaMA-Factory leaves the final norm frozen (bench/peers/run_llamafactory.py says why)
    expected = {
        **dict.fromkeys(trainable, trainable["freezetune"]),
        "llamafactory": trainable["freezetune"] - job["hidden_size"],
    }
    if trainable != expected:
        raise SystemExit(f"the tools train other parameters than the job's: {trainable}")
    result = {
        "provenance": provenance(),
        "llamafactory_venv": venv,
        "job": {
            "model": "smollm2-135m",
            "records": args.records,
            "loss_tokens_per_epoch": job["loss_tokens"],
            "plan": PLAN,
            "trainable_params": trainable,
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "epochs": args.epochs,
            "steps_per_epoch": steps_per_epoch,
            "precision": "fp32",
            "threads": torch.get_num_threads(),
        },
        "gradient_checkpointing": {
            "freezetune": False,
            **{t: checked[t]["gradient_checkpointing"] for t in checked},
        },
        "rounds": args.rounds,
        "tools": {tool: summary(runs[tool], steps_per_epoch, args.epochs) for tool in TOOLS},
        "runs": runs,
        "ratios": ratios(runs, steps_per_epoch),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, value in result["ratios"].items():
        print(f"{name:<40} {value:.2f}")
    print(f"wrote {args.out}")


def ratios(runs: dict, steps_per_epoch: int) -> dict:
    """Each peer over freezetune, round by round (the runs of a round are side by side), median over rounds."""

    def median_ratio(peer: str, measure) -> float:
        return round(
            statistics.median(
                measure(p) / measure(f) for p, f in zip(runs[peer], runs["freezetune"])
            ),
            3,
        )

    measures = {
        "3_epochs": lambda r: sum(r["step_times_s"]),
        "epoch_1": lambda r: sum(r["step_times_s"][:steps_per_epoch]),
        "process_wall": lambda r: r["process_wall_s"],
    }
    return {
        f"{short}_over_freezetune_{name}": median_ratio(peer, measure)
        for peer, short in (("trl", "trl"), ("llamafactory", "lf"))
        for name, measure in measures.items()
    }


if __name__ == "__main__":
    main()
