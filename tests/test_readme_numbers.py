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


def test_readme_memory_table_matches_bench_results():
    result = json.loads((ROOT / "bench" / "results" / "memory.json").read_text())
    readme = (ROOT / "README.md").read_text()
    for row in result["rows"]:
        line = (f"| {row['strategy']} | {row['precision']} | {row['dtypes']['frozen']} / {row['dtypes']['trainable']} | "
                f"{row['estimate_bytes'] / 2**30:.2f} | {row['measured_bytes'] / 2**30:.2f} | "
                f"{row['measured_bytes'] / row['estimate_bytes']:.2f} |")
        assert line in readme, f"README memory row should read: {line}"
        assert 0.75 <= row["measured_bytes"] / row["estimate_bytes"] <= 4 / 3  # the estimate within a third
    assert f"peaks at {result['ratios']['bf16_over_fp32_freeze75']:.2f}× its fp32 peak" in readme


def test_readme_integration_ratio_matches_bench_results():
    result = json.loads((ROOT / "bench" / "results" / "integration.json").read_text())
    readme = (ROOT / "README.md").read_text()
    steps = result["steps"]
    for name, label in (("trl_default", "frozen by hand"), ("freeze", "with `freeze()`")):
        assert f"| {label} | {steps[name]['step_time_s']:.2f} |" in readme
    assert f"| `trl_default_over_freeze` | {result['ratios']['trl_default_over_freeze']:.2f} |" in readme
