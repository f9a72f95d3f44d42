"""Results files carry where their numbers came from: commit, versions, CPU, date."""

import datetime
import re
import subprocess

import torch

from freezetune.runs.provenance import provenance


def test_provenance_names_the_commit_versions_machine_and_date():
    where = provenance()
    # the tests run from a git checkout (CI's is a clean clone of main)
    assert re.fullmatch(r"[0-9a-f]{40}", where["commit"]) and isinstance(where["uncommitted_changes"], bool)
    assert where["versions"]["torch"] == torch.__version__ and where["versions"]["transformers"]
    assert where["cpu"] and where["cpu_cores"] >= 1 and where["torch_threads"] == torch.get_num_threads()
    age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(where["date"])
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5)


def test_a_results_file_written_before_does_not_count_as_a_code_change(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "src").mkdir()
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "src" / "code.py").write_text("x = 1\n")
    (tmp_path / "bench" / "results" / "step_time.json").write_text("{}\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    (tmp_path / "bench" / "results" / "step_time.json").write_text('{"new": 1}\n')  # a benchmark just wrote it
    assert provenance(tmp_path / "src")["uncommitted_changes"] is False
    (tmp_path / "src" / "code.py").write_text("x = 2\n")  # code that is not what the commit holds
    assert provenance(tmp_path / "src")["uncommitted_changes"] is True
