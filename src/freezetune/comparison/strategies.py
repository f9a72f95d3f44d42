"""compare: full fine-tuning, LoRA and freeze plans on the same model, data, seeds and budget.

Each strategy gets a folder OUT/runs/<strategy>/: a learning-rate search (search/lr-*/, scored
on a validation split of the training data) unless its rate is given, then one normal run
folder per seed (seed-N/) at the chosen rate. The base model is evaluated once and shared as
every run's "before"; after each run its forgetting (retain perplexity, KL from the base) and
per-layer weight change are measured on the merged model. A finished run is never redone, an
interrupted one resumes, a failed one is reported with its reason while the others go on.
OUT/compare.json pins what all runs share (model, data, eval and retain sets), so an output
folder cannot mix two comparisons; a run whose own settings changed is set aside and redone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from freezetune.config.fields import opt, parse_size
from freezetune.config.run import LORA_PLAN, RunOptions, TrainConfig
from freezetune.data.files import content_hash
from freezetune.errors import FreezetuneError
from freezetune.models.loading import load_model, require_causal_lm
from freezetune.options.commands import MARGIN_HELP, parse_margins
from freezetune.plans.anatomy import find_anatomy
from freezetune.plans.language import FreezePlan
from freezetune.plans.resolution import resolve
from freezetune.plans.schedule import Schedule
from freezetune.runs.checkpoint import checkpoint_dirs
from freezetune.runs.manifest import meaning_hashes, model_hash, read_json

DEFAULT_STRATEGIES = ["full", "lora", "freeze bottom 75%", "freeze bottom 50%"]
DEFAULT_LR = {"full": 5e-5, "lora": 1e-3, "plan": 2e-4}  # the centre of each kind's search
LORA_WORDS = {"r": "lora_r", "alpha": "lora_alpha", "targets": "lora_targets"}


@dataclass(frozen=True)
class Strategy:
    name: str  # as the user wrote it: "full", "lora r=16", or a plan
    kind: str  # "full" | "lora" | "plan"
    plan: str
    lora: dict = field(default_factory=dict)
    lr: float | None = None  # given as lr=X inside the strategy: no search
    advise: bool = False  # the plan is `freezetune advise`'s pick, made when the model is loaded
    budget: int | None = None  # advise's memory budget (None: half of full fine-tuning's estimate)
    schedule: Schedule | None = None  # gradual or LISA (plans/schedule.py), inside ``plan``
    # ``plan`` parsed, once: the checks use it, the workers get its text
    rules: FreezePlan | None = None

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")[:60] or "strategy"


def _take_rate(text: str) -> tuple[str, float | None]:
    """A trailing 'lr=X' fixes the strategy's learning rate (and skips its search)."""
    match = re.search(r"\s+lr=(\S*)\s*$", text)
    if not match:
        return text, None
    try:
        rate = float(match.group(1))
    except ValueError:
        rate = -1.0
    if not 0 < rate < float("inf"):
        raise FreezetuneError(
            f"--strategy '{text.strip()}': lr must be a positive number, not '{match.group(1)}'"
        )
    return text[: match.start()], rate


def parse_strategy(text: str) -> Strategy:
    """'full', 'lora [r=N] [alpha=N] [targets=a,b]', a schedule ('gradual ...' or 'lisa ...', over 'train all'
    or 'over PLAN'), or any plan (checked against the model later); any of them may end in 'lr=X'."""
    name = text.strip()
    text, rate = _take_rate(text)
    words = text.split()
    if not words:
        raise FreezetuneError("empty --strategy")
    if words[0] in ("gradual", "lisa"):
        schedule, _, plan = text.partition(" over ")
        try:
            schedule, rules = (
                Schedule.parse(schedule.strip()),
                FreezePlan.parse(plan.strip() or "train all"),
            )
        except FreezetuneError as exc:
            raise FreezetuneError(f"--strategy '{name}': {exc}") from None
        return Strategy(
            name, "plan", plan.strip() or "train all", lr=rate, schedule=schedule, rules=rules
        )
    if text.strip() == "full":
        return Strategy(name, "full", "train all", lr=rate, rules=FreezePlan.parse("train all"))
    if words[0] == "advise":
        budget = None
        for word in words[1:]:
            key, _, value = word.partition("=")
            if key != "budget" or not value:
                raise FreezetuneError(
                    f"--strategy '{name}': expected budget=SIZE (e.g. budget=8GiB) after 'advise', "
                    f"not '{word}'"
                )
            budget = parse_size(value, f"--strategy '{name}': budget")
        return Strategy(name, "plan", "", lr=rate, advise=True, budget=budget)
    if words[0] == "lora":
        lora = {"lora_r": 8}
        for word in words[1:]:
            key, _, value = word.partition("=")
            if key not in LORA_WORDS or not value:
                raise FreezetuneError(
                    f"--strategy '{text}': expected r=N, alpha=N or targets=a,b after 'lora', not '{word}'"
                )
            # '²' is a digit to str, not to int
            if key != "targets" and not (value.isascii() and value.isdigit()):
                raise FreezetuneError(
                    f"--strategy '{text}': {key} must be a whole number, not '{value}'"
                )
            lora[LORA_WORDS[key]] = value if key == "targets" else int(value)
        return Strategy(name, "lora", LORA_PLAN, lora, rate)
    if (
        words[0] not in ("freeze", "train")
        and not text.lstrip().startswith(("-", "[", "{"))
        and "\n" not in text
        and not text.endswith((".yaml", ".yml", ".json", ".txt"))
    ):
        raise FreezetuneError(
            f"unknown strategy '{text.strip()}': use full, lora [r=N alpha=N targets=a,b], "
            "advise [budget=SIZE], or a freeze plan (its rules start with freeze or train)"
        )
    rules = FreezePlan.parse(text)  # a malformed plan fails here, before anything trains
    return Strategy(name, "plan", text.strip(), lr=rate, rules=rules)


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
        "'advise [budget=8GiB]' (the plan `freezetune advise` picks); 'gradual every=N "
        "[start=K step=S]' or 'lisa layers=K every=T', optionally 'over PLAN'; "
        "give once per strategy "
        "(default: full, lora, freeze bottom 75%%, freeze bottom 50%%)",
    )
    retain: str | None = opt(
        None,
        help="general text for forgetting (.txt or records with 'text'); default: the base "
        "model's answers to 52 built-in general prompts",
    )
    lr_full: float | None = opt(
        None, help="learning rate of full fine-tuning; default: searched around 5e-5"
    )
    lr_lora: float | None = opt(None, help="learning rate of LoRA; default: searched around 1e-3")
    lr_plan: float | None = opt(
        None, help="learning rate of freeze plans; default: searched around 2e-4"
    )
    lr_grid: str = opt(
        "0.25,1,4", help="the search's rates, as multiples of the kind's default (log-spaced)"
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
        parse_margins(self.margin)
        if self.seeds < 1:
            raise FreezetuneError(f"--seeds must be at least 1, got {self.seeds}")
        if self.search_steps < 0 or self.validation < 0 or self.search_extensions < 0:
            raise FreezetuneError(
                "--search-steps, --search-extensions and --validation must be 0 or more"
            )
        for kind in ("full", "lora", "plan"):
            rate = getattr(self, f"lr_{kind}")
            if rate is not None and rate <= 0:
                raise FreezetuneError(f"--lr-{kind} must be positive, got {rate}")
        self.grid()

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

    def given_rate(self, strategy: Strategy) -> float | None:
        """The strategy's own lr=, else the kind's --lr-*; None means it is searched."""
        return strategy.lr if strategy.lr is not None else self.lr[strategy.kind]

    def search_grid(self, strategy: Strategy) -> list[float]:
        return [float(f"{DEFAULT_LR[strategy.kind] * factor:.3g}") for factor in self.lr_grid]


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


def check_output_folder(settings: CompareSettings, pinned: dict) -> None:
    state_path = settings.out / "compare.json"
    if state_path.is_file():
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
                f"(--{changed[0].replace('_', '-')}); "
                "choose another --out"
            )


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
    values.update(strategy.lora)
    return replace(settings.base_config, **values)


def validate(settings: CompareSettings) -> tuple[object, str]:
    """Everything that can be wrong, found before the first run trains."""
    if not settings.strategies:
        raise FreezetuneError("give at least one --strategy")
    slugs = [s.slug for s in settings.strategies]
    if len(set(slugs)) != len(slugs):
        raise FreezetuneError(
            f"two strategies share the run folder name '{max(slugs, key=slugs.count)}'"
        )
    settings.base_config.validate()
    loaded = load_model(
        settings.model,
        Path(settings.base_config.cache_dir) if settings.base_config.cache_dir else None,
    )
    require_causal_lm(loaded, "compare")
    if any(strategy.advise for strategy in settings.strategies):
        # the advisor's pick on this model and the comparison's training data becomes the plan
        from freezetune.advice.advisor import advise
        from freezetune.data.loading import load_data

        config = settings.base_config
        examples = load_data(
            loaded.tokenizer, config.objective, config.data, config.eval_data, config.seq_len
        )[0].examples
        for index, strategy in enumerate(settings.strategies):
            if strategy.advise:
                plan = advise(loaded, examples, strategy.budget, config.seq_len, config.batch_size)[
                    "plan"
                ]
                settings.strategies[index] = replace(
                    strategy,
                    name=f"{strategy.name} → {plan}",
                    plan=plan,
                    rules=FreezePlan.parse(plan),
                )
    anatomy = find_anatomy(loaded.model)
    for strategy in settings.strategies:
        if strategy.kind == "plan":
            try:
                resolved = resolve(strategy.rules, anatomy)
                if strategy.schedule:
                    strategy.schedule.check(resolved)
            except FreezetuneError as exc:
                raise FreezetuneError(f"--strategy '{strategy.name}': {exc}") from None
    if settings.retain is not None:
        if not Path(settings.retain).is_file():
            raise FreezetuneError(f"--retain {settings.retain} does not exist")
        from freezetune.data.files import read_records

        records = read_records(settings.retain)
        if not any(
            isinstance(r.fields.get("text"), str) and r.fields["text"].strip() for r in records
        ):
            raise FreezetuneError(
                f"--retain {settings.retain} holds no text (a .txt file, or records with a 'text' field)"
            )
    if settings.validation and any(settings.given_rate(s) is None for s in settings.strategies):
        from freezetune.data.loading import load_data

        # too few examples for the validation split fail here, before anything trains
        config = settings.base_config
        load_data(
            loaded.tokenizer,
            config.objective,
            config.data,
            config.eval_data,
            config.seq_len,
            settings.validation,
        )
    base_sha256 = model_hash(loaded.path, settings.base_config.cache_dir)
    check_output_folder(settings, fingerprint(settings, base_sha256, meaning_hashes(loaded.path)))
    return loaded, base_sha256
