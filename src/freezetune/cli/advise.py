"""`freezetune advise`: load the model and the data, hold out the pilots' validation split, advise."""

from __future__ import annotations

import json
from pathlib import Path

from freezetune.cli.console import say
from freezetune.options.advise import AdviseOptions


def run_advise(options: AdviseOptions) -> str:
    """`freezetune advise`: evidence per block, candidate plans, pilot runs and the pick within the budget."""
    from freezetune.advice import advisor, pilot_data, pilots
    from freezetune.models.loading import load_model, require_causal_lm
    from freezetune.models.positions import check_seq_len

    loaded = load_model(
        options.model, cache_dir=Path(options.cache_dir) if options.cache_dir else None
    )
    examples, request, budget = None, None, options.pilot_budget()
    if options.data or budget is not None:  # pilots without --data train on the built-in task
        from freezetune.data.loading import load_data

        require_causal_lm(loaded, "advise --data" if options.data else "advise --pilot")
        past_positions = check_seq_len(loaded.model, options.seq_len, options.model)
        if past_positions:
            say(past_positions)
        train, _, _ = load_data(
            loaded.tokenizer, options.objective, options.data, seq_len=options.seq_len
        )
        examples = train.examples
        if budget is not None:
            kept, held = pilot_data.hold_out(train, options.validation)
            data = pilot_data.pilot_data(
                loaded, kept, held, options.retain, options.batch_size, options.seq_len
            )
            steps, seconds = budget
            request = pilots.PilotRequest(
                data,
                pilots.PilotBudget(steps, seconds),
                options.lr,
                options.pilot_candidates,
                options.prefer,
            )
    info = advisor.advise(
        loaded,
        examples,
        options.budget_bytes(),
        options.seq_len,
        options.batch_size,
        options.dtype,
        request,
        say,
    )
    info = {"model": options.model, "data": options.data, **info}
    return json.dumps(info, indent=2) if options.json else advisor.render_text(info)
