"""The report's plots (matplotlib, no display): loss curves, the quality-forgetting frontier,
step time and memory, and per-layer weight change."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _layer_order(key: str) -> tuple[int, int]:
    match = re.fullmatch(r"layer (\d+)", key)
    if match:
        return (1, int(match.group(1)))
    return ({"embeddings": 0, "norm": 2, "head": 3}.get(key, 4), 0)


def render_plots(rows: list[dict], folder: Path, on_frontier: list[dict]) -> dict[str, str]:
    """Write PNGs into ``folder``; return name -> base64 PNG for embedding."""
    plt = _figure()
    folder.mkdir(parents=True, exist_ok=True)
    done = [r for r in rows if r["status"] == "finished"]
    figures = {}

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row in done:
        if row["loss_curve"]:
            steps, losses = zip(*row["loss_curve"])
            ax.plot(steps, losses, label=f"{row['strategy']} (train)")
        if row.get("eval_curve"):
            steps, losses = zip(*row["eval_curve"])
            ax.plot(steps, losses, "o--", label=f"{row['strategy']} (eval)")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="Training and eval loss")
    ax.legend(fontsize=8)
    figures["loss_curves"] = fig

    scored = [r for r in done if r["eval_loss"] is not None]
    if scored:
        use_em = all(r["exact_match"] is not None for r in scored)
        forgetting_known = all(r["retain_kl"] is not None for r in scored)
        x_key = "retain_kl" if forgetting_known else "peak_memory_bytes"
        fig, ax = plt.subplots(figsize=(8, 5))
        peak = max((r["peak_memory_bytes"] or 0) for r in scored) or 1
        for row in scored:
            y = 100 * row["exact_match"] if use_em else row["eval_loss"]
            size = 60 + 600 * (row["peak_memory_bytes"] or 0) / peak
            ax.scatter(row[x_key], y, s=size, alpha=0.6)
            ax.annotate(row["strategy"], (row[x_key], y), textcoords="offset points", xytext=(6, 6), fontsize=8)
        line = sorted(on_frontier, key=lambda r: r[x_key])
        if line:
            ax.plot([r[x_key] for r in line], [100 * r["exact_match"] if use_em else r["eval_loss"] for r in line],
                    "k--", linewidth=1, label="Pareto frontier")
            ax.legend(fontsize=8)
        ax.set(xlabel="KL divergence from the base on retain text (forgetting)" if forgetting_known else "peak memory (bytes)",
               ylabel="exact match (%)" if use_em else "eval loss (lower is better)",
               title="Task quality against forgetting (marker size: peak memory)")
        figures["quality_vs_forgetting"] = fig

    if done:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        names = [r["strategy"] for r in done]
        left.barh(names, [r["step_time_s"] or 0 for r in done], color="tab:blue")
        left.set(xlabel="mean step time (s)", title="Step time")
        right.barh(names, [(r["peak_memory_bytes"] or 0) / 2**30 for r in done], color="tab:orange")
        right.set(xlabel="peak memory (GiB)", title="Peak memory")
        right.set_yticklabels([])
        fig.tight_layout()
        figures["time_and_memory"] = fig

    drifted = [r for r in done if r.get("layer_drift")]
    if drifted:
        columns = sorted({k for r in drifted for k in r["layer_drift"]}, key=_layer_order)
        grid = [[r["layer_drift"].get(c, 0.0) for c in columns] for r in drifted]
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.5 * len(drifted)))
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(drifted)), [r["strategy"] for r in drifted])
        ax.set_xticks(range(len(columns)), [c.replace("layer ", "") for c in columns], rotation=90, fontsize=7)
        ax.set(title="Relative weight change ||dW|| / ||W|| per layer")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        figures["layer_drift"] = fig

    encoded = {}
    for name, fig in figures.items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        (folder / f"{name}.png").write_bytes(buffer.getvalue())
        encoded[name] = base64.b64encode(buffer.getvalue()).decode("ascii")
    return encoded
