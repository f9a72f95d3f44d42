"""Results files carry where their numbers came from: commit, versions, CPU, date."""

import datetime
import re

import torch

from freezetune.runs.provenance import provenance


def test_provenance_names_the_commit_versions_machine_and_date():
    where = provenance()
    # the tests run from a git checkout (CI's is a clean clone of main)
    assert re.fullmatch(r"[0-9a-f]{40}", where["commit"]) and isinstance(where["uncommitted_changes"], bool)
    assert where["versions"]["torch"] == torch.__version__ and where["versions"]["transformers"]
    assert where["cpu"] and where["cpu_cores"] >= 1 and where["torch_threads"] == torch.get_num_threads()
    age = datetime.datetime.now(datetime.UTC) - datetime.datetime.fromisoformat(where["date"])
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5)
