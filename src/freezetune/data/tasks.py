"""Built-in data that needs no download: two order tasks and a stdlib-docstring corpus.

Both tasks turn free-form order sentences into one exact line, so answers are checkable by
exact match. Sentences are generated from a seeded RNG; the held-out split uses a different
seed and never repeats a training sentence. The order task (the step-time benchmark's data)
only copies fields; the dispatch task, the default for SFT, hides them behind arithmetic,
relative days, corrections and a decoy city, so that a short run cannot saturate it.
"""

from __future__ import annotations

import importlib
import inspect
import random

from freezetune.data.files import Record

INSTRUCTION = "Extract the order as: name=...; city=...; qty=...; color=...; item=...; day=..."

FIRST = [
    "Alice",
    "Bruno",
    "Chen",
    "Dmitri",
    "Elena",
    "Farah",
    "Goran",
    "Hana",
    "Ivan",
    "Julia",
    "Kofi",
    "Lena",
    "Mateo",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Victor",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoe",
]
LAST = [
    "Moreno",
    "Okafor",
    "Lindqvist",
    "Tanaka",
    "Novak",
    "Haddad",
    "Silva",
    "Kowalski",
    "Dubois",
    "Rossi",
    "Nguyen",
    "Schmidt",
    "Costa",
    "Petrov",
    "Mensah",
    "Ortiz",
]
CITIES = [
    "Lyon",
    "Oslo",
    "Porto",
    "Kyoto",
    "Accra",
    "Quito",
    "Graz",
    "Cork",
    "Turin",
    "Busan",
    "Lagos",
    "Perth",
    "Leeds",
    "Malmo",
    "Split",
    "Haifa",
    "Cusco",
    "Dakar",
]
ITEMS = {
    "mug": "mugs",
    "notebook": "notebooks",
    "lamp": "lamps",
    "scarf": "scarves",
    "backpack": "backpacks",
    "umbrella": "umbrellas",
    "kettle": "kettles",
    "candle": "candles",
    "towel": "towels",
    "chair": "chairs",
    "blanket": "blankets",
    "teapot": "teapots",
    "pillow": "pillows",
    "basket": "baskets",
}
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
    fields = dict(
        name=name, city=rng.choice(CITIES), color=rng.choice(COLORS), day=rng.choice(DAYS)
    )
    spoken_qty = NUMBER_WORDS[qty - 1] if qty <= 10 and rng.random() < 0.4 else str(qty)
    items = ITEMS[item] if qty > 1 else item
    sentence = rng.choice(TEMPLATES).format(qty=spoken_qty, items=items, **fields)
    answer = f"name={name}; city={fields['city']}; qty={qty}; color={fields['color']}; item={item}; day={fields['day']}"
    return sentence, answer


def draw_records(
    draw, instruction: str, name: str, train_size: int, eval_size: int, seed: int
) -> tuple[list[Record], list[Record]]:
    """Train and held-out records from ``draw(rng)``; no held-out sentence appears in training."""

    def make(count: int, rng: random.Random, seen: set[str], split: str) -> list[Record]:
        records = []
        while len(records) < count:
            sentence, answer = draw(rng)
            if sentence in seen:
                continue
            seen.add(sentence)
            records.append(
                Record(
                    {"prompt": f"{instruction}\n\n{sentence}", "completion": answer},
                    f"built-in {name} {split} #{len(records)}",
                )
            )
        return records

    seen: set[str] = set()
    train = make(train_size, random.Random(seed), seen, "train")
    return train, make(eval_size, random.Random(seed + 1), seen, "eval")


def order_task(
    train_size: int = 400, eval_size: int = 60, seed: int = 1234
) -> tuple[list[Record], list[Record]]:
    """(train, held-out) prompt/completion records of the order-extraction task."""
    return draw_records(_order, INSTRUCTION, "order task", train_size, eval_size, seed)


PACKS = ["boxes", "packs", "crates", "bags"]
WEEKDAY_STEPS = {1: "the day after", 2: "two days after", -1: "the day before"}
DISPATCH_INSTRUCTION = "Write the dispatch line as: QTY x COLOR ITEM to CITY on DAY"


def _quantity(rng: random.Random) -> tuple[int, str]:
    """A count as written in an order: plain, in words, or one that takes arithmetic to read."""
    form = rng.random()
    if form < 0.35:
        qty = rng.randint(1, 20)
        return qty, str(qty)
    if form < 0.5:
        qty = rng.randint(2, 10)
        return qty, NUMBER_WORDS[qty - 1]
    if form < 0.6:
        return rng.choice([(12, "a dozen"), (6, "half a dozen"), (2, "a pair of")])
    packs, each = rng.randint(2, 4), rng.randint(2, 6)
    return packs * each, f"{NUMBER_WORDS[packs - 1]} {rng.choice(PACKS)} of {each}"


def _dispatch(rng: random.Random) -> tuple[str, str]:
    item = rng.choice(sorted(ITEMS))
    qty, spoken = _quantity(rng)
    color, city, day = rng.choice(COLORS), rng.choice(CITIES), rng.randrange(7)
    said_color = color
    if rng.random() < 0.3:  # the customer changes their mind: the last colour counts
        said_color = f"{rng.choice([c for c in COLORS if c != color])}, no wait, {color}"
    said_day = DAYS[day]
    if rng.random() < 0.5:  # a relative day: the answer names the weekday itself
        shift = rng.choice(sorted(WEEKDAY_STEPS))
        said_day = f"{WEEKDAY_STEPS[shift]} {DAYS[(day - shift) % 7]}"
    decoy = rng.choice([c for c in CITIES if c != city])
    where = rng.choice([f"to {city}", f"to {city}", f"from our {decoy} shop to {city}"])
    goods = f"{spoken} {said_color} {ITEMS[item] if qty > 1 else item}"
    sentence = rng.choice(
        [
            f"{rng.choice(FIRST)} needs {goods} sent {where}, arriving {said_day}.",
            f"Please ship {goods} {where} for {said_day}.",
            f"For {said_day}: {goods} {where}.",
        ]
    )
    return sentence, f"{qty} x {color} {item} to {city} on {DAYS[day]}"


def dispatch_task(
    train_size: int = 600, eval_size: int = 200, seed: int = 4321
) -> tuple[list[Record], list[Record]]:
    """(train, held-out) records of the dispatch task: read the real quantity, colour, city and day."""
    return draw_records(
        _dispatch, DISPATCH_INSTRUCTION, "dispatch task", train_size, eval_size, seed
    )


STDLIB_MODULES = [
    "argparse",
    "bisect",
    "calendar",
    "collections",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "enum",
    "fractions",
    "functools",
    "heapq",
    "itertools",
    "json",
    "logging",
    "pathlib",
    "queue",
    "random",
    "re",
    "shutil",
    "statistics",
    "string",
    "tempfile",
    "textwrap",
    "threading",
    "typing",
    "zipfile",
]


def stdlib_docstrings() -> list[Record]:
    """Docstrings of standard-library modules, classes and functions: raw text every Python has."""
    records = []
    for module_name in STDLIB_MODULES:
        module = importlib.import_module(module_name)
        objects = [("", module)] + sorted(
            (name, obj)
            for name, obj in vars(module).items()
            if not name.startswith("_")
            and (inspect.isclass(obj) or inspect.isfunction(obj))
            and getattr(obj, "__module__", None) == module_name
        )
        for name, obj in objects:
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                title = f"{module_name}.{name}" if name else module_name
                records.append(Record({"text": f"{title}\n\n{doc}"}, f"stdlib docstring {title}"))
    return records
