"""Everything that can be wrong with a comparison, found before its first run trains: the strategies
against the model, the retain and validation sets, and the output folder, whose compare.json pins
what all runs share (model, data, eval and retain sets) so that one folder cannot mix two
comparisons."""

from __future__ import annotations

import json
from pathlib import Path

from freezetune.comparison.rate_search import searched_strategies
from freezetune.comparison.settings import CompareSettings
from freezetune.comparison.strategies import Strategy
from freezetune.config.fields import flag_of
from freezetune.data.files import content_hash
from freezetune.errors import FreezetuneError, missing_file
from freezetune.models.loading import load_model, require_causal_lm
from freezetune.models.positions import check_seq_len
from freezetune.plans.anatomy import find_anatomy
from freezetune.plans.resolution import ResolvedPlan, resolve
from freezetune.runs.manifest import meaning_hashes, model_hash, read_json
from freezetune.training.lora import check_targets


def fingerprint(settings: CompareSettings, base_sha256: str, model_files: dict[str, str]) -> dict:
    """What the base reference and every run share; a rerun with any of it changed is another comparison.
    Each run's own settings (rate, seed, steps, warmup...) are checked run by run (runner.py)."""
    config = settings.base_config
    return {
        "model": settings.model,
        "model_sha256": base_sha256,
        "model_files": model_files,
        "objective": config.objective,
        "data": content_hash(config.data),
        "eval_data": content_hash(config.eval_data),
        "retain": content_hash(settings.retain) if settings.retain else "built-in prompts",
        "seq_len": config.seq_len,
        "eval_generate": config.eval_generate,
        "max_new_tokens": config.max_new_tokens,
    }


# what a report writes in its folder
REPORT_FILES = ("report.html", "report.md", "results.json", "results.csv", "plots")


def check_report_folder(out: Path) -> None:
    """A report may go into ``out``: a folder holding none of a report's files, or an earlier
    freezetune report's (re-rendered with another margin, say), never the user's own."""
    if out.exists() and not out.is_dir():
        raise FreezetuneError(f"--out {out} is a file, not a folder")
    theirs = [name for name in REPORT_FILES if (out / name).exists()]
    try:
        earlier = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = None
    if theirs and not (isinstance(earlier, dict) and {"runs", "verdict"} <= set(earlier)):
        raise FreezetuneError(
            f"--out {out} holds {theirs[0]}, which the report would write over, and no freezetune "
            "report (its results.json): choose another --out"
        )


def check_output_folder(settings: CompareSettings, pinned: dict) -> None:
    state_path = settings.out / "compare.json"
    # a new comparison: its report must not write over the user's files
    if not state_path.is_file():
        check_report_folder(settings.out)
        return
    earlier = read_json(state_path)
    if not isinstance(earlier, dict) or not isinstance(earlier.get("fingerprint"), dict):
        raise FreezetuneError(
            f"{state_path}: damaged; it does not say which comparison {settings.out} holds"
        )
    earlier = earlier["fingerprint"]
    changed = [k for k in pinned if earlier.get(k) != pinned[k]]
    # the same --model, but another model
    if "model_sha256" in changed or "model_files" in changed:
        was, now = earlier.get("model_files"), pinned["model_files"]
        # None: a comparison from before the files were recorded
        if "model_sha256" in changed or was is None:
            what = (
                "its weights changed"
                if "model_sha256" in changed
                else "its config and tokenizer files were recorded"
            )
        else:
            what = (
                ", ".join(sorted(n for n in set(was) | set(now) if was.get(n) != now.get(n)))
                + " changed"
            )
        raise FreezetuneError(
            f"{settings.out} holds a comparison of {settings.model} from before {what}; its runs "
            "and base reference may belong to another model: choose another --out"
        )
    if changed:
        raise FreezetuneError(
            f"{settings.out} holds a comparison with another {', '.join(changed)} "
            f"({flag_of(changed[0])}); "
            "choose another --out"
        )


def validate(settings: CompareSettings, metric: str = "auto") -> tuple[object, str]:
    """Everything that can be wrong, found before the first run trains; ``metric``: the one the
    report will rank by (--metric)."""
    if not settings.strategies:
        raise FreezetuneError("give at least one --strategy")
    slugs = [s.slug for s in settings.strategies]
    if len(set(slugs)) != len(slugs):
        raise FreezetuneError(
            f"two strategies share the run folder name '{max(slugs, key=slugs.count)}'"
        )
    settings.base_config.validate()
    searched = searched_strategies(settings)
    # a run without a validation split scores its eval split
    if searched and not settings.validation:
        raise FreezetuneError(
            f"--validation 0 would choose the rate of {searched[0].name} on the reported eval "
            f"split, which then judges it; give --validation N (default 64), or --lr-{searched[0].kind}"
        )
    loaded = load_model(
        settings.model,
        Path(settings.base_config.cache_dir) if settings.base_config.cache_dir else None,
    )
    require_causal_lm(loaded, "compare")
    # a learned position table's end, refused here; past rotary positions each run says its notice
    check_seq_len(loaded.model, settings.base_config.seq_len, settings.model)
    if settings.base_config.objective == "dpo" and any(s.advise for s in settings.strategies):
        raise FreezetuneError(  # its probe and its pilots measure the SFT loss
            "--strategy advise probes the gradients of the SFT loss; with --objective dpo "
            "give the plan it would pick (freezetune advise MODEL --data FILE) as a strategy"
        )
    anatomy = find_anatomy(loaded.model)
    seen: dict[tuple, str] = {}  # what a plan strategy runs -> the first strategy that runs it
    for strategy in settings.strategies:
        # an advised plan is resolved by construction (comparison/advised.py)
        if strategy.kind == "plan" and not strategy.advise:
            try:
                resolved = resolve(strategy.rules, anatomy)
                if strategy.schedule:
                    strategy.schedule.check(resolved)
                    _check_schedule_length(settings, strategy, resolved)
            except FreezetuneError as exc:
                raise FreezetuneError(f"--strategy '{strategy.name}': {exc}") from None
            schedule = strategy.schedule.render() if strategy.schedule else None
            runs = (frozenset(resolved.trainable), schedule, strategy.lr)
            # two spellings of one plan: the same runs, twice, then "not separable"
            if runs in seen:
                raise FreezetuneError(
                    f"--strategy '{strategy.name}' trains the same {len(resolved.trainable)} tensors "
                    f"as '{seen[runs]}', so the comparison would run one strategy twice"
                )
            seen[runs] = strategy.name
        elif strategy.kind == "lora":
            lora = {**vars(settings.base_config), **strategy.lora}
            try:
                check_targets(loaded.model, lora["lora_targets"])
            except FreezetuneError as exc:
                raise FreezetuneError(f"--strategy '{strategy.name}': {exc}") from None
            targets = frozenset(t.strip() for t in lora["lora_targets"].split(","))
            runs = ("lora", lora["lora_r"], lora["lora_alpha"], targets, strategy.lr)
            # 'lora' and 'lora r=8 alpha=16' are the same adapters
            if runs in seen:
                raise FreezetuneError(
                    f"--strategy '{strategy.name}' trains the same adapters as '{seen[runs]}', "
                    "so the comparison would run one strategy twice"
                )
            seen[runs] = strategy.name
    if settings.retain is not None:
        if not Path(settings.retain).is_file():
            raise FreezetuneError(missing_file("--retain", settings.retain))
        from freezetune.data.files import read_records

        records = read_records(settings.retain)
        if not any(
            isinstance(r.fields.get("text"), str) and r.fields["text"].strip() for r in records
        ):
            raise FreezetuneError(
                f"--retain {settings.retain} holds no text (a .txt file, or records with a 'text' field)"
            )
    from freezetune.comparison.verdict import choose_metric
    from freezetune.training.answers import (
        answer_lengths,
        check_answers_fit,
        chosen_answers,
        out_of_reach,
    )
    from freezetune.training.session import check_batches, run_data

    # a malformed record, too few examples, an answer past the positions: before compare.json pins --out
    config = settings.base_config
    train, held, _ = run_data(loaded.tokenizer, config)
    check_answers_fit(loaded.model, held.examples, config)
    lengths = answer_lengths(chosen_answers(held.examples, config), loaded.tokenizer)
    ranked_by, _ = choose_metric(metric, config.objective, config.eval_generate)
    # a metric no run can score above zero would rank nothing; some answers out of reach are a notice
    if ranked_by == "exact_match" and lengths and min(lengths) > config.max_new_tokens:
        raise FreezetuneError(
            f"exact match cannot rank the strategies: {out_of_reach(lengths, config.max_new_tokens)}, "
            "or rank by --metric eval_loss"
        )
    check_batches(train, config)
    if searched:  # too few examples for the validation split fail here, before anything trains
        run_data(loaded.tokenizer, config, settings.validation)
    base_sha256 = model_hash(loaded.path, settings.base_config.cache_dir)
    check_output_folder(settings, fingerprint(settings, base_sha256, meaning_hashes(loaded.path)))
    return loaded, base_sha256


def _check_schedule_length(
    settings: CompareSettings, strategy: Strategy, resolved: ResolvedPlan
) -> None:
    """A schedule its runs are too short to vary fails before anything trains: the reported runs
    (--max-steps; an --epochs budget is checked by each run, once its data is counted) and, where
    the rate is searched, the shorter search runs, whose rate would be chosen for the first phase."""
    lengths = [(settings.base_config.max_steps, "more --max-steps")]
    if settings.given_rate(strategy) is None:
        lengths.append((settings.search_steps, "more --search-steps"))
    for steps, more in lengths:
        if steps:
            strategy.schedule.check_length(resolved, steps, more)
