"""A built-in short-answer classification task: route a customer's message to one of five queues.

The answer is one word, so the loss sits on a token or two per example: the opposite of the
dispatch task's long structured answer, and the kind of task where which layers to train has
been reported to differ. Messages mix the words of several queues ("the refund for my broken
charger"), so the queue is decided by what the customer asks for, not by one keyword.
"""

from __future__ import annotations

import random

from freezetune.data.files import Record
from freezetune.data.tasks import CITIES, ITEMS, draw_records

TICKET_INSTRUCTION = (
    "Route the customer's message to one queue. Answer with one word: billing, shipping, "
    "returns, technical or account."
)
ASKS = {
    "billing": [
        "I was charged twice for the {item} I ordered. Please fix the payment.",
        "Why does my invoice for the {item} show {amount} dollars more than the price?",
        "My card was billed {amount} dollars but the order of the {item} was cancelled.",
        "Can I pay for the {item} in three instalments instead of one charge?",
    ],
    "shipping": [
        "The {item} I ordered still has not arrived in {city}. Where is the parcel?",
        "Tracking for my {item} has said 'in transit' for {days} days now.",
        "Can the courier deliver the {item} to my office in {city} instead of my home?",
        "The delivery of my {item} was left at the wrong address in {city}.",
    ],
    "returns": [
        "The {item} arrived broken. How do I send it back for a refund?",
        "I would like to return the {item}; it is not the size I expected.",
        "Can I exchange the {item} for another colour within the {days}-day window?",
        "I sent the {item} back {days} days ago. Has the return been received?",
    ],
    "technical": [
        "The app crashes every time I try to view my order of the {item}.",
        "The {item} will not pair with my phone after the latest update.",
        "Your website shows an error when I open the page of the {item}.",
        "The {item} stops working after {days} minutes of use. Is there a reset?",
    ],
    "account": [
        "I cannot log in to my account to see the {item} I ordered; the password reset never comes.",
        "Please change the email address on my account; I moved to {city}.",
        "How do I delete my account and the saved order history of the {item}?",
        "Someone else seems to be using my account: there is an order for a {item} I never made.",
    ],
}


def _ticket(rng: random.Random) -> tuple[str, str]:
    queue = rng.choice(sorted(ASKS))
    message = rng.choice(ASKS[queue]).format(
        item=rng.choice(sorted(ITEMS)),
        amount=rng.randint(5, 90),
        city=rng.choice(CITIES),
        days=rng.randint(2, 30),
    )
    # so that few templates still give many distinct messages
    opener = rng.choice(["", "Hi, ", "Hello, ", "Good morning. "])
    return f"Message: {opener}{message} (order #{rng.randint(10000, 99999)})", queue


def ticket_task(
    train_size: int = 400, eval_size: int = 150, seed: int = 2024
) -> tuple[list[Record], list[Record]]:
    """(train, held-out) records of the ticket-routing task; no held-out message appears in training."""
    return draw_records(_ticket, TICKET_INSTRUCTION, "ticket task", train_size, eval_size, seed)
