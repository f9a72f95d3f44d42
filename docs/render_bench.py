"""The benchmark tables of docs/ and the README's DPO table, rendered from bench/results/*.json.

    .venv/bin/python docs/render_bench.py

rewrites each table's rows (a ratio row keeps its target, which is the project's, not a measurement);
tests/test_readme_numbers.py fails when a page and its file disagree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
RESULTS = ROOT / "bench" / "results"


def _rows(page: str, header: str, rows: list[str]) -> str:
    """``page`` with the rows under the table whose header line is ``header`` replaced by ``rows``."""
    start = page.index(header + "\n")
    body = page.index("\n", page.index("\n", start) + 1) + 1  # after the header and its |---| line
    end = page.find("\n\n", body)
    return page[:body] + "\n".join(rows) + page[end if end >= 0 else len(page) :]


def _targets(page: str) -> dict[str, str]:
    return {
        m[0]: m[1] for m in re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", page, re.MULTILINE)
    }


def performance(page: str) -> str:
    step = json.loads((RESULTS / "step_time.json").read_text())
    reference = step["paths"]["freeze75"]["step_time_s"]
    page = _rows(
        page,
        "| path | step s | vs `freeze75` | peak MiB |",
        [
            f"| `{path}` | {v['step_time_s']:.2f} | {v['step_time_s'] / reference:.2f} "
            f"| {v['peak_memory_bytes'] / 2**20:,.0f} |"
            for path, v in step["paths"].items()
        ],
    )
    targets = _targets(page)
    page = _rows(
        page,
        "| ratio | measured | target | FLOP ideal |",
        [
            f"| `{name}` | {value:.2f} | {targets.get(name, '—').strip()} | "
            f"{step['ideal'][name]:.2f} |"
            if name in step.get("ideal", {})
            else f"| `{name}` | {value:.2f} | {targets.get(name, '—').strip()} | — |"
            for name, value in step["ratios"].items()
        ],
    )
    memory = json.loads((RESULTS / "memory.json").read_text())
    header = "| strategy | precision | stored (frozen / trained) | estimate GiB | measured GiB | measured / estimate |"
    page = _rows(
        page,
        header,
        [
            f"| {r['strategy']} | {r['precision']} | {r['dtypes']['frozen']} / {r['dtypes']['trainable']} | "
            f"{r['estimate_bytes'] / 2**30:.2f} | {r['measured_bytes'] / 2**30:.2f} | "
            f"{r['measured_bytes'] / r['estimate_bytes']:.2f} |"
            for r in memory["rows"]
        ],
    )
    ratio = memory["ratios"]["bf16_over_fp32_freeze75"]
    return re.sub(r"peaks at [0-9.]+× its fp32 peak", f"peaks at {ratio:.2f}× its fp32 peak", page)


def integration(page: str) -> str:
    result = json.loads((RESULTS / "integration.json").read_text())
    steps = result["steps"]
    page = _rows(
        page,
        "| script | step s | steps timed |",
        [
            f"| {label} | {steps[name]['step_time_s']:.2f} | {len(steps[name]['step_times_s'])} |"
            for name, label in (("trl_default", "frozen by hand"), ("freeze", "with `freeze()`"))
        ],
    )
    targets = _targets(page)
    return _rows(
        page,
        "| ratio | measured | target |",
        [
            f"| `{name}` | {value:.2f} | {targets.get(name, '—').strip()} |"
            for name, value in result["ratios"].items()
        ],
    )


DPO_RUNS = {
    "freeze": "freezetune `freeze bottom 75%`",
    "full": "freezetune `train all`",
    "lora": "freezetune LoRA r=16",
    "trl_freeze": "TRL `DPOTrainer`, frozen by hand",
    "trl_freeze_checkpointing": "the same, TRL's default checkpointing",
}
DPO_README_RUNS = ("freeze", "full", "trl_freeze")


def dpo_rows(result: dict, runs=tuple(DPO_RUNS)) -> list[str]:
    """The DPO table's rows: every model of bench/results/dpo.json, the ``runs`` named."""
    return [
        f"| {model} | {DPO_RUNS[name]} | {row['reference_bytes'] / 2**20:,.0f} | "
        f"{row['peak_bytes'] / 2**30:.2f} | {row['step_time_s']:.2f} |"
        for model, measured in result["models"].items()
        for name, row in measured["runs"].items()
        if name in runs
    ]


def dpo_ratio_rows(result: dict) -> list[str]:
    models = list(result["models"].values())
    return [
        f"| `{name}` | " + " | ".join(f"{m['ratios'][name]:.2f}" for m in models) + " |"
        for name in models[0]["ratios"]
    ]


def preferences(page: str, runs=tuple(DPO_RUNS)) -> str:
    result = json.loads((RESULTS / "dpo.json").read_text())
    page = _rows(
        page, "| model | run | reference MiB | peak GiB | step s |", dpo_rows(result, runs)
    )
    header = "| ratio | " + " | ".join(result["models"]) + " |"
    return _rows(page, header, dpo_ratio_rows(result))


ADVICE_HEADER = (
    "| task | advised plan | frontier of the compare | advice on it | advise s | compare s | "
    "advise / compare |"
)
ADVICE_ROWS_HEADER = "| task | strategy | lr | eval loss | KL from base | peak GiB |"


def advice(page: str) -> str:
    """The advice-checked-by-compare tables, from bench/results/advice.json."""
    result = json.loads((RESULTS / "advice.json").read_text())
    summary = [
        f"| {task} | `{t['advised_plan']}` | {', '.join(f'`{s}`' for s in t['frontier'])} | "
        f"{'yes' if t['on_frontier'] else 'no'} | {t['advise_wall_s']:.0f} | {t['compare_wall_s']:.0f} | "
        f"{t['advise_over_compare']:.2f} |"
        for task, t in result["tasks"].items()
    ]
    rows = [
        f"| {task} | {row['strategy']} | {row['lr']:g} | {row['eval_loss']:.3f} | {row['retain_kl']:.3f} | "
        f"{row['peak_memory_bytes'] / 2**30:.2f} |"
        for task, t in result["tasks"].items()
        for row in t["rows"]
    ]
    page = _rows(page, ADVICE_HEADER, summary)
    return _rows(page, ADVICE_ROWS_HEADER, rows) if ADVICE_ROWS_HEADER in page else page


PEERS_HEADER = "| | freezetune | TRL | LLaMA-Factory |"
PEERS_RATIOS_HEADER = "| peer over freezetune | measured | target |"


def peers(page: str) -> str:
    """The side-by-side table of bench/results/peers.json and its ratios (targets kept from the page)."""
    result = json.loads((RESULTS / "peers.json").read_text())
    names = ("freezetune", "trl", "llamafactory")
    tools = [result["tools"][t] for t in names]
    checkpointing = [result["gradient_checkpointing"][t] for t in names]
    trainable = [result["job"]["trainable_params"][t] for t in names]

    def row(label: str, cells) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    later = ", ".join(f"{i + 2}" for i in range(len(tools[0]["later_epochs_s"])))
    page = _rows(
        page,
        PEERS_HEADER,
        [
            row("training, epoch 1 (s)", [f"{t['epoch_1_s']:.0f}" for t in tools]),
            row(
                f"training, epochs {later} (s)",
                [", ".join(f"{e:.0f}" for e in t["later_epochs_s"]) for t in tools],
            ),
            row(
                f"training, {result['job']['epochs']} epochs (s)",
                [f"{t['training_s']:.0f}" for t in tools],
            ),
            row("process wall time (s)", [f"{t['process_wall_s']:.0f}" for t in tools]),
            row("peak RSS (GiB)", [f"{t['peak_rss_bytes'] / 2**30:.2f}" for t in tools]),
            row("trainable parameters", [f"{n:,}" for n in trainable]),
            row("gradient checkpointing", ["on" if c else "off" for c in checkpointing]),
        ],
    )
    targets = _targets(page)
    return _rows(
        page,
        PEERS_RATIOS_HEADER,
        [
            f"| `{name}` | {value:.2f} | {targets.get(name, '—').strip()} |"
            for name, value in result["ratios"].items()
        ],
    )


PEERS_CONTROL_HEADER = "| peer over freezetune, peers without checkpointing | measured |"


def peers_control(page: str) -> str:
    """The ratios of the control run (bench/results/peers-no-checkpointing.json)."""
    result = json.loads((RESULTS / "peers-no-checkpointing.json").read_text())
    rows = [f"| `{name}` | {value:.2f} |" for name, value in result["ratios"].items()]
    return _rows(page, PEERS_CONTROL_HEADER, rows)


def main() -> None:
    pages = [
        ("README.md", peers),
        ("README.md", peers_control),
        ("docs/advise.md", advice),
        ("README.md", advice),
        ("docs/performance.md", performance),
        ("docs/python.md", integration),
        ("docs/preferences.md", preferences),
        ("README.md", lambda page: preferences(page, DPO_README_RUNS)),
    ]
    for name, render in pages:
        path = ROOT / name
        path.write_text(render(path.read_text()))
        print(f"{name}: tables rewritten from bench/results/")


if __name__ == "__main__":
    main()
