"""The training loop on a tiny chat model: run folder, cache equivalence, resume."""

import contextlib
import json

import pytest
import torch
from safetensors.torch import load_file

from freezetune.config.run import TrainConfig
from freezetune.errors import FreezetuneError
from freezetune.training.loop import TrainingLoop
from freezetune.training.session import open_session

from helpers import config_for, losses, train


def test_run_folder_holds_only_the_trained_tensors(tiny_chat_model_dir, order_data, tmp_path):
    out = tmp_path / "run"
    result = train(config_for(tiny_chat_model_dir, order_data, out, plan="freeze bottom 50%"))
    assert result["status"] == "finished" and result["step"] == 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["base_model"]["sha256"]) == 64
    assert manifest["plan"] == ["freeze bottom 50%"] and manifest["config"]["lr"] == 1e-2
    assert {"torch", "transformers", "accelerate", "freezetune"} <= set(manifest["versions"])
    saved = load_file(str(out / "trainable.safetensors"))
    assert sorted(saved) == sorted(manifest["trainable_names"])
    assert all(name.startswith(("model.layers.2.", "model.layers.3.", "model.norm", "lm_head")) for name in saved)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "tokens_per_s", "peak_memory_bytes"} <= set(records[0])
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["after"]["eval_loss"] < evaluation["before"]["eval_loss"]
    assert 0.0 <= evaluation["after"]["exact_match"] <= 1.0 and evaluation["after"]["exact_match_examples"] == 2
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-000004", "step-000006"]
    moments = lambda step: load_file(str(out / "checkpoints" / f"step-{step:06d}" / "optimizer.safetensors"))  # noqa: E731
    assert moments(4) and not moments(6)  # no step follows the last, and a resume may not add any: its moments are dead weight


def test_cpt_objective_on_text(tiny_chat_model_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    config = TrainConfig(model=str(tiny_chat_model_dir), objective="cpt", data=str(corpus), out=str(tmp_path / "cpt"),
                         seq_len=32, batch_size=2, max_steps=3, plan="train top 2")
    result = train(config)
    assert result["status"] == "finished" and "exact_match" not in result["after"]


def test_prefix_cache_matches_the_uncached_run(tiny_chat_model_dir, order_data, tmp_path):
    # 3 epochs of 5 batches: epochs 2-3 and the final eval replay the cache
    common = dict(plan="freeze bottom 75%", max_steps=15, save_every=0, eval_generate=0)
    train(config_for(tiny_chat_model_dir, order_data, tmp_path / "off", prefix_cache="off", **common))
    session = open_session(config_for(tiny_chat_model_dir, order_data, tmp_path / "mem", prefix_cache="memory", **common))
    trainer = TrainingLoop(session, log=lambda m: None, progress=False)
    replays = []
    original = trainer.runner.batch

    @contextlib.contextmanager
    def counting(keys=None, lengths=None):
        with original(keys, lengths) as replayed:  # True: the frozen blocks were skipped for this batch
            replays.append(replayed)
            yield replayed

    trainer.runner.batch = counting
    trainer.run()
    assert sum(replays) >= 10  # the cache was really used
    assert losses(tmp_path / "mem") == pytest.approx(losses(tmp_path / "off"), rel=1e-5, abs=1e-6)
    off = json.loads((tmp_path / "off" / "eval.json").read_text())["after"]["eval_loss"]
    mem = json.loads((tmp_path / "mem" / "eval.json").read_text())["after"]["eval_loss"]
    assert mem == pytest.approx(off, rel=1e-5)


def test_disk_cache_is_keyed_and_reused(tiny_chat_model_dir, order_data, tmp_path):
    common = dict(plan="freeze bottom 75%", max_steps=5, save_every=0, eval_generate=0, prefix_cache="disk",
                  cache_dir=str(tmp_path / "cache"))
    first = open_session(config_for(tiny_chat_model_dir, order_data, tmp_path / "a", **common))
    assert "prefix cache: disk" in " ".join(first.notes) and "reused" not in " ".join(first.notes)
    TrainingLoop(first, log=lambda m: None, progress=False).run()
    folders = list((tmp_path / "cache" / "prefix").iterdir())
    assert len(folders) == 1 and list(folders[0].glob("shard-*.safetensors")) and (folders[0] / "index.json").is_file()
    meta = json.loads((folders[0] / "freezetune-prefix-cache.json").read_text())["meta"]
    assert meta["attention"] and meta["config_json_sha256"] and set(meta["versions"]) == {"torch", "transformers"}
    second = open_session(config_for(tiny_chat_model_dir, order_data, tmp_path / "b", **common))
    assert "reused from an earlier run" in " ".join(second.notes)
    TrainingLoop(second, log=lambda m: None, progress=False).run()
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-5)
    # another plan (another prefix) gets another key
    third = open_session(config_for(tiny_chat_model_dir, order_data, tmp_path / "c", **dict(common, plan="freeze bottom 50%")))
    assert "reused" not in " ".join(third.notes)


def test_interrupted_run_resumes_to_the_same_losses(tiny_chat_model_dir, order_data, tmp_path):
    reference = tmp_path / "straight"
    train(config_for(tiny_chat_model_dir, order_data, reference, prefix_cache="off"))
    broken = tmp_path / "broken"
    calls = iter(range(100))
    result = train(config_for(tiny_chat_model_dir, order_data, broken, prefix_cache="off"),
                   should_stop=lambda: next(calls) == 3)
    assert result == {"status": "interrupted", "step": 3, "run_dir": str(broken)}
    assert not (broken / "trainable.safetensors").exists()
    resumed = train(config_for(tiny_chat_model_dir, order_data, broken, prefix_cache="off", resume=str(broken)))
    assert resumed["status"] == "finished"
    assert losses(broken) == losses(reference)
    assert load_file(str(broken / "trainable.safetensors")).keys() == load_file(str(reference / "trainable.safetensors")).keys()
    for name, tensor in load_file(str(reference / "trainable.safetensors")).items():
        assert torch.equal(tensor, load_file(str(broken / "trainable.safetensors"))[name])


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tiny_chat_model_dir, order_data, tmp_path):
    out = tmp_path / "nan"
    config = config_for(tiny_chat_model_dir, order_data, out, plan="train all", lr=1e6, max_grad_norm=0.0,
                        save_every=1, max_steps=30, prefix_cache="off")
    with pytest.raises(FreezetuneError, match=r"step \d+: the loss is (nan|inf); stopped \(the last good checkpoint is .*step-0000\d\d\)"):
        train(config)
    assert (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())


def test_lora_adapters_are_drawn_from_the_seed_alone(tiny_chat_model_dir, order_data, tmp_path):
    def adapters(out, seed):
        torch.randn(1000)  # earlier work in the process (other runs of a comparison) moves the global RNG
        model = open_session(config_for(tiny_chat_model_dir, order_data, out, lora_r=4, seed=seed)).loaded.model
        return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_A." in n}

    first, again, other = adapters(tmp_path / "a", 0), adapters(tmp_path / "b", 0), adapters(tmp_path / "c", 1)
    assert first and all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)


def test_a_run_within_one_epoch_caches_the_held_out_rows_only(tiny_chat_model_dir, order_data, tmp_path):
    from freezetune.config.run import TrainConfig
    from freezetune.training.loop import TrainingLoop
    from freezetune.training.session import open_session

    cached = {}
    for steps in (2, 6):  # 20 rows in batches of 4: 5 steps an epoch
        config = TrainConfig(model=str(tiny_chat_model_dir), data=str(order_data[0]), eval_data=str(order_data[1]),
                             out=str(tmp_path / f"run{steps}"), batch_size=4, seq_len=64, max_steps=steps,
                             eval_generate=0, prefix_cache="memory", plan="freeze bottom 50%")
        session = open_session(config)
        TrainingLoop(session, log=lambda message: None, progress=False).run()
        cached[steps] = {key.split(":")[0] for key in session.cache.keys()}
        assert ("the held-out set only" in " ".join(session.notes)) == (steps == 2)
    assert cached == {2: {"eval"}, 6: {"eval", "train"}}  # a row never seen twice is never stored
    # a run scored on a validation split (a comparison's search run) says which rows it keeps
    scored = open_session(TrainConfig(**{**config.to_dict(), "out": str(tmp_path / "search"), "max_steps": 2, "validation": 4}))
    assert "(the validation rows only: the run ends within its first epoch)" in " ".join(scored.notes)


def test_warmup_is_a_fraction_of_the_run_unless_given_in_steps(tiny_chat_model_dir, order_data, tmp_path):
    from freezetune.cli.commands import main

    def lrs(out, *extra):
        assert main(["train", "--model", str(tiny_chat_model_dir), "--data", str(order_data[0]), "--eval-data",
                     str(order_data[1]), "--out", str(tmp_path / out), "--batch-size", "4", "--seq-len", "64",
                     "--max-steps", "20", "--lr", "0.01", "--eval-generate", "0", "--prefix-cache", "off", *extra]) == 0
        return [json.loads(line)["lr"] for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]

    by_ratio = lrs("ratio")  # 10% of 20 steps: 2 warm-up steps, then the cosine from the peak
    assert by_ratio[:3] == pytest.approx([0.005, 0.01, 0.01])
    assert lrs("steps", "--warmup", "10")[:2] == pytest.approx([0.001, 0.002])
    assert lrs("quarter", "--warmup-ratio", "0.25")[:6] == pytest.approx([0.002, 0.004, 0.006, 0.008, 0.01, 0.01])


@pytest.mark.parametrize("strategy", [{"plan": "freeze bottom 50%", "prefix_cache": "memory"},
                                      {"plan": "train all", "lora_r": 4, "lora_targets": "q_proj,v_proj"}])
def test_the_model_a_worker_measures_in_place_is_the_one_the_run_folder_rebuilds(tiny_chat_model_dir, order_data, tmp_path, strategy):
    """compare measures forgetting on the model its worker just trained (no second load): it must be the model
    load_run builds from the run folder, unpatched (no prefix replay, no target-only head, LoRA folded in)."""
    from freezetune.comparison.worker import as_trained
    from freezetune.training.export import load_run

    config = config_for(tiny_chat_model_dir, order_data, tmp_path / "run", eval_generate=0, **strategy)
    loop = TrainingLoop(open_session(config), log=lambda m: None, progress=False)
    assert loop.run()["status"] == "finished"
    model, tokenizer = as_trained(loop)
    rebuilt = load_run(tmp_path / "run").model.eval()
    assert type(model) is type(rebuilt)  # a plain transformers model, the adapters merged
    assert "forward" not in model.get_output_embeddings().__dict__  # the head's patch is gone
    assert not any("forward" in block.__dict__ or "forward" in block.mlp.__dict__ for block in model.model.layers)
    ids = torch.tensor([tokenizer("Ship 3 mugs to Lyon by Friday, please.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, rebuilt(input_ids=ids).logits, atol=1e-5)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_answers_are_generated_in_the_fewest_even_batches(tiny_chat_model_dir):
    """A greedy decode's batch of 4 rows costs about what one of 32 does: 100 answers go as 2 batches of 50."""
    from freezetune.models.loading import load_model
    from freezetune.training.evaluation import even_batch, generate

    assert [even_batch(n) for n in (1, 40, 64, 65, 100, 200)] == [1, 40, 64, 33, 50, 50]
    loaded = load_model(str(tiny_chat_model_dir))
    prompts = [loaded.tokenizer(f"Send {n} mugs")["input_ids"] for n in range(5)]
    one_by_one = [generate(loaded.model, loaded.tokenizer, [p], 6, "cpu", batch_size=1)[0] for p in prompts]
    assert generate(loaded.model, loaded.tokenizer, prompts, 6, "cpu", batch_size=even_batch(5)) == one_by_one


def test_the_retain_set_is_answered_in_one_batch(tiny_chat_model_dir, monkeypatch):
    """The base's answers to the general prompts go as one batch (the embedded model's 52: 8 s against 15 s as
    16+16+16+4 when measured, with the same answers)."""
    from freezetune.comparison import forgetting
    from freezetune.models.loading import load_model

    sizes = []
    real = forgetting.generate
    monkeypatch.setattr(forgetting, "generate", lambda *a, batch_size, **k: sizes.append(batch_size) or real(*a, batch_size=batch_size, **k))
    loaded = load_model(str(tiny_chat_model_dir))
    examples = forgetting.build_retain(loaded.model, loaded.tokenizer, 64, "cpu", max_new_tokens=4)
    # every prompt that fits seq_len answered in one batch (a longer answer may then not fit: fewer examples)
    assert len(sizes) == 1 and sizes[0] >= len(examples) > 32
