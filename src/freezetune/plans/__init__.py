"""Freeze plans: the model's anatomy, the plan's words (selectors.py) and language (language.py),
resolution to tensors, schedules, preview, other tools' formats, memory estimate."""
