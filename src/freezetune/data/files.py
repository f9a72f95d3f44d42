"""Reading training data files into records that remember where they came from.

Formats: .jsonl, .json, .csv, .parquet, .txt, or a folder saved by HF ``datasets``
(``save_to_disk``); ``datasets`` does the reading. Each record keeps its file and line (or
row) so that a bad record is reported precisely.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from freezetune.errors import FreezetuneError

LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


@dataclass(frozen=True)
class Record:
    fields: dict
    where: str  # "data.jsonl line 7", "data.csv line 3", "data.parquet row 12"

    @property
    def given(self) -> str:
        """The fields this record gives, for an error: datasets fills other records' columns with None.
        A field holding a list of objects is said to: records wrapped in {"data": [...]} look like that."""

        def said(name: str, value) -> str:
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                return f"{name} (a list of {len(value)} objects)"
            return name

        names = sorted(k for k, v in self.fields.items() if v is not None)
        return ", ".join(said(k, self.fields[k]) for k in names) or "nothing"


def _jsonl_line_numbers(path: Path) -> list[int]:
    """1-based numbers of the non-blank lines: datasets skips blank lines, so rows shift."""
    with open(path, encoding="utf-8") as handle:
        return [i for i, line in enumerate(handle, start=1) if line.strip()]


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object's dict, or KeyError naming the first field it gives twice."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise KeyError(key)
        seen.add(key)
    return dict(pairs)


def _given_twice(path: Path, line: int, field: str) -> str:
    return f"{path} line {line}: field '{field}' is given twice in one record"


def _repeated_field_in_array(path: Path, text: str) -> str:
    """Where a record of a JSON array gives a field twice: Python's json, which datasets reads arrays with,
    keeps the last value without a word (pyarrow refuses such JSON lines, and _locate_jsonl_error names them)."""
    decoder, space = json.JSONDecoder(object_pairs_hook=_unique_keys), re.compile(r"[\s,]*")
    start = space.match(text).end()
    if not text.startswith("[", start):
        return ""
    position = space.match(text, start + 1).end()
    while position < len(text) and text[position] != "]":
        try:
            _, end = decoder.raw_decode(text, position)
        except KeyError as exc:
            return _given_twice(path, text.count("\n", 0, position) + 1, exc.args[0])
        except ValueError:
            return ""  # malformed: datasets says so
        position = space.match(text, end).end()
    return ""


def _repeated_column(path: Path, text: str) -> str:
    """A CSV header's column named twice: pandas would rename the second 'NAME.1', and the first be read alone."""
    header = next(csv.reader(io.StringIO(text)), [])
    repeated = next((name for name in header if name and header.count(name) > 1), None)
    return f"{path} line 1: column '{repeated}' appears twice in the header" if repeated else ""


def _locate_jsonl_error(path: Path) -> str:
    """Find the first line that breaks the file, for an error datasets reports vaguely."""
    types: dict[str, tuple[type, int]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as exc:
                return f"{path} line {number}: not valid JSON ({exc.msg})"
            except KeyError as exc:  # which value was meant is unknowable; pyarrow refuses the file
                return _given_twice(path, number, exc.args[0])
            if not isinstance(record, dict):
                return f"{path} line {number}: expected a JSON object, got {type(record).__name__}"
            for key, value in record.items():
                if value is None:
                    continue
                first = types.setdefault(key, (type(value), number))
                if first[0] is not type(value):
                    return (
                        f"{path} line {number}: field '{key}' is {type(value).__name__}, "
                        f"but line {first[1]} has {first[0].__name__}"
                    )
    return ""


def _utf8_text(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are an error naming the line and column."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FreezetuneError(
            f"{path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from None


def read_records(path_text: str) -> list[Record]:
    """All records of one data file or saved dataset folder; errors name the file (and line)."""
    import datasets

    path = Path(path_text).expanduser()
    if not path.exists():
        raise FreezetuneError(f"data file {path_text} does not exist")
    if path.is_dir():
        try:
            table = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise FreezetuneError(
                f"{path_text} is not a dataset folder saved by `datasets` ({exc})"
            ) from None
        if isinstance(table, datasets.DatasetDict):
            # which split a file means is the user's to say: each is a dataset folder of its own
            if len(table) > 1:
                raise FreezetuneError(
                    f"{path_text} holds the splits {', '.join(table)}: give one, e.g. "
                    f"{path / next(iter(table))}"
                )
            table = next(iter(table.values()))
        return [Record(dict(row), f"{path} row {i}") for i, row in enumerate(table)]
    suffix = path.suffix.lower()
    if suffix not in LOADERS:
        raise FreezetuneError(
            f"data file {path_text}: unsupported type '{suffix}'; use {', '.join(LOADERS)} or a dataset folder"
        )
    if suffix != ".parquet":
        text = _utf8_text(path)
        if not text.strip():
            return []  # the caller says "no usable example", naming the data
        if suffix == ".json" and (repeated := _repeated_field_in_array(path, text)):
            raise FreezetuneError(repeated)
        if suffix == ".csv" and (repeated := _repeated_column(path, text)):
            raise FreezetuneError(repeated)
    logger = logging.getLogger("datasets")
    level = logger.level
    try:
        # a .txt file is one document of raw text (continued pre-training), not one record per line
        options = {"sample_by": "document"} if suffix == ".txt" else {}
        logger.setLevel(logging.CRITICAL)  # it logs its own parse errors; ours below names the line
        table = datasets.load_dataset(
            LOADERS[suffix], data_files=str(path), split="train", **options
        )
    except Exception as exc:  # pyarrow and datasets raise many types for a malformed file
        detail = _locate_jsonl_error(path) if suffix in (".jsonl", ".json") else ""
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise FreezetuneError(detail or f"data file {path_text}: cannot be read: {first}") from None
    finally:
        logger.setLevel(level)
    if suffix == ".jsonl":
        lines = _jsonl_line_numbers(path)
        return [Record(dict(row), f"{path} line {lines[i]}") for i, row in enumerate(table)]
    if suffix == ".txt":
        return [Record(dict(row), str(path)) for row in table]
    # a CSV header is line 1; a JSON array and parquet only have rows
    label = (lambda i: f"line {i + 2}") if suffix == ".csv" else (lambda i: f"record {i + 1}")
    return [Record(dict(row), f"{path} {label(i)}") for i, row in enumerate(table)]


def content_hash(path: str | None) -> str | None:
    """sha256 of a data file, or of every file in a dataset folder (names and bytes): a folder whose
    content changed is other data, even at the same path. A path that does not exist stands for itself."""
    if not path or not Path(path).exists():
        return path
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        if file != root:
            digest.update(str(file.relative_to(root)).encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()
