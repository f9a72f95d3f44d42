"""compare: full fine-tuning, LoRA and freeze plans on the same model, data, seed and budget.

Each strategy is a normal run folder under OUT/runs/. The base model is evaluated once and
shared as every run's "before"; after each run its forgetting (retain perplexity, KL from
the base) and per-layer weight change are measured on the merged model. A finished run is
never redone, an interrupted one resumes, a failed one is reported with its reason while
the others go on. OUT/compare.json pins the model and data, so an output folder cannot mix
two comparisons.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from freezetune.errors import FreezetuneError
from freezetune.models.loading import file_sha256, load_model, require_causal_lm
from freezetune.options.schema import opt
from freezetune.options.training import LORA_PLAN, RunOptions, TrainConfig
from freezetune.plans.anatomy import find_anatomy
from freezetune.plans.language import FreezePlan
from freezetune.plans.resolution import resolve
from freezetune.runs.checkpoint import checkpoint_dirs
from freezetune.runs.manifest import model_hash, read_json

DEFAULT_STRATEGIES = ["full", "lora", "freeze bottom 75%", "freeze bottom 50%"]
LORA_WORDS = {"r": "lora_r", "alpha": "lora_alpha", "targets": "lora_targets"}


@dataclass(frozen=True)
class Strategy:
    name: str  # as the user wrote it: "full", "lora r=16", or a plan
    kind: str  # "full" | "lora" | "plan"
    plan: str
    lora: dict = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")[:60] or "strategy"


def parse_strategy(text: str) -> Strategy:
    """'full', 'lora [r=N] [alpha=N] [targets=a,b]', or any plan (checked against the model later)."""
    words = text.split()
    if not words:
        raise FreezetuneError("empty --strategy")
    if text.strip() == "full":
        return Strategy("full", "full", "train all")
    if words[0] == "lora":
        lora = {"lora_r": 8}
        for word in words[1:]:
            key, _, value = word.partition("=")
            if key not in LORA_WORDS or not value:
                raise FreezetuneError(f"--strategy '{text}': expected r=N, alpha=N or targets=a,b after 'lora', not '{word}'")
            if key != "targets" and not value.isdigit():
                raise FreezetuneError(f"--strategy '{text}': {key} must be a whole number, not '{value}'")
            lora[LORA_WORDS[key]] = value if key == "targets" else int(value)
        return Strategy(text.strip(), "lora", LORA_PLAN, lora)
    if words[0] not in ("freeze", "train") and not text.lstrip().startswith(("-", "[", "{")) and "\n" not in text \
            and not text.endswith((".yaml", ".yml", ".json", ".txt")):
        raise FreezetuneError(f"unknown strategy '{text.strip()}': use full, lora [r=N alpha=N targets=a,b], "
                              "or a freeze plan (its rules start with freeze or train)")
    FreezePlan.parse(text)  # a malformed plan fails here, before anything trains
    return Strategy(text.strip(), "plan", text.strip())


@dataclass
class CompareOptions(RunOptions):
    """Full fine-tuning, LoRA and freeze plans side by side on the same data, seed and step budget."""

    # a comparison gives every strategy the same short budget, where train runs epochs by default
    max_steps: int = opt(20, help="optimizer steps per strategy (the same budget for all)")
    eval_generate: int = opt(20, help="held-out examples answered by greedy generation for exact match")
    strategy: list[str] | None = opt(None, help="'full', 'lora [r=8 alpha=16 targets=q_proj,v_proj]', or a freeze plan; "
                                     "give once per strategy (default: full, lora, freeze bottom 75%%, freeze bottom 50%%)")
    retain: str | None = opt(None, help="general text for forgetting (.txt or records with 'text'); default: the base "
                             "model's answers to 52 built-in general prompts")
    lr_full: float = opt(5e-5, help="learning rate of full fine-tuning")
    lr_lora: float = opt(1e-3, help="learning rate of LoRA")
    lr_plan: float = opt(2e-4, help="learning rate of freeze plans")
    out: str = opt("runs/compare", help="output folder: runs/, report.html, results.json, ...")
    keep_checkpoints: bool = opt(False, help="keep each finished run's resumable checkpoints (optimizer state); "
                                 "by default a reported run keeps its trained tensors, metrics and answers only")

    def validate(self) -> None:
        return None

    def settings(self) -> CompareSettings:
        strategies = [parse_strategy(s) for s in (self.strategy or DEFAULT_STRATEGIES)]
        base = TrainConfig(**{f.name: getattr(self, f.name) for f in fields(RunOptions)})
        return CompareSettings(self.model, strategies, Path(self.out), base,
                               {"full": self.lr_full, "lora": self.lr_lora, "plan": self.lr_plan}, self.retain,
                               self.keep_checkpoints)


@dataclass
class CompareSettings:
    model: str
    strategies: list[Strategy]
    out: Path
    base_config: TrainConfig  # data, budget, seed... shared by every run
    lr: dict[str, float]  # per kind: full, lora, plan
    retain: str | None = None
    keep_checkpoints: bool = False


def content_hash(path: str | None) -> str | None:
    """sha256 of a data file, or of every file in a dataset folder (names and bytes): a folder whose
    content changed is other data, even at the same path."""
    if not path or not Path(path).exists():
        return path
    root = Path(path)
    if root.is_file():
        return file_sha256(root)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def fingerprint(settings: CompareSettings, base_sha256: str) -> dict:
    """What every run and the base reference depend on; a rerun with any of it changed is another comparison."""
    config = settings.base_config
    return {"model": settings.model, "model_sha256": base_sha256, "objective": config.objective,
            "data": content_hash(config.data), "eval_data": content_hash(config.eval_data),
            "retain": content_hash(settings.retain) if settings.retain else "built-in prompts",
            "seed": config.seed, "max_steps": config.max_steps, "seq_len": config.seq_len, "batch_size": config.batch_size,
            "eval_generate": config.eval_generate, "max_new_tokens": config.max_new_tokens}


def check_output_folder(settings: CompareSettings, pinned: dict) -> None:
    state_path = settings.out / "compare.json"
    if state_path.is_file():
        earlier = read_json(state_path)
        if not isinstance(earlier, dict) or not isinstance(earlier.get("fingerprint"), dict):
            raise FreezetuneError(f"{state_path}: damaged; it does not say which comparison {settings.out} holds")
        earlier = earlier["fingerprint"]
        changed = [k for k in pinned if earlier.get(k) != pinned[k]]
        if changed:
            raise FreezetuneError(
                f"{settings.out} holds a comparison with another {', '.join(changed)} (--{changed[0].replace('_', '-')}); "
                "choose another --out"
            )


def run_config(settings: CompareSettings, strategy: Strategy) -> TrainConfig:
    run_dir = settings.out / "runs" / strategy.slug
    resume = str(run_dir) if checkpoint_dirs(run_dir) else None
    values = dict(model=settings.model, plan=strategy.plan, lr=settings.lr[strategy.kind], out=str(run_dir),
                  resume=resume, show_generations=0, lora_r=0)
    values.update(strategy.lora)
    return replace(settings.base_config, **values)


def validate(settings: CompareSettings) -> tuple[object, str]:
    """Everything that can be wrong, found before the first run trains."""
    if not settings.strategies:
        raise FreezetuneError("give at least one --strategy")
    slugs = [s.slug for s in settings.strategies]
    if len(set(slugs)) != len(slugs):
        raise FreezetuneError(f"two strategies share the run folder name '{max(slugs, key=slugs.count)}'")
    settings.base_config.validate()
    loaded = load_model(settings.model, Path(settings.base_config.cache_dir) if settings.base_config.cache_dir else None)
    require_causal_lm(loaded, "compare")
    anatomy = find_anatomy(loaded.model)
    for strategy in settings.strategies:
        if strategy.kind == "plan":
            try:
                resolve(FreezePlan.parse(strategy.plan), anatomy)
            except FreezetuneError as exc:
                raise FreezetuneError(f"--strategy '{strategy.name}': {exc}") from None
    if settings.retain is not None:
        if not Path(settings.retain).is_file():
            raise FreezetuneError(f"--retain {settings.retain} does not exist")
        from freezetune.data.files import read_records

        records = read_records(settings.retain)
        if not any(isinstance(r.fields.get("text"), str) and r.fields["text"].strip() for r in records):
            raise FreezetuneError(f"--retain {settings.retain} holds no text (a .txt file, or records with a 'text' field)")
    base_sha256 = model_hash(loaded.path)
    check_output_folder(settings, fingerprint(settings, base_sha256))
    return loaded, base_sha256
