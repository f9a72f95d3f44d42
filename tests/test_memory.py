from freezetune.plans.anatomy import find_anatomy
from freezetune.plans.language import FreezePlan
from freezetune.plans.preview import describe
from freezetune.plans.resolution import resolve

from conftest import build_tiny


def estimate(text, dtype="float32", arch="llama"):
    resolved = resolve(FreezePlan.parse(text), find_anatomy(build_tiny(arch)))
    info = describe(resolved, arch, seq_len=64, batch_size=2, dtype=dtype)
    return resolved, info["memory_estimate_bytes"], info["full_finetune_memory_estimate_bytes"]


def test_full_finetune_costs_follow_bytes_per_parameter():
    resolved, mine, full = estimate("freeze bottom 50%")
    total = resolved.total_params
    assert full["weights"] == 4 * total and full["gradients"] == 4 * total and full["optimizer"] == 8 * total
    assert mine["weights"] == 4 * total
    assert mine["gradients"] == 4 * resolved.trainable_params
    assert mine["optimizer"] == 8 * resolved.trainable_params
    for kind in (mine, full):
        assert kind["total"] == sum(v for k, v in kind.items() if k != "total")


def test_mixed_precision_stores_frozen_weights_in_16_bits_and_trained_ones_in_fp32():
    resolved, mine, full = estimate("freeze bottom 50%", dtype="bfloat16")
    frozen = resolved.total_params - resolved.trainable_params
    assert full["weights"] == 4 * resolved.total_params  # everything trains: every weight keeps its fp32 copy
    assert mine["weights"] == 2 * frozen + 4 * resolved.trainable_params
    assert mine["gradients"] == 4 * resolved.trainable_params
    assert mine["optimizer"] == 8 * resolved.trainable_params


def test_activations_scale_with_the_blocks_the_backward_runs_through():
    _, half, full = estimate("freeze bottom 50%")
    _, quarter, _ = estimate("freeze bottom 75%")
    _, embeddings_train, _ = estimate("freeze layers 0-2")  # embeddings still train: full depth
    assert quarter["activations"] < half["activations"] < full["activations"]
    assert embeddings_train["activations"] == full["activations"]
    assert half["logits"] == full["logits"] == 8 * 2 * 64 * 128
    # two of four blocks keep activations, plus the frozen prefix's output
    prefix_output = 2 * 64 * 32 * 2 * 2
    assert half["activations"] - prefix_output == full["activations"] // 2


def test_dpo_counts_two_rows_per_pair_and_a_reference_of_the_trained_tensors_only(capsys):
    resolved = resolve(FreezePlan.parse("freeze bottom 50%"), find_anatomy(build_tiny("llama")))
    sft = describe(resolved, "tiny", 64, 2)
    dpo = describe(resolved, "tiny", 64, 2, objective="dpo")
    mine, full = dpo["memory_estimate_bytes"], dpo["full_finetune_memory_estimate_bytes"]
    assert "reference" not in sft["memory_estimate_bytes"]
    # the frozen blocks are shared with the policy: the reference copies what trains, in fp32
    assert mine["reference"] == resolved.trainable_params * 4 and full["reference"] == resolved.total_params * 4
    assert mine["activations"] == 2 * sft["memory_estimate_bytes"]["activations"]
    assert mine["total"] == sum(v for k, v in mine.items() if k != "total")
    precomputed = describe(resolved, "tiny", 64, 2, objective="dpo", precompute_ref=True)
    assert precomputed["memory_estimate_bytes"]["reference"] == 0
    from freezetune.cli.commands import main
    assert main(["plan", "smollm2-135m", "freeze bottom 75%", "--objective", "dpo"]) == 0
    assert "reference" in capsys.readouterr().out
    assert main(["plan", "smollm2-135m", "freeze bottom 75%", "--precompute-ref"]) == 2


def test_the_preview_names_each_kind_in_words(tiny_llama_dir, capsys):
    from freezetune.cli.commands import main

    assert main(["plan", str(tiny_llama_dir), "train top 1", "--dtype", "bfloat16"]) == 0
    kinds = [line.split()[0:2] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert ["working", "copies"] in kinds and not any("_" in kind[0] for kind in kinds)  # was "working_copies"


def test_logits_are_counted_as_the_chunked_head_computes_them():
    """The head projects the targets chunk by chunk (training/head.py): 8*b*s*V overstated a long batch's logits
    several-fold (SmolLM2's vocabulary, seq 1024, batch 8: 3 GiB counted, about 1.4 GiB measured for the whole step)."""
    import transformers as T

    from freezetune.plans.memory import HEAD_CHUNK_BYTES

    def logits(model, objective="sft"):
        resolved = resolve(FreezePlan.parse("freeze bottom 50%"), find_anatomy(model))
        return describe(resolved, "m", seq_len=4096, batch_size=256, objective=objective)["memory_estimate_bytes"]["logits"]

    whole = 8 * 256 * 4096 * 128
    assert whole > 2 * HEAD_CHUNK_BYTES and logits(build_tiny("llama")) == 2 * HEAD_CHUNK_BYTES
    # DPO keeps each row's logits for its backward; a soft-capping model's head runs over every position
    assert logits(build_tiny("llama"), "dpo") == 2 * whole
    gemma = T.Gemma2ForCausalLM(T.Gemma2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, intermediate_size=64, vocab_size=128, head_dim=8,
                                               final_logit_softcapping=30.0))
    assert logits(gemma) == whole
    # below one chunk nothing changes
    _, small, _ = estimate("freeze bottom 50%")
    assert small["logits"] == 8 * 2 * 64 * 128
