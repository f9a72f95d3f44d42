"""Each block's MLP on the real tokens only: the padding of a batch skips the feed-forward.

A batch of rows of different lengths is padded to its longest row, and every linear layer then
runs on the pad positions too, though nothing reads their output there: the rows are padded on
the right, attention is causal and masks the pads, and the loss ignores them. Attention needs
the padded layout, but a block's MLP works position by position: TokenMLP gathers the real
positions, runs the MLP on them alone and scatters the result back (zeros at the pads). The MLP
holds most of a block's weights, so on rows of uneven length this is most of what the padding
costs. Real positions get the same values, up to the order of float sums.

Dense MLPs only: a mixture of experts balances its router over the tokens it sees, so it keeps
them all. Not an MLP with active dropout (GPT-2's, in training): it would draw its masks over
fewer elements, so the same seed would drop other units than transformers does. Not under
gradient checkpointing, whose recomputation in the backward pass happens outside the batch and
so would see other shapes.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

# (input, output) layer names of the position-wise MLPs transformers uses
DENSE_LAYOUTS = (
    ("gate_proj", "down_proj"),  # Llama, Mistral, Qwen2, Gemma
    ("gate_up_proj", "down_proj"),  # Phi-3
    ("fc1", "fc2"),  # Phi, OPT-style
    ("c_fc", "c_proj"),  # GPT-2
    ("dense_h_to_4h", "dense_4h_to_h"),  # GPT-NeoX
)


def dense_mlp(module: nn.Module | None) -> bool:
    """Whether ``module`` is a plain position-wise MLP (no router, no experts)."""
    if module is None or "moe" in type(module).__name__.lower():
        return False
    names = {name for name, _ in module.named_children()}
    if any("expert" in name or "router" in name for name in names):
        return False
    return any(first in names and last in names for first, last in DENSE_LAYOUTS)


class TokenMLP:
    def __init__(self, blocks: nn.ModuleList):
        self.mlps = [b.mlp for b in blocks if dense_mlp(getattr(b, "mlp", None))]
        self._patched: list[nn.Module] = []
        self._lengths: list[int] | None = None
        self._batch_mask: torch.Tensor | None = None  # the batch's, built once for all its blocks

    def install(self) -> TokenMLP:
        for mlp in self.mlps:
            if "forward" not in mlp.__dict__:  # another patch holds it: leave it
                mlp.forward = self._forward(mlp, mlp.forward)
                self._patched.append(mlp)
        return self

    def remove(self) -> None:
        for mlp in self._patched:
            del mlp.forward  # back to the class's forward
        self._patched.clear()

    @contextlib.contextmanager
    def rows(self, lengths: list[int] | None):
        """Inside: a forward over right-padded rows whose real lengths are ``lengths``."""
        self._lengths, self._batch_mask = lengths, None
        try:
            yield
        finally:
            self._lengths, self._batch_mask = None, None

    def _mask(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """The real positions of ``hidden`` (rows x positions), or None where none is padding or the
        shape is not the batch's (a generation step, another caller)."""
        lengths = self._lengths
        if lengths is None or hidden.dim() != 3 or hidden.shape[0] != len(lengths):
            return None
        width = hidden.shape[1]
        if min(lengths) >= width or max(lengths) > width:
            return None
        mask = self._batch_mask
        if mask is None or mask.shape[1] != width or mask.device != hidden.device:
            positions = torch.arange(width, device=hidden.device)
            mask = self._batch_mask = (
                positions < torch.tensor(lengths, device=hidden.device)[:, None]
            )
        return mask

    def _forward(self, mlp: nn.Module, original):
        dropout = [m for m in mlp.modules() if isinstance(m, nn.Dropout) and m.p > 0]

        def forward(hidden, *args, **kwargs):
            drops = mlp.training and any(m.training for m in dropout)
            mask = None if args or kwargs or drops else self._mask(hidden)
            if mask is None:
                return original(hidden, *args, **kwargs)
            real = original(hidden[mask])
            out = real.new_zeros(*hidden.shape[:2], real.shape[-1])
            out[mask] = real
            return out

        return forward
