"""The README's performance numbers are the benchmark's last results, not numbers typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_readme_performance_tables_match_bench_results():
    result = json.loads((ROOT / "bench" / "results" / "step_time.json").read_text())
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Performance"):readme.index("## Development")]
    assert result["measured"] == "train_step"  # the step `train` runs, not a shortcut beside it
    reference = result["paths"]["freeze75"]["step_time_s"]
    for path, values in result["paths"].items():
        row = (f"| `{path}` | {values['step_time_s']:.2f} | {values['step_time_s'] / reference:.2f} | "
               f"{values['peak_memory_bytes'] / 2**20:,.0f} |")
        assert row in section, f"README row for {path} should read: {row}"
    for name, value in result["ratios"].items():
        assert f"| `{name}` | {value:.2f} |" in section, f"README ratio {name} should be {value:.2f}"
