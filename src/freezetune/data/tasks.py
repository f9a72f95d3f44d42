"""Built-in data that needs no download: an order-extraction task and a stdlib-docstring corpus.

The task turns free-form order sentences into one exact record line, so answers are
checkable by exact match. Sentences are generated from a seeded RNG; the held-out split
uses a different seed and never repeats a training sentence.
"""

from __future__ import annotations

import importlib
import inspect
import random

from freezetune.data.files import Record

INSTRUCTION = "Extract the order as: name=...; city=...; qty=...; color=...; item=...; day=..."

FIRST = ["Alice", "Bruno", "Chen", "Dmitri", "Elena", "Farah", "Goran", "Hana", "Ivan", "Julia", "Kofi",
         "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Victor",
         "Wen", "Ximena", "Yusuf", "Zoe"]
LAST = ["Moreno", "Okafor", "Lindqvist", "Tanaka", "Novak", "Haddad", "Silva", "Kowalski", "Dubois",
        "Rossi", "Nguyen", "Schmidt", "Costa", "Petrov", "Mensah", "Ortiz"]
CITIES = ["Lyon", "Oslo", "Porto", "Kyoto", "Accra", "Quito", "Graz", "Cork", "Turin", "Busan", "Lagos",
          "Perth", "Leeds", "Malmo", "Split", "Haifa", "Cusco", "Dakar"]
ITEMS = {"mug": "mugs", "notebook": "notebooks", "lamp": "lamps", "scarf": "scarves", "backpack": "backpacks",
         "umbrella": "umbrellas", "kettle": "kettles", "candle": "candles", "towel": "towels",
         "chair": "chairs", "blanket": "blankets", "teapot": "teapots", "pillow": "pillows", "basket": "baskets"}
COLORS = ["red", "blue", "green", "black", "white", "yellow", "orange", "purple", "grey", "pink"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

TEMPLATES = [
    "Please send {qty} {color} {items} to {name} in {city} by {day}.",
    "{name} from {city} wants {qty} {color} {items}, delivery on {day}.",
    "Order for {name} ({city}): {qty} {color} {items}, needed {day}.",
    "Could you ship {qty} {color} {items} to {city}? It's for {name}, arriving {day} please.",
    "{day} delivery: {qty} {color} {items} for {name}, {city}.",
    "Hi, this is {name}. I'd like {qty} {color} {items} delivered to {city} on {day}.",
    "New request - {name}, {city}, {qty} x {color} {items}, deliver {day}.",
    "{name} in {city} ordered {qty} {color} {items} for {day}.",
    "Ship to {city} on {day}: {qty} {color} {items}, attention {name}.",
    "For {day}, {name} needs {qty} {color} {items} sent over to {city}.",
]


def _order(rng: random.Random) -> tuple[str, str]:
    item = rng.choice(sorted(ITEMS))
    qty = rng.randint(1, 10) if rng.random() < 0.8 else rng.randint(11, 24)
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    fields = dict(name=name, city=rng.choice(CITIES), color=rng.choice(COLORS), day=rng.choice(DAYS))
    spoken_qty = NUMBER_WORDS[qty - 1] if qty <= 10 and rng.random() < 0.4 else str(qty)
    items = ITEMS[item] if qty > 1 else item
    sentence = rng.choice(TEMPLATES).format(qty=spoken_qty, items=items, **fields)
    answer = f"name={name}; city={fields['city']}; qty={qty}; color={fields['color']}; item={item}; day={fields['day']}"
    return sentence, answer


def order_task(train_size: int = 400, eval_size: int = 60, seed: int = 1234) -> tuple[list[Record], list[Record]]:
    """(train, held-out) prompt/completion records of the order-extraction task."""
    def make(count: int, rng: random.Random, avoid: set[str], split: str) -> list[Record]:
        records, seen = [], set(avoid)
        while len(records) < count:
            sentence, answer = _order(rng)
            if sentence in seen:
                continue
            seen.add(sentence)
            prompt = f"{INSTRUCTION}\n\n{sentence}"
            records.append(Record({"prompt": prompt, "completion": answer}, f"built-in order task {split} #{len(records)}"))
        return records

    train = make(train_size, random.Random(seed), set(), "train")
    avoid = {r.fields["prompt"].rsplit("\n\n", 1)[1] for r in train}
    return train, make(eval_size, random.Random(seed + 1), avoid, "eval")


STDLIB_MODULES = [
    "argparse", "bisect", "calendar", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "enum", "fractions", "functools", "heapq", "itertools", "json", "logging", "pathlib", "queue",
    "random", "re", "shutil", "statistics", "string", "tempfile", "textwrap", "threading", "typing", "zipfile",
]


def stdlib_docstrings() -> list[Record]:
    """Docstrings of standard-library modules, classes and functions: raw text every Python has."""
    records = []
    for module_name in STDLIB_MODULES:
        module = importlib.import_module(module_name)
        objects = [("", module)] + sorted(
            (name, obj) for name, obj in vars(module).items()
            if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
            and getattr(obj, "__module__", None) == module_name
        )
        for name, obj in objects:
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                title = f"{module_name}.{name}" if name else module_name
                records.append(Record({"text": f"{title}\n\n{doc}"}, f"stdlib docstring {title}"))
    return records
