"""The one exception type for mistakes a user can fix (bad model name, bad plan, bad file).

The CLI turns it into a one-line message and exit status 2; anything else is a bug and
keeps its traceback.
"""


class FreezetuneError(Exception):
    """A user-facing error: the message says what was wrong and where."""


class PlanError(FreezetuneError):
    """A plan that cannot be parsed or resolved; the message names the rule."""
