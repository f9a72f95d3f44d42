"""Loading from every local source; the real embedded model is an integration test."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from freezetune import FreezePlan, find_anatomy, load_model, resolve
from freezetune.cli.commands import main
from freezetune.errors import FreezetuneError
from freezetune.models.loading import DEFAULT_CACHE_DIR


def test_load_local_folder(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir))
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert loaded.path == tiny_llama_dir
    with pytest.raises(FreezetuneError, match="no usable tokenizer"):
        _ = loaded.tokenizer  # a property: reading it is what fails


def test_encoder_models_load_as_masked_lm(tmp_path):
    from conftest import build_tiny

    build_tiny("bert").save_pretrained(tmp_path)
    assert type(load_model(str(tmp_path)).model).__name__ == "BertForMaskedLM"


def test_hub_id_from_the_local_cache_only(tmp_path, tiny_llama_dir):
    # lay out a local HF cache by hand: models--org--name/{refs/main, snapshots/<rev>/...}
    repo = tmp_path / "hub" / "models--tinyorg--tiny-llama"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(tiny_llama_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"))
    ok = subprocess.run([sys.executable, "-m", "freezetune", "plan", "tinyorg/tiny-llama", "train top 1", "--json"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["num_layers"] == 4
    missing = subprocess.run([sys.executable, "-m", "freezetune", "plan", "tinyorg/other", "train top 1"],
                             capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "freezetune never downloads" in missing.stderr


@pytest.mark.integration
def test_embedded_default_model(capsys):
    """`freezetune plan smollm2-135m "freeze bottom 75%"` on the real GGUF model, cached after the first load."""
    code = main(["plan", "smollm2-135m", "freeze bottom 75%", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert code == 0
    assert info["num_layers"] == 30 and info["model_class"] == "LlamaForCausalLM"
    assert info["total_params"] == 134_515_008
    assert [row["index"] for row in info["layers"] if row["trainable_params"]] == list(range(22, 30))
    assert all(row["trainable_params"] == row["params"] for row in info["layers"][22:])
    parts = {row["part"]: row for row in info["parts"]}
    assert parts["embeddings"]["state"] == "frozen"
    assert parts["head"]["state"] == "frozen" and parts["head"]["tied_to"] == ["model.embed_tokens.weight"]
    assert parts["norm"]["state"] == "trainable"
    assert info["lowest_trainable_layer"] == 22
    assert any("lm_head.weight is frozen too" in notice for notice in info["notices"])
    assert info["memory_estimate_bytes"]["total"] < 0.6 * info["full_finetune_memory_estimate_bytes"]["total"]

    # the conversion is cached: a second load reads the HF folder and is quick
    cached = [p for p in DEFAULT_CACHE_DIR.iterdir() if p.name.startswith("SmolLM2-135M-Instruct")]
    assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()
    start = time.perf_counter()
    loaded = load_model("smollm2-135m")
    assert time.perf_counter() - start < 10
    assert loaded.tokenizer.chat_template and loaded.tokenizer.eos_token == "<|im_end|>"
    resolved = resolve(FreezePlan.parse("train mlp@layers 20-29"), find_anatomy(loaded.model))
    assert resolved.lowest_trainable_layer == 20 and len(resolved.trainable_names()) == 30
    # LLaMA-Factory cannot train the final norm alone ('norm' is in every block norm's name): say what it can
    from freezetune.errors import FreezetuneError
    from freezetune.plans.formats import render

    with pytest.raises(FreezetuneError, match=r"nearest plan it can express is 'freeze bottom 75%; freeze norm' "
                                              r"\(freeze_trainable_layers: 8\)"):
        render(resolve(FreezePlan.parse("freeze bottom 75%"), find_anatomy(loaded.model)), "llama-factory")


def test_a_sequence_past_a_learned_position_table_is_refused_and_past_rotary_ones_said(tmp_path, capsys, order_data,
                                                                                       tiny_chat_model_dir):
    import torch
    import transformers as T

    from freezetune.models.positions import position_limit

    from conftest import ARCHITECTURES, build_tiny, build_tokenizer

    assert position_limit(build_tiny("gpt2")) == (64, True)
    assert position_limit(build_tiny("opt")) == (64, True)  # OPT's table keeps 2 rows more
    assert position_limit(build_tiny("llama")) == (2048, False)  # rotary: no table
    folder, tokenizer = tmp_path / "gpt2", build_tokenizer()
    torch.manual_seed(0)
    T.GPT2LMHeadModel(T.GPT2Config(**dict(ARCHITECTURES["gpt2"][2], vocab_size=len(tokenizer)))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text("send three red mugs to Alice in Lyon by Friday\n" * 40)
    # it was an IndexError traceback from the embedding, in training or in generating
    out = tmp_path / "run"
    assert main(["train", "--model", str(folder), "--objective", "cpt", "--data", str(text), "--seq-len", "65", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"freezetune train: error: --seq-len 65 is beyond the 64 positions of {folder}: its position embeddings are "
        "learned, one per position, so a longer sequence cannot run; give --seq-len 64 or less")
    assert not out.exists()
    assert main(["compare", "--model", str(folder), "--objective", "cpt", "--data", str(text), "--seq-len", "65", "--out", str(out)]) == 2
    assert "--seq-len 65 is beyond the 64 positions" in capsys.readouterr().err and not out.exists()
    assert main(["advise", str(folder), "--objective", "cpt", "--data", str(text), "--no-pilot"]) == 2  # --seq-len 512
    assert "--seq-len 512 is beyond the 64 positions" in capsys.readouterr().err
    # plan previews it, and says a run would refuse the --seq-len its estimate is for
    assert main(["plan", str(folder), "freeze bottom 50%"]) == 0
    assert "notice: train will refuse this: --seq-len 512 is beyond the 64 positions" in capsys.readouterr().out
    assert main(["generate", str(folder), "--plain", "--prompt", "send three red mugs", "--max-new-tokens", "64"]) == 2
    assert "--max-new-tokens 64: a prompt of" in capsys.readouterr().err
    # train's answers: refused before the run folder exists, not at the evaluation before training
    assert main(["train", "--model", str(folder), "--data", str(order_data[0]), "--eval-data", str(order_data[1]),
                 "--seq-len", "64", "--eval-generate", "2", "--max-new-tokens", "60", "--out", str(out)]) == 2
    assert "--max-new-tokens 60: a prompt of" in capsys.readouterr().err and not out.exists()
    # and compare's, before its compare.json (it failed at the base reference's answers, the folder written)
    assert main(["compare", "--model", str(folder), "--data", str(order_data[0]), "--eval-data", str(order_data[1]), "--seq-len", "64",
                 "--strategy", "full", "--lr-full", "1e-3", "--max-new-tokens", "60", "--out", str(out)]) == 2
    assert "--max-new-tokens 60: a prompt of" in capsys.readouterr().err and not out.exists()
    # past rotary positions a run can go on, and is told
    assert main(["train", "--model", str(tiny_chat_model_dir), "--data", str(order_data[0]), "--eval-data", str(order_data[1]),
                 "--seq-len", "2049", "--max-steps", "1", "--batch-size", "4", "--eval-generate", "0", "--out", str(tmp_path / "r")]) == 0
    assert (f"notice: --seq-len 2049 is beyond the 2048 positions {tiny_chat_model_dir} was trained on (max_position_embeddings)"
            in capsys.readouterr().err)
