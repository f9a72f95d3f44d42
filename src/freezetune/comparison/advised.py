"""`--strategy advise`: the advisor, with its pilot runs, on the comparison's own model and training
data, before anything else trains; its pick becomes one more plan the comparison measures.

The pilots are scored on the comparison's validation split (carved from the training data, never
the held-out items the verdict uses) and its retain set. What the advice found and what it cost are
kept in advice.json, so that a resumed comparison trains the same plan without advising again and
the report counts the advice's time apart from training.
"""

from __future__ import annotations

import time
from dataclasses import replace

from freezetune.comparison.rate_search import searched_strategies
from freezetune.comparison.settings import CompareSettings
from freezetune.comparison.strategies import Strategy
from freezetune.plans.language import FreezePlan
from freezetune.runs.durable import write_json
from freezetune.runs.manifest import read_json


def _advice(settings: CompareSettings, loaded, strategy: Strategy, log) -> dict:
    from freezetune.advice.advisor import advise
    from freezetune.advice.pilot_data import hold_out, pilot_data
    from freezetune.advice.pilots import PilotBudget, PilotRequest
    from freezetune.training.session import run_data

    config, started = settings.base_config, time.perf_counter()
    # the rate searches' validation split, when the comparison has one; else one carved the same way
    searched = settings.validation and bool(searched_strategies(settings))
    train, held, _ = run_data(loaded.tokenizer, config, settings.validation if searched else 0)
    request = None
    if strategy.pilot is not None:
        kept, validation = (train.examples, held.examples) if searched else hold_out(train)
        data = pilot_data(
            loaded, kept, validation, settings.retain, config.batch_size, config.seq_len
        )
        request = PilotRequest(data, PilotBudget(*strategy.pilot))
    info = advise(
        loaded,
        train.examples,
        strategy.budget,
        config.seq_len,
        config.batch_size,
        pilots=request,
        log=log,
    )
    return {**info, "seconds": round(time.perf_counter() - started, 1)}


def advise_strategies(settings: CompareSettings, loaded, log) -> None:
    """Replace each advise strategy by its pick (advised now, or read back from advice.json)."""
    if not any(strategy.advise for strategy in settings.strategies):
        return
    path = settings.out / "advice.json"
    kept = read_json(path) or {}
    for index, strategy in enumerate(settings.strategies):
        if not strategy.advise:
            continue
        info = kept.get(strategy.name)
        if info is None:
            log(f"{strategy.name}: advising on the comparison's training data")
            info = kept[strategy.name] = _advice(settings, loaded, strategy, log)
            write_json(path, kept)
        else:
            log(f"{strategy.name}: advised earlier ({path}), '{info['plan']}'")
        settings.strategies[index] = replace(
            strategy,
            name=f"{strategy.name} → {info['plan']}",
            plan=info["plan"],
            rules=FreezePlan.parse(info["plan"]),
        )


def advice_seconds(out) -> float:
    """What the advise strategies of the comparison in ``out`` spent: probes, pilots, retain set."""
    return sum(info.get("seconds", 0.0) for info in (read_json(out / "advice.json") or {}).values())
