"""The options of `plan`, `export`, `generate` and `report` (train's are TrainConfig, compare's CompareOptions)."""

from __future__ import annotations

from dataclasses import dataclass

from freezetune.config.fields import check_seed, flag_of, opt
from freezetune.errors import FreezetuneError
from freezetune.plans.formats import FORMATS
from freezetune.plans.memory import DTYPES

MODEL_HELP = "embedded model name (smollm2-135m), HF model folder, .gguf file, or a hub id in the local HF cache"
SOURCE_HELP = "run folder, PEFT adapter folder (it names its base), or any model `plan` accepts"
MARGIN_HELP = (
    "how much worse on one axis still counts as 'not worse' when the other axis dominates, as METRIC=SIZE, "
    "repeatable: eval_loss=1%% and retain_kl=10%% (of the strategies' mean), exact_match=2%% and "
    "task_drop=2%% (points of accuracy); a plain number is in the metric's own units (defaults: those four)"
)
MARGIN_METRICS = ("eval_loss", "exact_match", "retain_kl", "task_drop")


def parse_margins(texts: list[str] | None) -> dict[str, tuple[str, float]]:
    """--margin METRIC=SIZE: {metric: ("relative"|"absolute", size)}; N% is relative to the mean for a loss or
    a KL, and percentage points for an accuracy (exact match, the retain tasks' drop)."""
    margins = {}
    for text in texts or []:
        name, _, size = text.partition("=")
        name, size = name.strip(), size.strip()
        if name not in MARGIN_METRICS:
            raise FreezetuneError(
                f"--margin '{text}': expected METRIC=SIZE with METRIC one of {', '.join(MARGIN_METRICS)}"
            )
        if name in margins:  # repeatable across metrics; one metric twice would drop a value
            raise FreezetuneError(f"--margin '{text}': {name} is given twice")
        try:
            value = float(size.removesuffix("%")) / (100 if size.endswith("%") else 1)
        except ValueError:
            raise FreezetuneError(
                f"--margin '{text}': SIZE must be a number or a percentage such as 2%"
            ) from None
        if not 0 <= value < float("inf"):
            raise FreezetuneError(f"--margin '{text}': the size must be 0 or more")
        # accuracies are percentages already: N% of them is N points
        relative = size.endswith("%") and name not in ("exact_match", "task_drop")
        margins[name] = ("relative" if relative else "absolute", value)
    return margins


@dataclass
class PlanOptions:
    """Preview which parameters a plan trains, per layer, with a training-memory estimate."""

    model: str = opt(help=MODEL_HELP, positional=True)
    plan: str = opt(
        help="plan text such as 'freeze bottom 75%%', or a .yaml/.json/.txt plan file",
        positional=True,
    )
    seq_len: int = opt(512, help="sequence length for the memory estimate")
    batch_size: int = opt(4, help="micro-batch size for the memory estimate")
    dtype: str = opt("float32", help="training precision for the memory estimate", choices=DTYPES)
    objective: str = opt(
        "sft",
        help="what the estimate is for: sft/cpt, or dpo (two rows per pair in --batch-size, and "
        "the reference's copy of the trained tensors)",
        choices=("sft", "cpt", "dpo"),
    )
    precompute_ref: bool = opt(
        False, help="with --objective dpo: the reference scores are precomputed, no copy held"
    )
    json: bool = opt(False, help="print one JSON object instead of the table")
    schedule: str | None = opt(
        None,
        help="preview a schedule inside the plan: its phases and peak memory "
        "('gradual every=N [start=K step=S]' or 'lisa layers=K every=T')",
    )
    max_steps: int = opt(
        0, help="with --schedule: the run's steps (0: gradual until complete, four LISA periods)"
    )
    seed: int = opt(0, help="with --schedule: the seed LISA draws its blocks with")
    format: str | None = opt(
        None, help="print the trainable set in another tool's config format", choices=FORMATS
    )
    cache_dir: str | None = opt(
        None,
        help="where converted GGUF models are cached (default ~/.cache/freezetune; "
        "env FREEZETUNE_CACHE)",
    )

    def validate(self) -> None:
        check_sizes(self)
        check_seed(self.seed)
        if self.precompute_ref and self.objective != "dpo":
            raise FreezetuneError(
                "--precompute-ref is for --objective dpo, which has a reference model"
            )
        if self.max_steps < 0:
            raise FreezetuneError(f"--max-steps must be 0 or more, got {self.max_steps}")
        if self.schedule and self.format:
            raise FreezetuneError(
                "--format writes one fixed trainable set; a --schedule changes it during the run"
            )

    def check_given(self, given: set[str]) -> None:
        """Options typed for a part of the preview this one does not print."""
        phases = sorted({"max_steps", "seed"} & given)
        if phases and not self.schedule:
            raise FreezetuneError(
                f"{flag_of(phases[0])} is for --schedule's phases, and none is given"
            )
        # another tool's config lists the trainable set; the memory estimate is not in it
        estimate = sorted(
            {"seq_len", "batch_size", "dtype", "objective", "precompute_ref", "json"} & given
        )
        if estimate and self.format:
            raise FreezetuneError(
                f"{flag_of(estimate[0])} is for the preview, and --format {self.format} "
                "prints the trainable set in that tool's config instead"
            )


def check_sizes(options) -> None:
    """The sizes a memory estimate is made for (plan, advise)."""
    for name in ("seq_len", "batch_size"):
        if getattr(options, name) < 1:
            raise FreezetuneError(
                f"{flag_of(name)} must be at least 1, got {getattr(options, name)}"
            )


@dataclass
class ExportOptions:
    """Merge a run's trained tensors into its base model and write a standard HF model folder."""

    run: str = opt(help="run folder written by `freezetune train`", positional=True)
    out: str = opt(help="folder to write; it must be new or empty")
    base: str | None = opt(
        None,
        help="load the base model from here instead of the manifest's name (must hash the same)",
    )
    force: bool = opt(
        False,
        help="replace --out if it holds an earlier freezetune export (nothing else is ever replaced)",
    )
    dtype: str = opt(
        "auto",
        help="dtype of the exported weights; auto = the base model's own (a bf16 base stays bf16)",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    format: str = opt(
        "hf",
        help="hf: a merged model folder; peft: a LoRA run's adapters for PeftModel.from_pretrained",
        choices=("hf", "peft"),
    )
    cache_dir: str | None = opt(None, help="where converted GGUF models are cached")

    def validate(self) -> None:
        # peft's adapters are written as peft keeps them, in fp32; the base is not written at all
        if self.format == "peft" and self.dtype != "auto":
            raise FreezetuneError(
                f"--dtype {self.dtype} sets the merged model folder's weights, and --format peft "
                "writes the adapters alone, in fp32 as peft keeps them"
            )


@dataclass
class GenerateOptions:
    """Generate from a run folder, a PEFT adapter folder or a model, for a quick look (greedy unless
    --temperature is set)."""

    source: str = opt(help=SOURCE_HELP, positional=True)
    prompt: str = opt(
        help="user message (rendered with the chat template when the tokenizer has one, unless "
        "--plain); '-' reads it from stdin"
    )
    plain: bool = opt(
        False, help="continue the prompt as plain text, without the chat template (e.g. after cpt)"
    )
    system: str | None = opt(
        None, help="system prompt before --prompt, as a record's 'system' field gives in training"
    )
    max_new_tokens: int = opt(64, help="token limit")
    temperature: float = opt(0.0, help="sampling temperature; 0 = greedy")
    top_p: float = opt(
        1.0, help="nucleus sampling: keep the smallest set of tokens whose probability reaches this"
    )
    seed: int | None = opt(None, help="seed for sampling (default 0)")
    cache_dir: str | None = opt(None, help="where converted GGUF models are cached")

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise FreezetuneError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise FreezetuneError(
                f"--temperature must be 0 (greedy) or more, got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise FreezetuneError(f"--top-p must be in (0, 1], got {self.top_p}")
        check_seed(self.seed)
        if self.system is not None and self.plain:
            raise FreezetuneError(
                "--system goes into the chat template, and --plain continues the prompt as plain text"
            )

    def check_given(self, given: set[str]) -> None:
        """Sampling options typed for a greedy answer (--top-p 1 as much as --top-p 0.5)."""
        sampling = sorted({"top_p", "seed"} & given)
        if sampling and self.temperature == 0:
            flag = flag_of(sampling[-1])
            raise FreezetuneError(
                f"{flag} is for sampling, and at --temperature 0 (the default) the answer is greedy "
                f"(the same tokens whatever {flag}): give a --temperature above 0 too"
            )


@dataclass
class EvaluateOptions:
    """Score a run or PEFT adapter folder (against its base: accuracy before and after, the items that
    flipped) or a model on lm-evaluation-harness tasks, in memory and offline."""

    source: str = opt(help=SOURCE_HELP, positional=True)
    tasks: list[str] = opt(
        help="'builtin' (the 222-item quiz shipped with freezetune), a task config .yaml on local "
        "files, or a registered task whose data is in the local datasets cache; give once per task"
    )
    limit: int = opt(0, help="score the first N items of each task; 0 = all")
    batch_size: int = opt(8, help="requests per forward pass")
    json: bool = opt(False, help="print the scores, per item, as JSON")
    cache_dir: str | None = opt(None, help="where converted GGUF models are cached")

    def validate(self) -> None:
        if self.limit < 0:
            raise FreezetuneError(f"--limit must be 0 (every item) or more, got {self.limit}")
        if self.batch_size < 1:
            raise FreezetuneError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class ReportOptions:
    """Render the comparison report from existing run folders, without loading any model."""

    runs: list[str] = opt(
        help="run folders (written by `train` or `compare`), or a `compare` output folder for "
        "all its reported runs",
        positional=True,
    )
    out: str = opt(help="folder for report.html, report.md, results.json, results.csv")
    metric: str = opt(
        "auto",
        help="the quality metric that ranks: exact_match, eval_loss, or auto (the one the runs' "
        "comparison fixed; else from their task: exact match where answers were generated for "
        "SFT, else eval loss)",
        choices=("auto", "exact_match", "eval_loss"),
    )
    margin: list[str] | None = opt(None, help=MARGIN_HELP)
    forgetting: str = opt(
        "kl",
        help="the verdict's forgetting axis: kl (KL from the base) or tasks (accuracy lost on the "
        "retain tasks `compare --retain-tasks` scored)",
        choices=("kl", "tasks"),
    )

    def validate(self) -> None:
        parse_margins(self.margin)


@dataclass
class CacheOptions:
    """List or clear the prefix caches (the frozen prefix's outputs that disk caching keeps)."""

    action: str = opt(
        help="list: each cache with its size, last use, model and plan; clear: remove them",
        positional=True,
        choices=("list", "clear"),
    )
    older_than: float | None = opt(
        None, help="with clear: only caches last used more than this many days ago"
    )
    cache_dir: str | None = opt(
        None, help="the cache folder (default ~/.cache/freezetune; env FREEZETUNE_CACHE)"
    )

    def validate(self) -> None:
        if self.action not in ("list", "clear"):  # positional: argparse does not check its choices
            raise FreezetuneError(f"unknown cache action {self.action!r}; use list or clear")
        if self.older_than is not None and self.older_than < 0:
            raise FreezetuneError(f"--older-than must be 0 days or more, got {self.older_than}")
        if self.older_than is not None and self.action != "clear":
            raise FreezetuneError("--older-than goes with clear")
