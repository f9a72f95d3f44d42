"""The command line: strings in, library calls out. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from freezetune.cli.advise import run_advise
from freezetune.cli.cache import run_cache
from freezetune.cli.console import say
from freezetune.cli.evaluate import run_evaluate
from freezetune.cli.generate import run_generate
from freezetune.cli.train import run_train
from freezetune.comparison.settings import CompareOptions
from freezetune.config.fields import check_finite, check_not_blank
from freezetune.config.run import TrainConfig
from freezetune.errors import FreezetuneError
from freezetune.options.advise import AdviseOptions
from freezetune.options.commands import (
    CacheOptions,
    EvaluateOptions,
    ExportOptions,
    GenerateOptions,
    PlanOptions,
    ReportOptions,
    parse_margins,
)
from freezetune.options.other_names import misnamed_flag
from freezetune.options.schema import add_options, from_namespace, read_config_file
from freezetune.runs.stop import StopFlag


def _cache(options) -> Path | None:
    return Path(options.cache_dir) if options.cache_dir else None


def run_plan(options: PlanOptions) -> str:
    """`freezetune plan`: the preview as text, JSON, or another tool's format."""
    from freezetune.models.loading import causal_lm_problem, load_model
    from freezetune.models.positions import check_seq_len
    from freezetune.plans.anatomy import find_anatomy
    from freezetune.plans.formats import render
    from freezetune.plans.language import FreezePlan
    from freezetune.plans.preview import (
        describe,
        describe_schedule,
        render_schedule_text,
        render_text,
    )
    from freezetune.plans.resolution import resolve
    from freezetune.plans.schedule import Schedule

    plan = FreezePlan.from_argument(options.plan)  # before loading: a typo fails in milliseconds
    schedule = Schedule.parse(options.schedule) if options.schedule else None
    loaded = load_model(options.model, cache_dir=_cache(options))
    resolved = resolve(plan, find_anatomy(loaded.model))
    if options.format:
        return render(resolved, options.format).rstrip("\n")
    sizes = (options.seq_len, options.batch_size, options.dtype)
    info = describe(resolved, options.model, *sizes, options.objective, options.precompute_ref)
    problem = causal_lm_problem(loaded.model)
    if problem:  # a preview is still useful, but the user should not find out at `train`
        info["notices"].append(f"train, compare and export will not take this model: {problem}")
    try:  # the estimate is for this --seq-len: said when a run could not take it
        beyond = check_seq_len(loaded.model, options.seq_len, options.model)
    except FreezetuneError as exc:
        beyond = f"train will refuse this: {exc}"
    info["notices"] += [beyond.removeprefix("notice: ")] if beyond else []
    if schedule is not None:
        schedule.check(resolved)
        if options.max_steps:  # what train would say of this run's length, said at the preview
            try:
                notice = schedule.check_length(resolved, options.max_steps)
            except FreezetuneError as exc:
                notice = f"train will refuse this: {exc}"
            info["notices"] += [notice] if notice else []
        info["schedule"] = describe_schedule(
            resolved,
            schedule,
            options.max_steps,
            options.seed,
            options.seq_len,
            options.batch_size,
            options.dtype,
        )
    if options.json:
        return json.dumps(info, indent=2)
    return render_text(info) + (
        render_schedule_text(info, resolved.anatomy.num_layers) if schedule else ""
    )


def run_export(options: ExportOptions) -> str:
    from freezetune.training.export import export_run

    out, kept = export_run(
        Path(options.run),
        Path(options.out),
        _cache(options),
        options.base,
        options.force,
        options.dtype,
        options.format,
    )
    return f"exported to {out}" + (
        f" (kept what you had added there: {', '.join(kept)})" if kept else ""
    )


def run_compare(options: CompareOptions, given: set[str] | None = None) -> str:
    """`freezetune compare`: every strategy's run, then the report; ``given``: the options asked
    for (typed or in the config file), for the notices of those no run reads."""
    from freezetune.comparison.report import write_report
    from freezetune.comparison.runner import run_comparison
    from freezetune.comparison.timing import timing_line
    from freezetune.comparison.verdict import choose_metric
    from freezetune.runs.provenance import provenance

    settings = options.settings()
    metric, why = choose_metric(
        options.metric, settings.base_config.objective, settings.base_config.eval_generate
    )
    announce = f"quality metric: {metric.replace('_', ' ')} ({why})"  # fixed before anything trains
    # the code as loaded now, whatever the checkout holds later
    started, where = (time.monotonic(), provenance())
    with StopFlag() as stop:
        run_dirs = run_comparison(
            settings,
            log=say,
            should_stop=lambda: stop.requested,
            notes=(announce, *options.unread(settings.strategies, given)),
            metric=options.metric,
        )
    report = write_report(
        run_dirs,
        settings.out,
        metric=options.metric,
        margins=parse_margins(options.margin),
        wall_s=time.monotonic() - started,
        where=where,
        forgetting=options.forgetting,
    )
    if stop.requested:
        return f"interrupted; run the same command again to continue\nreport so far: {report}"
    results = json.loads((settings.out / "results.json").read_text())
    if results["runs"] and all(r["status"] == "failed" for r in results["runs"]):
        raise FreezetuneError(
            f"every strategy failed ({results['runs'][0]['strategy']}: {results['runs'][0]['reason']}); "
            f"see {report}"
        )
    advice = results["recommendation"]
    say(timing_line(results["timing"]))  # where the time went, beside the other progress lines
    return "\n".join(advice) + f"\nreport: {report}"


def run_report(options: ReportOptions) -> str:
    from freezetune.comparison.controls import unequal_budgets
    from freezetune.comparison.report import reported_runs, write_report

    margins = parse_margins(options.margin)
    runs = reported_runs([Path(r) for r in options.runs])
    written = write_report(
        runs,
        Path(options.out),
        metric=options.metric,
        margins=margins,
        forgetting=options.forgetting,
        metric_after=True,
    )
    # said where the user looks, as well as in the report's verdict
    return "\n".join([*unequal_budgets(runs), f"report: {written}"])


COMMANDS = {
    "plan": (PlanOptions, run_plan),
    "advise": (AdviseOptions, run_advise),
    "train": (TrainConfig, run_train),
    "export": (ExportOptions, run_export),
    "generate": (GenerateOptions, run_generate),
    "compare": (CompareOptions, run_compare),
    "evaluate": (EvaluateOptions, run_evaluate),
    "report": (ReportOptions, run_report),
    "cache": (CacheOptions, run_cache),
}
CONFIG_FILE_COMMANDS = (TrainConfig, CompareOptions)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, refusing as every other refusal here does: in one line, with exit status 2."""

    def error(self, message: str):
        # argparse printed the command's whole usage first: 28 lines for a mistyped --objective
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser(typed_only: bool = False) -> argparse.ArgumentParser:
    """The CLI; ``typed_only``: flags not typed stay out of the namespace (what a user asked for)."""
    from freezetune import __version__

    parser = _OneLineParser(
        prog="freezetune", description="Fine-tune language models with layer freezing."
    )
    parser.add_argument("--version", action="version", version=f"freezetune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, _) in COMMANDS.items():
        sub = commands.add_parser(name, help=cls.__doc__, description=cls.__doc__)
        config_file = cls in CONFIG_FILE_COMMANDS
        add_options(sub, cls, overrides_only=typed_only or config_file, config_file=config_file)
    return parser


def _options(cls: type, args: argparse.Namespace, argv: list[str]) -> tuple[object, set[str]]:
    """The command's options from its config file and flags, and which were given: typed or in the
    file, so that a value equal to its default still counts as asked for."""
    from freezetune.training.resume import resumed_config

    base = read_config_file(cls, Path(args.config)) if getattr(args, "config", None) else {}
    options = from_namespace(cls, args, base)
    typed = vars(build_parser(typed_only=True).parse_args(argv))
    given = {k for k in typed if k not in ("command", "config")} | set(base)
    if cls is TrainConfig and options.resume:
        options = resumed_config(options, given)
    return options, given


def _run(cls: type, command, args: argparse.Namespace, argv: list[str]) -> str:
    """The command's options, checked, then the command itself."""
    if args.command in ("train", "compare", "evaluate"):
        import datasets

        datasets.disable_progress_bars()  # one bar per data file read is noise beside the command's own
    options, given = _options(cls, args, argv)
    if getattr(options, "cache_dir", "unset") is None and os.environ.get("FREEZETUNE_CACHE"):
        options.cache_dir = os.environ["FREEZETUNE_CACHE"]
    check_finite(options)
    check_not_blank(options)
    options.validate()
    # what the command reads, against what was asked for
    if hasattr(options, "check_given"):
        options.check_given(given)
    if cls is TrainConfig:
        return command(options, argv)
    return command(options, given) if cls is CompareOptions else command(options)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `plan --model M`, as train spells it, or `--learning_rate`: argparse says "unrecognized"
    if argv and argv[0] in COMMANDS and (hint := misnamed_flag(COMMANDS[argv[0]][0], argv)):
        return _fail(argv[0], hint)
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # argparse says so as "freezetune: error:", without the command or where to look
        listed = " ".join(unknown)
        return _fail(
            args.command,
            f"unrecognized arguments: {listed}; freezetune {args.command} --help lists its options",
        )
    cls, command = COMMANDS[args.command]
    try:
        # stdout holds the result alone: a library that prints there while a command checks or runs
        # (DeepSpeed logs "Setting accelerator to CPU" to stdout on import) joins the progress on stderr
        with contextlib.redirect_stdout(sys.stderr):
            output = _run(cls, command, args, argv)
        if output:
            print(output)
    except FreezetuneError as exc:
        return _fail(args.command, str(exc))
    # the machine said no (a full disk, a read-only folder): what and where, in one line
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(args.command, f"{where}{exc.strerror or exc}")
    return 0


def _fail(command: str, message: str) -> int:
    sys.stdout.flush()
    # always one line
    print(f"freezetune {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2
