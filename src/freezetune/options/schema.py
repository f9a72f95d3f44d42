"""Typed options: a dataclass per command is both its schema and its --help text; this turns
one into argparse flags and reads it from a YAML/JSON file, checked key by key.

Field metadata: ``help`` (required), ``choices``, ``positional``. Only the CLI turns argv
into these objects; library functions take the objects (or plain arguments).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from pathlib import Path

import yaml

from freezetune.config.fields import FLOAT32_MAX, flag_of
from freezetune.errors import FreezetuneError, missing_file, yaml_problem
from freezetune.options.other_names import did_you_mean, likely_options
from freezetune.plans.language import FreezePlan

# a number in exponent form without a dot (1e-3, 5E+4): YAML 1.1 leaves it a string
EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _without_none(kind):
    """`int | None` -> int; anything else unchanged (list[str] stays list[str])."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return next(t for t in typing.get_args(kind) if t is not type(None))
    return kind


class GivenOnce(argparse.Action):
    """A flag refused when typed again with another value. argparse keeps the last, which is an
    override for most flags, but `--data a.jsonl --data b.jsonl` trained on b alone. Seen only
    where unset flags stay out of the namespace (``overrides_only``), as the CLI parses."""

    def __init__(self, *args, hint: str = "give it once", **kwargs):
        super().__init__(*args, **kwargs)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None):
        earlier = getattr(namespace, self.dest, values)
        if self.default is argparse.SUPPRESS and earlier is not values and earlier != values:
            raise argparse.ArgumentError(
                self, f"given twice ({earlier}, then {values}); {self.hint}"
            )
        setattr(namespace, self.dest, values)


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    overrides_only: bool = False,
    config_file: bool = False,
) -> None:
    """One flag per field. ``overrides_only``: unset flags stay out of the namespace, so that
    only what the user typed overrides a config file; ``config_file``: a --config flag for one."""
    if config_file:
        parser.add_argument(
            "--config",
            action=GivenOnce,
            hint="one config file: give other options as flags",
            default=argparse.SUPPRESS,
            help="YAML file of these options; flags given here override it",
        )
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        meta, kind = item.metadata, hints[item.name]
        base = _without_none(kind)
        flag = flag_of(item.name)
        default = argparse.SUPPRESS if overrides_only else item.default
        if meta.get("positional"):
            many = typing.get_origin(base) is list
            parser.add_argument(item.name, nargs="+" if many else None, help=meta["help"])
        elif typing.get_origin(base) is list:  # given once per value: values may hold commas
            parser.add_argument(
                flag,
                dest=item.name,
                action="append",
                default=None if default is dataclasses.MISSING else default,
                required=default is dataclasses.MISSING,
                help=meta["help"],
            )
        elif base is bool:
            parser.add_argument(
                flag, dest=item.name, action="store_true", default=default, help=meta["help"]
            )
        else:
            required = item.default is dataclasses.MISSING
            default_text = (
                ""
                if item.default is None or required
                else f" (default {item.default})".replace("%", "%%")
            )
            optional = {"nargs": "?", "const": meta["const"]} if meta.get("const") else {}
            if meta.get("metavar"):
                optional["metavar"] = meta["metavar"]
            if meta.get("once"):
                optional |= {"action": GivenOnce, "hint": meta["once"]}
            parser.add_argument(
                flag,
                dest=item.name,
                type=base,
                **optional,
                default=None if required else default,
                required=required,
                choices=meta.get("choices"),
                help=meta["help"] + default_text,
            )


def from_namespace(cls: type, namespace: argparse.Namespace, base: dict | None = None):
    """Build ``cls`` from dataclass defaults, then ``base`` (a config file), then the namespace."""
    values = dict(base or {})
    values.update(
        {
            f.name: getattr(namespace, f.name)
            for f in dataclasses.fields(cls)
            if hasattr(namespace, f.name)
        }
    )
    return cls(**values)


def read_config_file(cls: type, path: Path) -> dict:
    """A YAML/JSON mapping of ``cls`` fields, checked key by key; errors give the file and line."""
    if not path.is_file():
        raise FreezetuneError(missing_file("config file", path))
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise FreezetuneError(f"config file {path}{yaml_problem(exc)}") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise FreezetuneError(
            f"config file {path} line {root.start_mark.line + 1}: expected a mapping of options"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values, lines = {}, {}
    for key_node, value_node in root.value:
        key = str(key_node.value).replace("-", "_")
        where = f"config file {path} line {key_node.start_mark.line + 1}"
        if key in lines:  # YAML itself would keep the last one without a word
            raise FreezetuneError(
                f"{where}: '{key_node.value}' is already given on line {lines[key]}"
            )
        lines[key] = key_node.start_mark.line + 1
        if key not in fields:
            meant = [repr(name) for name in likely_options(key, list(fields))]
            raise FreezetuneError(
                f"{where}: unknown option '{key_node.value}'{did_you_mean(meant)}"
            )
        value = yaml.safe_load(yaml.serialize(value_node))
        if key == "plan" and isinstance(value, list):  # its rules, listed as a plan file lists them
            value = FreezePlan.from_list(value, source=f"{where}: 'plan'").render()
        values[key] = _coerce(value, hints[key], fields[key], where)
    return values


def _coerce(value, kind, item, where: str, name: str = ""):
    """``value`` as the field's type, or a one-line error naming the file, line and option (or
    ``name``, an item of a list option)."""
    name = name or f"'{item.name}'"
    if value is None and type(None) in typing.get_args(kind):
        return None
    base = _without_none(kind)
    target = typing.get_origin(base) or base  # list[str] -> list
    if target is list and isinstance(value, str):  # `strategy: full`, a list of one
        value = [value]
    if target is list and isinstance(value, list):
        value = [
            _coerce(v, str, item, where, f"'{item.name}' item {n}") for n, v in enumerate(value, 1)
        ]
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # PyYAML (YAML 1.1) reads 1e-3 as a string, as it has no dot: for a float option it is one
    if target is float and isinstance(value, str) and EXPONENT_FLOAT.fullmatch(value.strip()):
        value = float(value)
    if target is float and isinstance(value, float) and not math.isfinite(value):
        raise FreezetuneError(f"{where}: '{item.name}' must be a finite number, got {value!r}")
    if target is float and isinstance(value, float) and abs(value) > FLOAT32_MAX:
        raise FreezetuneError(
            f"{where}: '{item.name}' {value:g} is beyond the largest float32 ({FLOAT32_MAX:.3g})"
        )
    if target is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        raise FreezetuneError(f"{where}: {name} must be {target.__name__}, got {value!r}")
    choices = item.metadata.get("choices")
    if choices and value not in choices:
        raise FreezetuneError(
            f"{where}: '{item.name}' must be one of {', '.join(choices)}, got {value!r}"
        )
    return value
