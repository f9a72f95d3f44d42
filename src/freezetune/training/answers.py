"""The held-out answers behind exact match: which items are answered, whether a generation can
reach each answer at all, and how the answers are scored.

Exact match compares a greedy generation of at most --max-new-tokens tokens with the item's last
response. A response longer than that can never match, so a metric built on such items would
read as "no strategy learned anything": said before a run trains, not found in its report.
"""

from __future__ import annotations

from freezetune.data.examples import Example
from freezetune.models.positions import check_generation_length


def answered(examples: list[Example], count: int) -> list[tuple[int, Example]]:
    """(item id, example) of the held-out items whose answers are generated and checked: the first
    ``count`` with a reference answer."""
    return [(i, e) for i, e in enumerate(examples) if e.reference is not None][:count]


def exact_match(predictions: list[str], references: list[str]) -> float:
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / max(
        len(references), 1
    )


def chosen_answers(examples: list[Example], config) -> list[tuple[int, Example]]:
    """The items a run of ``config`` answers: none for an objective without answers."""
    return answered(examples, config.eval_generate) if config.objective == "sft" else []


def check_answers_fit(model, examples: list[Example], config) -> None:
    """The answers a run's evaluation will generate fit a learned position table: said before a
    run or a comparison writes its folder, not at the first answer."""
    chosen = chosen_answers(examples, config)
    if chosen:
        longest = max(len(e.prompt_ids) for _, e in chosen)
        check_generation_length(model, longest, config.max_new_tokens)


def answer_lengths(chosen: list[tuple[int, Example]], tokenizer) -> list[int]:
    """Tokens of each chosen item's reference (chosen_answers), as the model would generate its text."""
    if not chosen:
        return []
    encoded = tokenizer([e.reference.strip() for _, e in chosen], add_special_tokens=False)
    return [len(ids) for ids in encoded["input_ids"]]


def out_of_reach(lengths: list[int], max_new_tokens: int) -> str | None:
    """What the answers longer than --max-new-tokens mean for exact match, or None when all fit."""
    longer = sum(n > max_new_tokens for n in lengths)
    if not longer:
        return None
    fit = f"--max-new-tokens {max(lengths)} fits every answer"
    if longer == len(lengths):
        return (
            f"none of the {len(lengths)} held-out answers can be matched: each is longer than "
            f"--max-new-tokens {max_new_tokens} tokens; {fit}"
        )
    many = longer != 1
    return (
        f"{longer} of the {len(lengths)} held-out answers {'are' if many else 'is'} longer than "
        f"--max-new-tokens {max_new_tokens} tokens, so exact match cannot count "
        f"{'them' if many else 'it'} as right; {fit}"
    )


def answer_notices(examples: list[Example], tokenizer, config) -> list[str]:
    """What keeps exact match from counting the items the user asked for: fewer answered items than
    --eval-generate, and answers no generation of --max-new-tokens can reach."""
    chosen = chosen_answers(examples, config)
    if not chosen:
        return []
    notices = []
    if len(chosen) < config.eval_generate:
        notices.append(
            f"exact match is scored on the {len(chosen)} held-out example{'s' * (len(chosen) != 1)} "
            f"with an answer, fewer than --eval-generate {config.eval_generate} asks for"
        )
    reach = out_of_reach(answer_lengths(chosen, tokenizer), config.max_new_tokens)
    return notices + [reach] * bool(reach)
