"""The learning-rate search: each strategy's searched rates train briefly (one worker process) and
are scored on a validation split of the training data; when the best lies at the grid's edge the
search goes one rate further that way, a bounded number of times. search.json records it all."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from freezetune.comparison.settings import CompareSettings, run_config
from freezetune.comparison.strategies import Strategy
from freezetune.runs.durable import write_json
from freezetune.runs.manifest import read_json, step_seconds

# a search whose best rate sits at its grid's edge tries one more rate this much further out
EXTEND_FACTOR = 4


def _val_loss(run_dir: Path) -> tuple[float | None, str | None]:
    failed = read_json(run_dir / "failed.json")
    if failed:
        return None, failed.get("reason")
    loss = ((read_json(run_dir / "eval.json") or {}).get("after") or {}).get("eval_loss")
    return (
        (loss, None)
        if loss is not None and math.isfinite(loss)
        else (None, "no finite validation loss")
    )


def _search_results(grid: list[float], configs) -> list[dict]:
    results = []
    for rate, config in zip(grid, configs):
        loss, reason = _val_loss(Path(config.out))
        results.append(
            {"lr": rate, "val_loss": loss, "reason": reason, "train_s": step_seconds(config.out)}
        )
    return results


def searched_strategies(settings: CompareSettings) -> list[Strategy]:
    """The strategies whose rate is not given: the search chooses it, on the validation split."""
    return [s for s in settings.strategies if settings.given_rate(s) is None]


def choose_rate(
    settings: CompareSettings, strategy: Strategy, train: Callable[[list, str], str], log
) -> float | str | None:
    """The strategy's rate: given, or the search's best by validation loss. ``train(configs,
    announce)`` trains the search runs not yet finished ("stopped" when asked to stop). None:
    stopped; a string: why the search failed."""
    group = settings.out / "runs" / strategy.slug
    given = settings.given_rate(strategy)
    if given is not None:
        group.mkdir(parents=True, exist_ok=True)
        write_json(
            group / "search.json", {"strategy": strategy.name, "chosen": given, "results": []}
        )
        return given
    grid = settings.search_grid(strategy)
    announce = (
        f"{strategy.name}: searching the learning rate over {', '.join(f'{r:g}' for r in grid)} "
        f"({settings.search_steps} step{'s' * (settings.search_steps != 1)} each, scored on "
        f"{settings.validation} validation example{'s' * (settings.validation != 1)})"
    )
    extended: list[float] = []
    while True:
        configs = [run_config(settings, strategy, rate) for rate in grid]
        outcome = train(configs, announce)
        if outcome == "stopped":
            return None
        results = _search_results(grid, configs)
        scored = [r for r in results if r["val_loss"] is not None]
        if not scored:
            return (
                f"every rate of the search failed (lr {results[0]['lr']:g}: {results[0]['reason']})"
            )
        chosen = min(scored, key=lambda r: r["val_loss"])["lr"]
        # the best may lie beyond the grid: extend it that way before choosing, a bounded number of times
        edge = chosen in (grid[0], grid[-1]) and len(grid) > 1
        if not edge or len(extended) >= settings.search_extensions:
            break
        step = EXTEND_FACTOR if chosen == grid[-1] else 1 / EXTEND_FACTOR
        extended.append(float(f"{chosen * step:.3g}"))
        announce = (
            f"{strategy.name}: lr {chosen:g} is the {'highest' if step > 1 else 'lowest'} rate tried; "
            f"extending the search to {extended[-1]:g}"
        )
        grid = sorted(grid + extended[-1:])
    train_s = sum(r["train_s"] for r in results)
    write_json(
        group / "search.json",
        {
            "strategy": strategy.name,
            "grid": grid,
            "extended": extended,
            "steps": settings.search_steps,
            "validation": settings.validation,
            "results": results,
            "chosen": chosen,
            "train_s": train_s,
            "at_grid_edge": edge,
        },
    )
    log(
        f"{strategy.name}: lr {chosen:g} chosen (validation loss "
        + ", ".join(
            f"{r['lr']:g}: {r['val_loss']:.4f}"
            if r["val_loss"] is not None
            else f"{r['lr']:g}: failed"
            for r in results
        )
        + f"; the search trained for {train_s:.0f} s)"
        + (
            f"; it is still the {'highest' if chosen == grid[-1] else 'lowest'} rate "
            f"after {len(extended)} extension{'s' * (len(extended) != 1)}, "
            "so a wider --lr-grid or more --search-extensions may find a better one"
            if edge
            else ""
        )
    )
    return chosen
