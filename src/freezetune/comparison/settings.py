"""compare's settings: full fine-tuning, LoRA and freeze plans on the same model, data, seeds and budget.

Each strategy gets a folder OUT/runs/<strategy>/: a learning-rate search (search/lr-*/, scored
on a validation split of the training data) unless its rate is given, then one normal run
folder per seed (seed-N/) at the chosen rate. The base model is evaluated once and shared as
every run's "before"; after each run its forgetting (retain perplexity, KL from the base) and
per-layer weight change are measured on the merged model. A finished run is never redone, an
interrupted one resumes, a failed one is reported with its reason while the others go on.
OUT/compare.json pins what all runs share (model, data, eval and retain sets), so an output
folder cannot mix two comparisons; a run whose own settings changed is set aside and redone.

CompareOptions is the command's typed schema (also `compare --help`); CompareSettings is what
the runner takes, and run_config the TrainConfig of one of its runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from freezetune.comparison.benchmarks import load_tasks
from freezetune.comparison.strategies import (
    DEFAULT_LR,
    DEFAULT_STRATEGIES,
    KIND_NAMES,
    LR_GRID,
    Strategy,
    parse_strategy,
)
from freezetune.config.checks import check_given
from freezetune.config.fields import check_seed, flag_of, opt
from freezetune.config.run import RunOptions, TrainConfig
from freezetune.errors import FreezetuneError
from freezetune.options.commands import MARGIN_HELP, parse_margins
from freezetune.runs.checkpoint import checkpoint_dirs


@dataclass
class CompareOptions(RunOptions):
    """Full fine-tuning, LoRA and freeze plans side by side on the same data, seed and step budget."""

    # a comparison gives every strategy the same short budget, where train runs epochs by default
    max_steps: int = opt(
        20, help="optimizer steps per run (the same budget for every strategy and seed)"
    )
    batch_size: int = opt(4, help="examples per micro-batch")
    eval_generate: int = opt(
        200, help="held-out examples answered by greedy generation for exact match"
    )
    max_new_tokens: int = opt(24, help="token limit for each generated answer")
    seeds: int = opt(
        2,
        help="train every strategy with N seeds (data order, LoRA init): the report gives means, "
        "spreads and intervals",
    )
    strategy: list[str] | None = opt(
        None,
        help="'full', 'lora [r=8 alpha=16 targets=q_proj,v_proj]', or a freeze plan; "
        "'advise [budget=8GiB] [pilot=80|5min|none]' (the plan `freezetune advise` picks after its pilot "
        "runs); 'gradual every=N "
        "[start=K step=S]' or 'lisa layers=K every=T', optionally 'over PLAN'; "
        "give once per strategy "
        "(default: full, lora, freeze bottom 75%%, freeze bottom 50%%)",
    )
    retain: str | None = opt(
        None,
        help="general text for forgetting (.txt or records with 'text'); default: the base "
        "model's answers to 52 built-in general prompts",
    )
    retain_tasks: list[str] | None = opt(
        None,
        help="lm-evaluation-harness tasks scored on the base and on every run, in memory: "
        "'builtin' (a 222-item quiz shipped with freezetune), a task config .yaml on local files, or "
        "a registered task whose data is in the local datasets cache; give once per task "
        "(needs pip install 'freezetune[eval]')",
    )
    retain_limit: int = opt(
        0,
        help="score the first N items of each retain task (the same items for every run); 0 = all",
    )
    forgetting: str = opt(
        "kl",
        help="the forgetting axis of the verdict: kl (KL from the base on the retain text) or tasks "
        "(accuracy lost on --retain-tasks); the table shows both when both were measured",
        choices=("kl", "tasks"),
    )
    lr_full: float | None = opt(
        None, help="learning rate of full fine-tuning; default: searched around 5e-5"
    )
    lr_lora: float | None = opt(None, help="learning rate of LoRA; default: searched around 1e-3")
    lr_plan: float | None = opt(
        None, help="learning rate of freeze plans; default: searched around 2e-4"
    )
    lr_grid: str = opt(
        LR_GRID, help="the search's rates, as multiples of the kind's default (log-spaced)"
    )
    search_steps: int = opt(0, help="optimizer steps of each search run; 0 = half of --max-steps")
    search_extensions: int = opt(
        2,
        help="when the best rate is the grid's highest or lowest, try one more 4x further "
        "out, up to N times per strategy (0: never)",
    )
    validation: int = opt(
        64, help="training examples carved out (seeded) to score the search; never the eval split"
    )
    out: str = opt("runs/compare", help="output folder: runs/, report.html, results.json, ...")
    keep_checkpoints: bool = opt(
        False,
        help="keep each finished run's resumable checkpoints (optimizer state); "
        "by default a reported run keeps its trained tensors, metrics and answers only",
    )
    metric: str = opt(
        "auto",
        help="the quality metric that ranks, chosen before training: exact_match, eval_loss, or "
        "auto (exact match where answers are generated for SFT, else eval loss)",
        choices=("auto", "exact_match", "eval_loss"),
    )
    margin: list[str] | None = opt(None, help=MARGIN_HELP)

    def validate(self) -> None:
        if self.objective == "dpo" and self.metric == "exact_match":
            raise FreezetuneError(
                "--metric exact_match checks generated answers; --objective dpo scores preference "
                "pairs (its metric is the held-out DPO loss, with preference accuracy beside it)"
            )
        if self.beta <= 0:
            raise FreezetuneError(f"--beta must be positive, got {self.beta}")
        parse_margins(self.margin)
        if self.forgetting == "tasks" and not self.retain_tasks:
            raise FreezetuneError(
                "--forgetting tasks needs --retain-tasks (for example --retain-tasks builtin)"
            )
        if self.retain_limit < 0:
            raise FreezetuneError(f"--retain-limit must be 0 or more, got {self.retain_limit}")
        if self.metric == "exact_match" and (self.objective == "cpt" or not self.eval_generate):
            raise FreezetuneError(
                "--metric exact_match checks generated answers, and "
                + (
                    "--objective cpt has none (its metric is eval loss)"
                    if self.objective == "cpt"
                    else "--eval-generate 0 generates none: give --eval-generate N"
                )
            )
        # not installed, unknown, or data it would fetch: before the model loads
        if self.retain_tasks:
            with tempfile.TemporaryDirectory(prefix="freezetune-tasks-") as folder:
                load_tasks(self.retain_tasks, Path(folder))
        if self.seeds < 1:
            raise FreezetuneError(f"--seeds must be at least 1, got {self.seeds}")
        check_seed(self.seed, self.seeds)
        for name in ("search_steps", "search_extensions", "validation"):
            if (value := getattr(self, name)) < 0:
                raise FreezetuneError(f"{flag_of(name)} must be 0 or more, got {value}")
        for kind in ("full", "lora", "plan"):
            rate = getattr(self, f"lr_{kind}")
            if rate is not None and rate <= 0:
                raise FreezetuneError(f"--lr-{kind} must be positive, got {rate}")
        self.grid()

    def check_given(self, given: set[str]) -> None:
        """The run options given that no run of this comparison would read, as train refuses them."""
        check_given(self.settings().base_config, given, typed=True)

    def unread(self, strategies: list[Strategy], given: set[str] | None = None) -> list[str]:
        """Notices of options asked for (``given``, else set off their defaults) that no run reads."""
        given = given or {f.name for f in fields(self) if getattr(self, f.name) != f.default}
        rates = {"full": self.lr_full, "lora": self.lr_lora, "plan": self.lr_plan}
        takers = {s.kind for s in strategies if s.lr is None}  # an own lr= wins over --lr-KIND
        notes = [
            f"--lr-{kind} {rate:g} applies to no strategy: none is {KIND_NAMES[kind]}"
            + (" without its own lr=" if any(s.kind == kind for s in strategies) else "")
            for kind, rate in rates.items()
            if rate is not None and kind not in takers
        ]
        if all(s.lr or rates[s.kind] for s in strategies):
            notes += [
                f"{flag_of(name)} {getattr(self, name)}: every strategy's rate is given, "
                "so no rate is searched"
                for name in ("search_steps", "lr_grid", "search_extensions", "validation")
                if name in given
            ]
        if "retain_limit" in given and not self.retain_tasks:
            notes.append(
                f"--retain-limit {self.retain_limit} limits the items of --retain-tasks, and none are given"
            )
        return [f"notice: {note}" for note in notes]

    def grid(self) -> list[float]:
        try:
            factors = [float(word) for word in self.lr_grid.split(",")]
        except ValueError:
            raise FreezetuneError(
                f"--lr-grid '{self.lr_grid}': expected comma-separated multiples like 0.25,1,4"
            ) from None
        if (
            not factors
            or any(not 0 < f < float("inf") for f in factors)
            or len(set(factors)) != len(factors)
        ):
            raise FreezetuneError(
                f"--lr-grid '{self.lr_grid}': the multiples must be positive and distinct"
            )
        return sorted(factors)

    def settings(self) -> CompareSettings:
        strategies = [parse_strategy(s) for s in (self.strategy or DEFAULT_STRATEGIES)]
        base = TrainConfig(**{f.name: getattr(self, f.name) for f in fields(RunOptions)})
        base.max_new_tokens = self.max_new_tokens
        given = {"full": self.lr_full, "lora": self.lr_lora, "plan": self.lr_plan}
        return CompareSettings(
            self.model,
            strategies,
            Path(self.out),
            base,
            given,
            self.retain,
            self.keep_checkpoints,
            [self.seed + i for i in range(self.seeds)],
            self.grid(),
            self.search_steps or max(1, self.max_steps // 2),
            self.validation,
            self.search_extensions,
            list(self.retain_tasks or []),
            self.retain_limit,
            self.forgetting,
        )


@dataclass
class CompareSettings:
    model: str
    strategies: list[Strategy]
    out: Path
    base_config: TrainConfig  # data, budget, seed... shared by every run
    lr: dict[str, float | None]  # per kind: full, lora, plan; None = searched
    retain: str | None = None
    keep_checkpoints: bool = False
    seeds: list[int] = field(default_factory=lambda: [0])
    lr_grid: list[float] = field(default_factory=lambda: [1.0])  # multiples of DEFAULT_LR[kind]
    search_steps: int = 10
    validation: int = 64
    # how often a search whose best rate is at its grid's edge may go one step further
    search_extensions: int = 2
    retain_tasks: list[str] = field(default_factory=list)  # lm-eval tasks; empty: none scored
    retain_limit: int = 0  # items per task; 0 = all
    forgetting: str = "kl"  # the verdict's forgetting axis: "kl" or "tasks"

    def task_request(self) -> dict | None:
        """What the workers score on each run (JSON, for their spec), or None when no task is asked."""
        if not self.retain_tasks:
            return None
        return {
            "names": self.retain_tasks,
            "limit": self.retain_limit or None,
            "folder": str(self.out / "tasks"),
            "base": str(self.out / "base-tasks.json"),
        }

    def given_rate(self, strategy: Strategy) -> float | None:
        """The strategy's own lr=, else the kind's --lr-*; None means it is searched."""
        return strategy.lr if strategy.lr is not None else self.lr[strategy.kind]

    def search_grid(self, strategy: Strategy) -> list[float]:
        return [float(f"{DEFAULT_LR[strategy.kind] * factor:.3g}") for factor in self.lr_grid]


def run_config(
    settings: CompareSettings, strategy: Strategy, rate: float, seed: int | None = None
) -> TrainConfig:
    """One seed's reported run at ``rate``; ``seed`` None: the search run of ``rate`` (shorter, on
    the validation split)."""
    group = settings.out / "runs" / strategy.slug
    run_dir = group / f"seed-{seed}" if seed is not None else group / "search" / f"lr-{rate:g}"
    # the worker's spec is text: JSON
    schedule = strategy.schedule.render() if strategy.schedule else None
    values = dict(
        model=settings.model,
        plan=strategy.plan,
        schedule=schedule,
        lr=rate,
        out=str(run_dir),
        seed=settings.seeds[0],
        resume=str(run_dir) if checkpoint_dirs(run_dir) else None,
        show_generations=0,
        lora_r=0,
    )
    if seed is None:  # scored on the validation split by its loss alone: no answers to generate
        values.update(
            max_steps=settings.search_steps, validation=settings.validation, eval_generate=0
        )
    else:
        values.update(seed=seed)
    # a frozen prefix computes the same rows for every seed and rate of its plan: on disk, the
    # held-out (or validation) rows one run evaluated are read by the next instead of run again
    siblings = len(settings.lr_grid) if seed is None else len(settings.seeds)
    values.update(prefix_cache="disk" if siblings > 1 else settings.base_config.prefix_cache)
    values.update(strategy.lora)
    return replace(settings.base_config, **values)
