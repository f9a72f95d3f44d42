"""Freeze plans: the model's anatomy, the plan language, resolution to tensors, preview, other
tools' formats, memory estimate."""
