"""The command line: strings in, library calls out. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from freezetune.errors import FreezetuneError
from freezetune.options import PlanOptions, add_options, from_namespace


def run_plan(options: PlanOptions) -> str:
    """`freezetune plan`: the preview as text, JSON, or another tool's format."""
    from freezetune.anatomy import find_anatomy
    from freezetune.formats import render
    from freezetune.models import load_model
    from freezetune.plan import FreezePlan
    from freezetune.preview import describe, render_text
    from freezetune.resolve import resolve

    plan = FreezePlan.from_argument(options.plan)  # before loading: a typo fails in milliseconds
    cache_dir = Path(options.cache_dir) if options.cache_dir else None
    loaded = load_model(options.model, cache_dir=cache_dir)
    resolved = resolve(plan, find_anatomy(loaded.model))
    if options.format:
        return render(resolved, options.format).rstrip("\n")
    info = describe(resolved, options.model, options.seq_len, options.batch_size, options.dtype)
    return json.dumps(info, indent=2) if options.json else render_text(info)


COMMANDS = {"plan": (PlanOptions, run_plan)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freezetune", description="Fine-tune language models with layer freezing.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, _) in COMMANDS.items():
        add_options(commands.add_parser(name, help=cls.__doc__, description=cls.__doc__), cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cls, command = COMMANDS[args.command]
    options = from_namespace(cls, args)
    if getattr(options, "cache_dir", "unset") is None and os.environ.get("FREEZETUNE_CACHE"):
        options.cache_dir = os.environ["FREEZETUNE_CACHE"]
    try:
        options.validate()
        print(command(options))
    except FreezetuneError as exc:
        print(f"freezetune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
