"""The README's demo block, rendered from the committed results of `make demo`.

    make demo && cp runs/demo/results.json docs/results/demo/ && .venv/bin/python docs/render_demo.py

rewrites the block between the README's demo markers; tests/test_readme_numbers.py fails when
the README and docs/results/demo/results.json disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from freezetune.comparison.flips import task_lines
from freezetune.comparison.report import markdown_table, measured_line
from freezetune.comparison.timing import timing_line

ROOT = Path(__file__).parent.parent
RESULTS = ROOT / "docs" / "results" / "demo" / "results.json"
BEGIN, END = "<!-- demo:begin", "<!-- demo:end -->"


def render(results: dict) -> str:
    """The table the demo's report.md shows, where and how it was measured, and the verdict's lines."""
    minutes = results["invocation_wall_s"] / 60
    timing = f" {timing_line(results['timing'])}" if results.get("timing") else ""
    return (
        f"{measured_line(results['provenance'])} Its `freezetune compare` took {minutes:.1f} minutes.{timing}\n\n"
        + markdown_table(([results["base"]] if results["base"] else []) + results["runs"])
        + "\n"
        + "".join(f"> {line}\n>\n" for line in results["recommendation"]).rstrip(">\n")
        + "\n"
        + "".join(f"\n- Retain task: {line}" for line in task_lines(results["runs"]))
        + ("\n" if task_lines(results["runs"]) else "")
    )


def block(readme: str) -> str:
    """What sits between the markers now (the begin marker's line excluded)."""
    start = readme.index(BEGIN)
    return readme[readme.index("\n", start) + 1 : readme.index(END)]


def main() -> None:
    readme = (ROOT / "README.md").read_text()
    fresh = render(json.loads(RESULTS.read_text()))
    start = readme.index("\n", readme.index(BEGIN)) + 1
    (ROOT / "README.md").write_text(readme[:start] + fresh + readme[readme.index(END) :])
    print(f"README demo block rewritten from {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
