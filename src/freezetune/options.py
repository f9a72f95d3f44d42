"""Typed command options: one dataclass per subcommand is both the schema and the --help text.

Field metadata: ``help`` (required), ``choices``, ``positional``. Only the CLI turns argv
into these objects; library functions take the objects (or plain arguments).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field

from freezetune.errors import FreezetuneError
from freezetune.formats import FORMATS
from freezetune.memory import DTYPES


def opt(default=dataclasses.MISSING, *, help: str, choices=None, positional: bool = False):
    return field(default=default, metadata={"help": help, "choices": choices, "positional": positional})


@dataclass
class PlanOptions:
    """Preview which parameters a plan trains, per layer, with a training-memory estimate."""

    model: str = opt(help="embedded model name (smollm2-135m), HF model folder, .gguf file, or a hub id in the local HF cache", positional=True)
    plan: str = opt(help="plan text such as 'freeze bottom 75%%', or a .yaml/.json/.txt plan file", positional=True)
    seq_len: int = opt(512, help="sequence length for the memory estimate")
    batch_size: int = opt(4, help="micro-batch size for the memory estimate")
    dtype: str = opt("float32", help="training precision for the memory estimate", choices=DTYPES)
    json: bool = opt(False, help="print one JSON object instead of the table")
    format: str | None = opt(None, help="print the trainable set in another tool's config format", choices=FORMATS)
    cache_dir: str | None = opt(None, help="where converted GGUF models are cached (default ~/.cache/freezetune; env FREEZETUNE_CACHE)")

    def validate(self) -> None:
        for name in ("seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise FreezetuneError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        meta, kind = item.metadata, hints[item.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        if meta.get("positional"):
            parser.add_argument(item.name, help=meta["help"])
        elif base is bool:
            parser.add_argument(f"--{item.name.replace('_', '-')}", dest=item.name, action="store_true", help=meta["help"])
        else:
            default_text = "" if item.default is None else f" (default {item.default})"
            parser.add_argument(
                f"--{item.name.replace('_', '-')}", dest=item.name, type=base, default=item.default,
                choices=meta.get("choices"), help=meta["help"] + default_text,
            )


def from_namespace(cls: type, namespace: argparse.Namespace):
    return cls(**{item.name: getattr(namespace, item.name) for item in dataclasses.fields(cls)})
