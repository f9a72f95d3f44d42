"""Training memory: an estimate for a resolved plan, before anything runs (training/peak_memory.py measures).

Bytes per parameter (AdamW): fp32 training keeps weights 4 + gradients 4 + moments 8;
mixed precision (bf16/fp16) keeps weights 2 + gradients 2 + fp32 master and moments 12.
Frozen parameters cost only their weights.

Activations follow Korthikanti et al. (2022): s*b*h*(34 + 5*a*s/h) bytes per block at
16 bits, kept only for the blocks the backward pass runs through (from the lowest
trainable block up, or all of them if the embeddings train). A frozen prefix under
no-grad keeps just its output. Logits are fp32 with their gradient: 8*b*s*V bytes.
This is an estimate for comparing plans, not a promise to the byte.
"""

from __future__ import annotations

from freezetune.plans.anatomy import Anatomy

DTYPES = ("float32", "bfloat16", "float16")


def _per_param_bytes(dtype: str) -> tuple[int, int, int]:
    """(weights, gradients, optimizer state) bytes for one parameter."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}")
    return (4, 4, 8) if dtype == "float32" else (2, 2, 12)


def estimate_memory(
    anatomy: Anatomy, trainable_params: int, backward_depth: int, seq_len: int, batch_size: int, dtype: str
) -> dict[str, int]:
    """Bytes by kind for one training step; ``total`` is their sum."""
    weight_b, grad_b, optim_b = _per_param_bytes(dtype)
    act_scale = 2 if dtype == "float32" else 1  # the formula is for 16-bit activations
    s, b = seq_len, batch_size
    h, a, vocab = anatomy.dims.hidden_size, anatomy.dims.num_heads, anatomy.dims.vocab_size
    per_block = s * b * h * (34 + 5 * a * s / max(h, 1)) * act_scale
    prefix_output = s * b * h * 2 * act_scale if backward_depth < anatomy.num_layers else 0
    estimate = {
        "weights": anatomy.total_params * weight_b,
        "gradients": trainable_params * grad_b,
        "optimizer": trainable_params * optim_b,
        "activations": int(per_block * backward_depth) + prefix_output,
        "logits": 8 * b * s * vocab,
    }
    estimate["total"] = sum(estimate.values())
    return estimate
