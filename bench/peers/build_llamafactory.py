"""LLaMA-Factory's own venv (bench/peers/llamafactory/), from the pinned bench/peers/llamafactory.txt.

    python bench/peers/build_llamafactory.py ANSWER   # builds only when the requirements changed

Run by bench/peers.py before it times anything (it needs transformers <= 5.6, so it cannot share the
project's venv). The answer file says whether it built, how long that took, and the versions there.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

PEERS = Path(__file__).resolve().parent
VENV = PEERS / "llamafactory"
REQUIREMENTS = PEERS / "llamafactory.txt"
TORCHAUDIO = "torchaudio==2.11.1"  # the last release the index has
PACKAGES = ("llamafactory", "transformers", "trl", "datasets", "accelerate", "peft", "torch")


def build() -> dict:
    """The venv, rebuilt only when its requirements change; whether it was, and how long that took."""
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    marker = VENV / ".installed"
    if marker.exists() and marker.read_text() == wanted:
        return {"built": False}
    started = time.perf_counter()
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    lines = REQUIREMENTS.read_text().splitlines()
    deps = [x for x in lines if x.strip() and not x.startswith(("#", "llamafactory"))]
    tool = [x for x in lines if x.startswith("llamafactory")]
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + ["torch==2.13.0"], check=True)  # the CPU build, as make setup installs it
    subprocess.run(pip + deps, check=True)
    subprocess.run(pip + ["--no-deps", *tool], check=True)
    # LLaMA-Factory imports torchaudio at start-up; the index has only CUDA builds of it, which import
    # (without their compiled extension, unused by text training) once that extension is set aside
    subprocess.run(pip + ["--no-deps", TORCHAUDIO], check=True)
    for library in (VENV / "lib").glob("python3*/site-packages/torchaudio/lib/*.so"):
        library.rename(library.with_suffix(".so.cuda-build"))
    marker.write_text(wanted)
    return {"built": True, "seconds": round(time.perf_counter() - started, 1)}


def versions() -> dict:
    code = "import importlib.metadata as m, json, sys; print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    python = str(VENV / "bin" / "python")
    done = subprocess.run(
        [python, "-c", code, *PACKAGES], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def main() -> None:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    Path(sys.argv[1]).write_text(json.dumps({**build(), "versions": versions()}) + "\n")


if __name__ == "__main__":
    main()
