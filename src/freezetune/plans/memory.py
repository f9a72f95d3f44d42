"""Training memory: an estimate for a resolved plan, before anything runs (training/peak_memory.py measures).

Bytes per parameter (AdamW), as training/precision.py stores them: a trained parameter keeps
an fp32 weight 4 + gradient 4 + moments 8 in any precision; a frozen one only its weight,
4 bytes in fp32 and 2 under mixed precision (bf16/fp16). Under mixed precision autocast also
keeps a 16-bit working copy of each trained weight while a step runs: 2 more bytes.

Activations follow Korthikanti et al. (2022): s*b*h*(34 + 5*a*s/h) bytes per block at
16 bits, kept only for the blocks the backward pass runs through (from the lowest
trainable block up, or all of them if the embeddings train). A frozen prefix under
no-grad keeps just its output. Logits are fp32 with their gradient: 8*b*s*V bytes, at most
two chunks of HEAD_CHUNK_BYTES where the head projects the targets alone, chunk by chunk, and
recomputes each in the backward (training/head.py; DPO's rows and a sharded head keep theirs).
DPO runs two rows (chosen, rejected) per pair, and its reference holds a copy of each trained
tensor in fp32 (training/dpo.py: the frozen weights are shared, not copied); with
--precompute-ref it holds none.
This is an estimate for comparing plans, not a promise to the byte.
"""

from __future__ import annotations

from freezetune.plans.anatomy import Anatomy

DTYPES = ("float32", "bfloat16", "float16")
HEAD_CHUNK_BYTES = 256 << 20  # the most fp32 logits training/head.py computes at once


def _frozen_bytes(dtype: str) -> int:
    """Bytes of one frozen weight; a trained one costs 4 + 4 + 8 whatever the precision."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}")
    return 4 if dtype == "float32" else 2


def _logit_bytes(whole: int, chunked: bool) -> int:
    """A step's logits and their gradient: a chunk and its gradient at a time when the head is chunked."""
    return min(whole, 2 * HEAD_CHUNK_BYTES) if chunked else whole


def estimate_memory(
    anatomy: Anatomy,
    trainable_params: int,
    backward_depth: int,
    seq_len: int,
    batch_size: int,
    dtype: str,
    objective: str = "sft",
    precompute_ref: bool = False,
) -> dict[str, int]:
    """Bytes by kind for one training step; ``total`` is their sum. For DPO ``batch_size`` counts pairs
    and a ``reference`` entry is added."""
    frozen_b = _frozen_bytes(dtype)
    act_scale = 2 if dtype == "float32" else 1  # the formula is for 16-bit activations
    s, b = seq_len, batch_size * (2 if objective == "dpo" else 1)
    h, a, vocab = anatomy.dims.hidden_size, anatomy.dims.num_heads, anatomy.dims.vocab_size
    per_block = s * b * h * (34 + 5 * a * s / max(h, 1)) * act_scale
    prefix_output = s * b * h * 2 * act_scale if backward_depth < anatomy.num_layers else 0
    estimate = {
        "weights": (anatomy.total_params - trainable_params) * frozen_b + trainable_params * 4,
        "gradients": trainable_params * 4,
        "optimizer": trainable_params * 8,
        # autocast keeps a 16-bit copy of each fp32 trained weight for the step's matmuls
        "working_copies": trainable_params * (0 if dtype == "float32" else 2),
        "activations": int(per_block * backward_depth) + prefix_output,
        "logits": _logit_bytes(8 * b * s * vocab, anatomy.dims.target_head and objective != "dpo"),
    }
    if objective == "dpo":
        estimate["reference"] = 0 if precompute_ref else trainable_params * 4
    estimate["total"] = sum(estimate.values())
    return estimate
