"""The code passes its linter and is as its formatter writes it (ruff, configured in pyproject.toml),
so style is checked, not argued."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def ruff() -> str:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: it is in the dev extras (pip install -e '.[dev]')")
    return found


def test_ruff_finds_nothing():
    done = subprocess.run([ruff(), "check", "src", "tests", "bench", "docs"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_code_is_as_the_formatter_writes_it():
    done = subprocess.run([ruff(), "format", "--check", "src", "tests", "bench", "docs"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"run `ruff format` ({done.stdout.strip()})"
