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


def _error(row: dict, key: str) -> list[list[float]]:
    """Asymmetric error bar: exact match's Wilson interval, else ± the standard deviation over seeds."""
    if key == "exact_match" and row.get("exact_match_lo") is not None:
        return [
            [100 * (row["exact_match"] - row["exact_match_lo"])],
            [100 * (row["exact_match_hi"] - row["exact_match"])],
        ]
    spread = row.get(f"{key}_std") or 0.0
    return [[spread], [spread]]


def render_plots(
    rows: list[dict], folder: Path, on_frontier: list[dict], verdict: dict
) -> dict[str, str]:
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
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="Training and eval loss (first seed)")
    ax.legend(fontsize=8)
    figures["loss_curves"] = fig

    scored = [r for r in done if r["eval_loss"] is not None]
    if scored:
        use_em = verdict["quality_metric"] == "exact_match"
        y_key = "exact_match" if use_em else "eval_loss"
        x_key = verdict["cost_metric"] or "peak_memory_bytes"
        forgetting_known = x_key == "retain_kl"
        fig, ax = plt.subplots(figsize=(8, 5))
        peak = max((r["peak_memory_bytes"] or 0) for r in scored) or 1
        for row in scored:
            y = 100 * row["exact_match"] if use_em else row["eval_loss"]
            size = 60 + 600 * (row["peak_memory_bytes"] or 0) / peak
            points = ax.scatter(row[x_key], y, s=size, alpha=0.6)
            ax.errorbar(
                row[x_key],
                y,
                xerr=_error(row, x_key),
                yerr=_error(row, y_key),
                fmt="none",
                ecolor=points.get_facecolor()[0],
                capsize=3,
            )
            ax.annotate(
                row["strategy"],
                (row[x_key], y),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
            )
        line = sorted(on_frontier, key=lambda r: r[x_key])
        if line:
            ax.plot(
                [r[x_key] for r in line],
                [100 * r["exact_match"] if use_em else r["eval_loss"] for r in line],
                "k--",
                linewidth=1,
                label="Pareto frontier",
            )
            ax.legend(fontsize=8)
        ax.set(
            xlabel="KL divergence from the base on retain text (forgetting)"
            if forgetting_known
            else "peak memory (bytes)",
            ylabel="exact match (%, 95% interval)"
            if use_em
            else "eval loss (lower is better, ± sd over seeds)",
            title="Task quality against forgetting (marker size: peak memory; bars: intervals)",
        )
        figures["quality_vs_forgetting"] = fig

    searched = [
        r for r in rows if any(p.get("val_loss") is not None for p in r.get("lr_search") or [])
    ]
    if searched:
        fig, ax = plt.subplots(figsize=(8, 4))
        for row in searched:
            points = sorted(
                (p["lr"], p["val_loss"]) for p in row["lr_search"] if p.get("val_loss") is not None
            )
            ax.plot(*zip(*points), "o-", label=row["strategy"])
            ax.scatter(
                [row["lr"]], [dict(points).get(row["lr"])], s=120, facecolors="none", edgecolors="k"
            )
        ax.set(
            xscale="log",
            xlabel="learning rate",
            ylabel="validation loss (circled: chosen)",
            title="Learning-rate search (validation split of the training data)",
        )
        ax.legend(fontsize=8)
        figures["lr_search"] = fig

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
        ax.set_xticks(
            range(len(columns)), [c.replace("layer ", "") for c in columns], rotation=90, fontsize=7
        )
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
