"""Forgetting: how far a tuned model drifted from its base on general text.

The retain set is either the user's text (``--retain FILE``) or, by default, the base
model's own greedy answers to a fixed list of general prompts written for this project:
the base model is then perfectly at home on it, and any change is the tuning's doing.
Measured: perplexity on the retain set (as a change from the base) and the mean KL
divergence KL(base || tuned) of the next-token distributions over its target tokens, plus
the relative weight change ||dW|| / ||W|| per block. The base's distributions are computed
once per comparison and kept on disk (top-k), so no run needs the base model beside it.
"""

from __future__ import annotations

import contextlib
import math

import torch

from freezetune.data.examples import IGNORE, Example, collate, cpt_examples, sft_examples
from freezetune.data.files import Record, read_records
from freezetune.errors import FreezetuneError
from freezetune.plans.anatomy import find_anatomy
from freezetune.training.evaluation import batches, even_batch, generate
from freezetune.training.head import TargetHead

GENERAL_PROMPTS = [
    "Why does the sky look blue during the day?",
    "Give three tips for sleeping better.",
    "What is the difference between weather and climate?",
    "Write a haiku about autumn rain.",
    "How do vaccines train the immune system?",
    "Explain what a prime number is.",
    "What should I pack for a weekend hiking trip?",
    "Summarize the story of Cinderella in two sentences.",
    "How does a bicycle stay upright when it moves?",
    "What are the main causes of inflation?",
    "Suggest a name for a friendly robot.",
    "How do I make a cup of green tea?",
    "Why do cats purr?",
    "What is photosynthesis?",
    "Translate 'good morning' into French and Spanish.",
    "Describe the water cycle.",
    "What is a good way to start learning to play the guitar?",
    "How far is the Moon from the Earth?",
    "Write a polite email declining a meeting invitation.",
    "What is the Pythagorean theorem?",
    "Why is exercise good for mental health?",
    "List four planets of the solar system.",
    "What does a librarian do?",
    "How do airplanes fly?",
    "What is the capital of Canada?",
    "Give an example of a renewable energy source.",
    "Explain recursion to a beginner programmer.",
    "What makes bread rise?",
    "How can I reduce food waste at home?",
    "Write a short story opening about a lighthouse.",
    "Why do leaves change color in the fall?",
    "What is the role of the heart in the body?",
    "How do I sort a list of numbers in Python?",
    "What is a metaphor? Give an example.",
    "Why do we have time zones?",
    "Name three famous painters and one work by each.",
    "How does a refrigerator keep food cold?",
    "What is the difference between a virus and a bacterium?",
    "Plan a simple vegetarian dinner.",
    "What are good habits for studying?",
    "Explain what an API is in simple terms.",
    "How does recycling plastic work?",
    "Why is the ocean salty?",
    "What is the tallest mountain in the world?",
    "Write two lines of dialogue between a teacher and a student.",
    "How do bees make honey?",
    "What is the purpose of a budget?",
    "Describe a sunset using three adjectives.",
    "How does the internet send a message from one computer to another?",
    "What is gravity?",
    "Give advice to someone starting their first job.",
    "What is the boiling point of water at sea level?",
]


def build_retain(
    base,
    tokenizer,
    seq_len: int,
    device,
    path: str | None = None,
    max_new_tokens: int = 48,
    progress: bool = False,
) -> list[Example]:
    """Retain examples: the user's text, or the base model's own answers to GENERAL_PROMPTS."""
    if path is not None:
        records = read_records(path)
        return cpt_examples(records, tokenizer, seq_len).examples
    prompts = [
        Record({"prompt": p, "completion": "x"}, f"retain prompt {i}")
        for i, p in enumerate(GENERAL_PROMPTS)
    ]
    prompt_ids = [e.prompt_ids for e in sft_examples(prompts, tokenizer, seq_len).examples]
    answers = generate(
        base,
        tokenizer,
        prompt_ids,
        max_new_tokens,
        device,
        batch_size=even_batch(len(prompt_ids)),  # 52 prompts: one batch of 52, not 16+16+16+4
        progress="retain set" if progress else None,
    )
    pairs = enumerate(zip(GENERAL_PROMPTS, answers))
    records = [Record({"prompt": p, "completion": a or "."}, f"retain {i}") for i, (p, a) in pairs]
    return sft_examples(records, tokenizer, seq_len).examples


TOP_K = 128  # base probabilities kept per retain token; the rest is one bucket


def _target_log_probs(
    model,
    examples: list[Example],
    batch_size: int,
    pad_id: int,
    device,
    progress: str | None,
    runner=None,
):
    """(log-probs over the vocabulary, target ids) at every target token, example by example in order.
    ``runner``: a PrefixRunner whose cache may hold the frozen prefix's output of these rows."""
    model.eval()
    # the vocabulary projection at the target positions only (install declines where it cannot)
    head = TargetHead(model).install()
    try:
        with torch.no_grad():
            for start in batches(len(examples), batch_size, progress):
                chunk = examples[start : start + batch_size]
                batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
                targets = batch["labels"][:, 1:]
                keep = targets != IGNORE
                keys = [f"retain:{start + i}" for i in range(len(chunk))]
                with (
                    runner.batch(keys, [len(e.input_ids) for e in chunk])
                    if runner
                    else contextlib.nullcontext(),
                    head.targets(batch["labels"], packed=True) as packed,
                ):
                    logits = model(
                        input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"],
                        use_cache=False,
                    ).logits
                logits = logits if packed else logits[:, :-1][keep]
                yield torch.log_softmax(logits.float(), dim=-1), targets[keep]
    finally:
        head.remove()


def base_distributions(
    base,
    examples: list[Example],
    batch_size: int,
    pad_id: int,
    device,
    top_k: int = TOP_K,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The base model's next-token distributions on the retain set, small enough to keep on disk:
    the top-k log-probs with their token ids, and the log-prob of each target token."""
    ids, top, target = [], [], []
    label = "base retain pass" if progress else None
    for log_probs, targets in _target_log_probs(base, examples, batch_size, pad_id, device, label):
        best = log_probs.topk(min(top_k, log_probs.shape[-1]), dim=-1)
        ids.append(best.indices.int().cpu())
        top.append(best.values.cpu())
        target.append(log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu())
    return {"top_ids": torch.cat(ids), "top_logp": torch.cat(top), "target_logp": torch.cat(target)}


def forgetting(
    tuned,
    examples: list[Example],
    reference: dict[str, torch.Tensor],
    batch_size: int,
    pad_id: int,
    device,
    progress: bool = False,
    runner=None,
) -> dict:
    """Retain perplexity of base and tuned model, and the mean KL(base || tuned) per target token.
    The KL sums the base's top-k tokens exactly and its remaining mass as one bucket against the
    tuned model's mass outside those tokens: a lower bound of the full KL, tight where the top-k
    hold nearly all of the base's probability."""
    tuned_nll, kl, offset, token_kl = 0.0, 0.0, 0, []
    for log_probs, targets in _target_log_probs(
        tuned, examples, batch_size, pad_id, device, "retain pass" if progress else None, runner
    ):
        rows = slice(offset, offset + len(targets))
        offset += len(targets)
        base_top = reference["top_logp"][rows].to(device).double()
        tuned_top = log_probs.gather(-1, reference["top_ids"][rows].to(device).long()).double()
        base_rest = (1 - base_top.exp().sum(-1)).clamp_min(0)
        tuned_rest = (1 - tuned_top.exp().sum(-1)).clamp_min(1e-30)
        rest = torch.where(
            base_rest > 0, base_rest * (base_rest.clamp_min(1e-30).log() - tuned_rest.log()), 0.0
        )
        per_token = (base_top.exp() * (base_top - tuned_top)).sum(-1) + rest
        token_kl.append(per_token.cpu())
        kl += float(per_token.sum())
        tuned_nll -= float(log_probs.gather(-1, targets.unsqueeze(-1)).sum())
    count = max(offset, 1)
    if offset != len(reference["target_logp"]):
        raise FreezetuneError(
            f"the stored base distributions cover {len(reference['target_logp'])} retain tokens, "
            f"this retain set has {offset}: the comparison folder is damaged"
        )
    base_ppl = math.exp(-float(reference["target_logp"].double().sum()) / count)
    tuned_ppl = math.exp(tuned_nll / count)
    # per retain document (its KL sum and token count), so that strategies and seeds pair on the same documents
    lengths = [sum(label != IGNORE for label in e.labels[1:]) for e in examples]
    sums = [float(part.sum()) for part in torch.cat(token_kl).split(lengths)] if token_kl else []
    return {
        "retain_ppl_base": base_ppl,
        "retain_ppl": tuned_ppl,
        "retain_ppl_delta": tuned_ppl - base_ppl,
        "retain_kl": kl / count,
        "retain_tokens": count,
        "retain_kl_top_k": reference["top_ids"].shape[-1],
        "retain_kl_items": [
            {"id": i, "kl_sum": k, "tokens": n} for i, (k, n) in enumerate(zip(sums, lengths))
        ],
    }


def layer_drift(base, tuned) -> dict:
    """||W_tuned - W_base|| / ||W_base|| per block and per part outside the blocks."""
    anatomy = find_anatomy(base)
    base_params, tuned_params = dict(base.named_parameters()), dict(tuned.named_parameters())
    sums: dict[str, list[float]] = {}
    for entry in anatomy.entries:
        if entry.name != entry.tensor:
            continue
        key = f"layer {entry.layer}" if entry.part == "block" else entry.part
        before, after = (
            base_params[entry.name].detach().float(),
            tuned_params[entry.name].detach().float(),
        )
        delta, norm = sums.setdefault(key, [0.0, 0.0])
        sums[key] = [
            delta + float((after - before).pow(2).sum()),
            norm + float(before.pow(2).sum()),
        ]
    return {key: math.sqrt(d) / math.sqrt(n) if n else 0.0 for key, (d, n) in sums.items()}
