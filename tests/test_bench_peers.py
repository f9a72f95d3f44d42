"""bench/peers.py's parts that run without LLaMA-Factory's venv: the TRL driver and the ratios."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from freezetune.data.examples import sft_examples
from freezetune.data.files import Record

ROOT = Path(__file__).parent.parent
PEERS = runpy.run_path(str(ROOT / "bench" / "peers.py"))


def _job(model_dir: Path, tmp_path: Path, frozen: int) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = [Record({"prompt": f"Send {n} mugs to Lyon.", "completion": f"ship {n} mugs lyon"}, f"r{n}") for n in range(4)]
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in sft_examples(records, tokenizer, 64).examples]
    job = {"model": str(model_dir), "rows": rows, "seq_len": 64, "batch_size": 2, "epochs": 1, "lr": 1e-3,
           "warmup_ratio": 0.1, "seed": 0, "frozen_blocks": frozen}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return path


def test_the_trl_driver_trains_the_jobs_rows_with_the_bottom_blocks_frozen_by_hand(tiny_chat_model_dir, tmp_path):
    job = _job(tiny_chat_model_dir, tmp_path, frozen=2)
    driver = str(ROOT / "bench" / "peers" / "run_trl.py")
    subprocess.run([sys.executable, driver, "check", str(job), str(tmp_path / "check.json")], check=True, capture_output=True)
    checked = json.loads((tmp_path / "check.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    # all but the embeddings and the two bottom blocks, as users freeze by hand (this model's head is not tied)
    expected = sum(p.numel() for n, p in model.named_parameters()
                   if not n.startswith("model.embed_tokens") and not (n.startswith("model.layers.") and int(n.split(".")[2]) < 2))
    assert checked == {"rows_equal": True, "trainable": expected, "gradient_checkpointing": True}
    subprocess.run([sys.executable, driver, "train", str(job), str(tmp_path / "out"), str(tmp_path / "times.json")],
                   check=True, capture_output=True)
    trained = json.loads((tmp_path / "times.json").read_text())
    assert len(trained["step_times_s"]) == 2 and all(t > 0 for t in trained["step_times_s"])
    assert (tmp_path / "out" / "model.safetensors").is_file()  # it saved, as the timed job does


def test_a_driver_given_other_rows_says_so(tiny_chat_model_dir, tmp_path):
    job = json.loads(_job(tiny_chat_model_dir, tmp_path, frozen=2).read_text())
    hf_job = runpy.run_path(str(ROOT / "bench" / "peers" / "hf_job.py"))
    one_label_less = [{**row, "labels": list(row["labels"])} for row in job["rows"]]
    one_label_less[0]["labels"][-1] = -100  # the last answer token of the first row left out of the loss
    assert hf_job["rows_match"](job, job["rows"]) and not hf_job["rows_match"](job, one_label_less)
    assert not hf_job["rows_match"](job, job["rows"][:-1])


def test_ratios_pair_each_round_then_take_the_median():
    def run(step: float, wall: float) -> dict:
        return {"step_times_s": [step] * 6, "process_wall_s": wall}

    runs = {"freezetune": [run(1, 10), run(2, 20), run(1, 10)], "trl": [run(2, 30), run(2, 30), run(3, 30)],
            "llamafactory": [run(1.5, 10), run(3, 20), run(1, 5)]}
    ratios = PEERS["ratios"](runs, steps_per_epoch=2)
    assert ratios["trl_over_freezetune_3_epochs"] == 2.0  # rounds: 2, 1, 3
    assert ratios["trl_over_freezetune_process_wall"] == 3.0  # rounds: 3, 1.5, 3
    assert ratios["lf_over_freezetune_epoch_1"] == 1.5 and ratios["lf_over_freezetune_process_wall"] == 1.0
    assert PEERS["per_epoch"]([1, 2, 3, 4, 5, 6], 2, 3) == [3, 7, 11]
