"""Evaluation: token-weighted loss and perplexity, greedy generation, exact match."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from freezetune.data.examples import IGNORE, Example, collate, pad_token_id
from freezetune.models.positions import check_generation_length
from freezetune.runs.durable import write_json, write_text
from freezetune.training.answers import answered, exact_match
from freezetune.training.prefix import PrefixRunner


def batches(count: int, size: int, progress: str | None):
    """Start indices of ``count`` items in batches of ``size``, with a transient bar named ``progress``."""
    return tqdm(
        range(0, count, size),
        desc=progress,
        disable=progress is None,
        leave=False,
        dynamic_ncols=True,
    )


def eval_loss(
    model,
    runner: PrefixRunner | None,
    examples: list[Example],
    batch_size: int,
    pad_id: int,
    device,
    key_prefix: str = "eval",
    progress: str | None = None,
    head=None,
) -> dict:
    """Mean next-token loss over every target token of ``examples`` (not a mean of batch means), and each
    example's loss sum and target count.
    ``head``: a TargetHead (training/head.py) projecting only the targets."""
    targeted = head is not None and head.installed
    was_training = model.training
    model.eval()
    total, count, item_sums, item_tokens = 0.0, 0, [], []
    with torch.no_grad():
        for start in batches(len(examples), batch_size, progress):
            chunk = examples[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
            keys = [f"{key_prefix}:{start + i}" for i in range(len(chunk))]
            lengths = [len(e.input_ids) for e in chunk]
            targets = batch["labels"][:, 1:]
            with (
                runner.batch(keys, lengths) if runner else contextlib.nullcontext(),
                head.targets(batch["labels"], per_row=True)
                if targeted
                else contextlib.nullcontext(),
            ):
                logits = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    use_cache=False,
                ).logits
            if targeted:
                sums = logits.float()  # already each row's summed loss of its targets
            else:
                sums = (
                    torch.nn.functional.cross_entropy(
                        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                        targets.reshape(-1),
                        ignore_index=IGNORE,
                        reduction="none",
                    )
                    .reshape(len(chunk), -1)
                    .sum(dim=1)
                )
            item_sums += sums.tolist()
            item_tokens += (targets != IGNORE).sum(dim=1).tolist()
            total += float(sums.sum())
            count += int((targets != IGNORE).sum())
    if was_training:
        model.train()
    loss = total / max(count, 1)
    # per item, so that a comparison can pair items across strategies and seeds (comparison/inference.py)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "tokens": count,
        "item_loss_sums": item_sums,
        "item_tokens": item_tokens,
    }


def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    device,
    batch_size: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    progress: str | None = None,
) -> list[str]:
    """Continuations of token-id prompts (left-padded in batches), decoded without specials:
    greedy, or sampled when ``temperature`` > 0 (from torch's global generator)."""
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    pad_id = pad_token_id(tokenizer)
    was_training = model.training
    model.eval()
    texts = []
    with torch.no_grad():
        for start in batches(len(prompts), batch_size, progress):
            chunk = prompts[start : start + batch_size]
            width = max(len(p) for p in chunk)
            check_generation_length(model, width, max_new_tokens)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, prompt in enumerate(chunk):
                ids[row, width - len(prompt) :] = torch.tensor(prompt)
                mask[row, width - len(prompt) :] = 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                **sampling,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
            )
            texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    if was_training:
        model.train()
    return [t.strip() for t in texts]


def even_batch(count: int, most: int = 64) -> int:
    """The batch size that answers ``count`` prompts in the fewest batches of at most ``most``, split
    evenly: a greedy decode costs a batch of a few rows about as many seconds as a full one on a CPU,
    where each new token is per-step overhead (100 answers: 2 batches of 50, not 32+32+32+4)."""
    batches = max(1, math.ceil(count / most))
    return max(1, math.ceil(count / batches))


def evaluate_model(
    model,
    tokenizer,
    examples: list[Example],
    config,
    device,
    runner: PrefixRunner | None = None,
    label: str = "",
    progress: bool = False,
    head=None,
) -> dict:
    """Eval loss and perplexity; for SFT also exact match by greedy generation on the first
    ``config.eval_generate`` examples, with ``config.show_generations`` of them kept to show."""
    pad_id = pad_token_id(tokenizer)
    result = {"label": label}
    started = time.perf_counter()
    name = (lambda what: f"{label} {what}".strip()) if progress else (lambda what: None)
    measured = eval_loss(
        model,
        runner,
        examples,
        config.batch_size,
        pad_id,
        device,
        progress=name("eval loss"),
        head=head,
    )
    sums, tokens = measured.pop("item_loss_sums"), measured.pop("item_tokens")
    # what a comparison's timing breakdown adds up (comparison/timing.py)
    result["seconds"] = {"evaluation": time.perf_counter() - started, "generation": 0.0}
    result.update({f"eval_{k}": v for k, v in measured.items()})
    # an item's id is its place in the held-out set, which every seed and strategy shares (data/loading.py SPLIT_SEED)
    result["items"] = [
        {"id": i, "loss_sum": s, "tokens": t} for i, (s, t) in enumerate(zip(sums, tokens))
    ]
    chosen = answered(examples, config.eval_generate)
    if config.objective == "sft" and chosen:
        started = time.perf_counter()
        answers = generate(
            model,
            tokenizer,
            [e.prompt_ids for _, e in chosen],
            config.max_new_tokens,
            device,
            batch_size=even_batch(len(chosen)),
            progress=name("answers"),
        )
        result["seconds"]["generation"] = time.perf_counter() - started
        result["exact_match"] = exact_match(answers, [e.reference for _, e in chosen])
        result["exact_match_examples"] = len(chosen)
        every = [
            {
                "id": i,
                "prompt": e.prompt_text,
                "reference": e.reference,
                "output": a,
                "correct": a.strip() == e.reference.strip(),
            }
            for (i, e), a in zip(chosen, answers)
        ]
        for answer in every:
            result["items"][answer["id"]]["correct"] = answer["correct"]
        result["generations"] = every[: config.show_generations]
        # all of them, so that a score can be audited (the loop writes them apart)
        result["answers"] = every
    return result


def describe_evaluation(result: dict) -> str:
    """An evaluation as the run's log shows it: loss, perplexity, exact match, a few generations."""
    line = f"{result['label']}: eval loss {result['eval_loss']:.4f} "
    line += f"(perplexity {result['eval_perplexity']:.2f})"
    if "exact_match" in result:
        line += (
            f", exact match {100 * result['exact_match']:.1f}% of {result['exact_match_examples']}"
        )
    lines = [line]
    for g in result.get("generations", []):
        first, *more = g["output"].splitlines() or [""]
        shown = first + (" …" if more else "")
        lines.append(f"  prompt:    {g['prompt'].splitlines()[-1]}")
        lines.append(f"  expected:  {g['reference']}\n  generated: {shown}")
    return "\n".join(lines)


def write_evaluations(run_dir: Path, before: dict, after: dict) -> None:
    """eval.json (before and after), every answer behind the exact match (generations.jsonl, so the
    score can be checked) and every held-out item's loss and correctness (eval-items.jsonl: what a
    comparison's paired statistics are computed from)."""
    answers, items = after.get("answers", []), after.get("items", [])
    if answers:
        write_text(run_dir / "generations.jsonl", "".join(json.dumps(a) + "\n" for a in answers))
    write_text(run_dir / "eval-items.jsonl", "".join(json.dumps(i) + "\n" for i in items))
    kept = {k: v for k, v in after.items() if k not in ("answers", "items")}
    write_json(run_dir / "eval.json", {"before": before, "after": kept})
