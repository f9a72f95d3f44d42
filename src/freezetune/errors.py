"""The one exception type for mistakes a user can fix (bad model name, bad plan, bad file).

The CLI turns it into a one-line message and exit status 2; anything else is a bug and
keeps its traceback.
"""


class FreezetuneError(Exception):
    """A user-facing error: the message says what was wrong and where."""


class PlanError(FreezetuneError):
    """A plan that cannot be parsed or resolved; the message names the rule."""


def yaml_problem(exc: Exception) -> str:
    """A YAML parser's error as ' line N: not valid YAML: what', the line where the parser gave up."""
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    return f"{where}: not valid YAML: {problem}"


def missing_file(what: str, path) -> str:
    """Why ``path`` cannot be read as a file: "does not exist" misled where it is a folder."""
    from pathlib import Path

    return (
        f"{what} {path} is a folder, not a file"
        if Path(path).is_dir()
        else f"{what} {path} does not exist"
    )
