"""`freezetune generate`: one answer from a run folder, an adapter folder or a model, for a quick look."""

from __future__ import annotations

import sys
from pathlib import Path

from freezetune.cli.console import say
from freezetune.errors import FreezetuneError
from freezetune.options.commands import GenerateOptions


def run_generate(options: GenerateOptions) -> str:
    import torch

    from freezetune.training.evaluation import generate
    from freezetune.training.sources import load_source

    source, cache = options.source, Path(options.cache_dir) if options.cache_dir else None
    # `--prompt -`: the prompt piped in, as a long or multi-line one would be
    prompt = sys.stdin.read() if options.prompt == "-" else options.prompt
    loaded = load_source(source, cache)
    tokenizer = loaded.tokenizer
    templated = getattr(tokenizer, "chat_template", None) and not options.plain
    if options.system is not None and not templated:
        raise FreezetuneError(f"--system: {source}'s tokenizer has no chat template to put it in")
    if templated:
        system = [{"role": "system", "content": options.system}] if options.system else []
        turn = [*system, {"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise FreezetuneError(
            "--prompt is empty, and with --plain there is nothing to continue; give some text"
        )
    torch.manual_seed(options.seed or 0)  # the sampled tokens depend on the seed alone
    device = "cuda" if torch.cuda.is_available() else "cpu"
    answer = generate(
        loaded.model.to(device),
        tokenizer,
        [ids],
        options.max_new_tokens,
        device,
        temperature=options.temperature,
        top_p=options.top_p,
    )[0]
    if not answer:  # an empty stdout alone would look like a failure
        say("generate: the answer is empty (only whitespace or special tokens were generated)")
    return answer
