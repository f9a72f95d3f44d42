"""Typed options: one dataclass per command is its schema and its --help text."""
