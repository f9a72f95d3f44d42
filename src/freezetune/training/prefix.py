"""The prefix runner: where freezing turns into speed.

Let k be the lowest block the backward pass must reach (the lowest trainable block, or 0
when the embeddings train). Then:

- blocks below k run under ``no_grad`` in eval mode, so autograd records nothing there and
  the backward pass ends at block k by construction;
- with gradient checkpointing, only blocks k.. are checkpointed (non-reentrant, so no input
  is ever forced to require grad; that trick is what drags autograd through frozen layers);
- the prefix cache keeps block k-1's output per example and depth k. When every example of a
  batch is cached at the current depth, blocks below k are skipped (each returns its input,
  the last returns the cached output), so a step costs only the trained part. A schedule that
  moves k keeps each depth's entries apart: an output of block 9 never stands in for block 19's.
  An entry is the *base* model's prefix output: once a schedule has trained anything below depth
  k (LISA returning to a depth), the cache is neither read nor written at k again, since every
  entry there would be stale.

- within a batch, each block's MLP runs on the real tokens only, not on the padding
  (training/token_mlp.py), unless gradient checkpointing recomputes blocks outside it.

All of this patches the ``forward`` of the block instances (parameter names are untouched)
and reimplements no model: whatever the model computes around its blocks still runs.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from freezetune.errors import FreezetuneError
from freezetune.plans.anatomy import Anatomy
from freezetune.plans.resolution import ResolvedPlan
from freezetune.training.prefix_cache import PrefixCache
from freezetune.training.token_mlp import TokenMLP


def prefix_depth(resolved: ResolvedPlan) -> int:
    """How many bottom blocks need no autograd at all."""
    return resolved.anatomy.num_layers - resolved.backward_depth


def prefix_touched(anatomy: Anatomy, trained: set[str] | frozenset[str], depth: int) -> bool:
    """Whether any of the ``trained`` tensors feeds the output of the bottom ``depth`` blocks (a tied head
    counts: it is the embeddings)."""
    return any(
        e.tensor in trained and (e.part == "embeddings" or (e.part == "block" and e.layer < depth))
        for e in anatomy.entries
    )


class PrefixRunner:
    def __init__(
        self,
        model: nn.Module,
        resolved: ResolvedPlan,
        gradient_checkpointing: bool = False,
        cache: PrefixCache | None = None,
    ):
        self.model = model
        self.resolved = resolved
        path = resolved.anatomy.blocks_path
        self.blocks: nn.ModuleList = model.get_submodule(path) if path else nn.ModuleList()
        self.depth = prefix_depth(resolved)
        self.gradient_checkpointing = gradient_checkpointing
        self.token_mlp = TokenMLP(self.blocks)  # installed while nothing is checkpointed
        self.shared_cache = cache  # every depth's entries; used while there is a frozen prefix
        self.cache = cache if self.depth > 0 else None
        # every tensor a retarget has set training: what moved away from the base
        self.trained: set[str] = set()
        self._originals: dict[int, object] = {}
        self._keys: list[str] | None = None
        self._lengths: list[int] | None = None
        self._replay = False
        self._output_is_tuple: bool | None = None
        # the prefix output of the last forward, and one to stand in for it (training/dpo.py's reference)
        self.captured: torch.Tensor | None = None
        self._given: torch.Tensor | None = None
        self.frozen_blocks = [
            i
            for i, block in enumerate(self.blocks)
            if not any(p.requires_grad for p in block.parameters())
        ]

    # --- installation -------------------------------------------------------------------
    def install(self) -> PrefixRunner:
        params = dict(self.model.named_parameters())
        # what runs without autograd: a tensor here set to require grad later would never get one
        self.prefix_params = [
            (e.name, params[e.name])
            for e in self.resolved.anatomy.entries
            if e.name in params
            and (e.part == "embeddings" or (e.part == "block" and e.layer < self.depth))
        ]
        for index, block in enumerate(self.blocks):
            if index < self.depth:
                self._patch(index, self._prefix_forward(index, block.forward))
            elif self.gradient_checkpointing:
                self._patch(index, self._checkpointed_forward(block.forward))
        if not self.gradient_checkpointing:
            self.token_mlp.install()
        return self

    def retarget(self, resolved: ResolvedPlan) -> None:
        """Another trainable set from the next step on: reinstall at its depth (cache keys carry it)."""
        self.remove()
        self.resolved, self.depth = resolved, prefix_depth(resolved)
        self.trained.update(resolved.trainable)
        self._choose_cache()
        self.frozen_blocks = [
            i for i, b in enumerate(self.blocks) if not any(p.requires_grad for p in b.parameters())
        ]
        self.install()

    def mark_trained(self, names) -> None:
        """Tensors trained before this process started (a resumed run's checkpoint lists them)."""
        self.trained.update(names)
        self._choose_cache()

    def _choose_cache(self) -> None:
        """The cache serves this depth only while its prefix is still the base model's (module doc)."""
        untouched = self.depth > 0 and not prefix_touched(
            self.resolved.anatomy, self.trained, self.depth
        )
        self.cache = self.shared_cache if untouched else None

    @property
    def prefix_is_base(self) -> bool:
        """Whether the frozen prefix still computes what the base model's does (nothing below k trained)."""
        return self.depth > 0 and not prefix_touched(
            self.resolved.anatomy, self.trained, self.depth
        )

    def remove(self) -> None:
        self.token_mlp.remove()
        for index, original in self._originals.items():
            if original is None:
                del self.blocks[index].forward  # back to the class's forward
            else:
                self.blocks[index].forward = original
        self._originals.clear()

    def _patch(self, index: int, forward) -> None:
        block = self.blocks[index]
        self._originals[index] = block.__dict__.get("forward")  # None: the class's own forward
        block.forward = forward

    def _dropouts_below_blocks(self) -> list[nn.Module]:
        """Dropout registered before the block list (GPT-2's `drop` after the embeddings)."""
        found = []
        for name, module in self.model.named_modules():
            if name == self.resolved.anatomy.blocks_path:
                break
            if isinstance(module, nn.Dropout):
                found.append(module)
        return found

    def train_mode(self) -> None:
        """model.train(), except what feeds the frozen prefix and the fully frozen blocks stay in eval
        mode: no dropout there, so the prefix is deterministic (and cacheable)."""
        self.model.train()
        self.keep_prefix_in_eval()

    def keep_prefix_in_eval(self) -> None:
        """After a model.train(): the fully frozen blocks and what feeds the frozen prefix back to eval mode."""
        for index in self.frozen_blocks:
            self.blocks[index].eval()
        if self.depth > 0:
            embeddings = (
                self.model.get_input_embeddings()
                if hasattr(self.model, "get_input_embeddings")
                else None
            )
            for module in (
                [embeddings] if embeddings is not None else []
            ) + self._dropouts_below_blocks():
                module.eval()

    # --- per batch ----------------------------------------------------------------------
    def probe(self, device: torch.device | str) -> None:
        """Learn the blocks' output form (tensor or tuple) with a 2-token forward, before replaying a
        cache that was loaded from disk and so never saw a real forward in this process."""
        if self.shared_cache is not None and self._output_is_tuple is None and len(self.blocks):

            def learn(module, inputs, output):
                self._output_is_tuple = isinstance(output, tuple)

            # also at depth 0, which a schedule may leave
            hook = self.blocks[0].register_forward_hook(learn)
            try:
                with torch.no_grad():
                    self.model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device))
            finally:
                hook.remove()

    @contextlib.contextmanager
    def batch(self, keys: list[str] | None = None, lengths: list[int] | None = None):
        """One forward over the examples named by ``keys`` with real lengths ``lengths``.

        Yields True when the batch is replayed from the cache (blocks below k skipped)."""
        caching = self.cache is not None and keys is not None
        # valid at this depth only
        keys = [f"{key}@{self.depth}" for key in keys] if caching else None
        self._keys, self._lengths = (keys, lengths) if caching else (None, None)
        self._replay = caching and self._output_is_tuple is not None and self.cache.has_all(keys)
        self.captured = None
        try:
            with self.token_mlp.rows(lengths):
                yield self._replay
        finally:
            self._keys, self._lengths, self._replay = None, None, False

    @contextlib.contextmanager
    def replaying(self, hidden: torch.Tensor):
        """Inside: the frozen prefix is skipped and ``hidden`` is its output (a captured one, for a
        reference model that shares the trunk: the prefix ran once for both)."""
        self._given, self._replay = hidden, True
        try:
            yield
        finally:
            self._given, self._replay = None, False

    def _prefix_forward(self, index: int, original):
        last = index == self.depth - 1

        def forward(*args, **kwargs):
            if index == 0 and torch.is_grad_enabled():
                self._check_prefix_frozen()
            if self._replay:
                hidden = args[0] if args else kwargs["hidden_states"]
                if last:
                    given = self._given
                    hidden = self.captured = (
                        given if given is not None else self._cached_batch(hidden)
                    )
                return (hidden,) if self._output_is_tuple else hidden
            with torch.no_grad():
                output = original(*args, **kwargs)
            self._output_is_tuple = isinstance(output, tuple)
            if last:
                hidden = self.captured = output[0] if self._output_is_tuple else output
            if last and self._keys is not None:
                # right padding: the real tokens of row r are its first lengths[r] positions
                for row, key in enumerate(self._keys):
                    self.cache.put(key, hidden[row, : self._lengths[row]])
            return output

        return forward

    def _check_prefix_frozen(self) -> None:
        """A prefix tensor set to require grad after the plan was applied (by hand, or by another
        library) would be trained by no gradient, silently: refused at the first forward instead."""
        for name, param in self.prefix_params:
            if param.requires_grad:
                raise FreezetuneError(
                    f"{name} requires grad, but it is below block {self.depth}, in the frozen prefix "
                    f"that plan '{self.resolved.plan.render()}' runs without autograd, so it would "
                    "get no gradient; something set requires_grad after the plan was applied: "
                    "change the plan instead (with freeze(): handle.remove(), then freeze() again)"
                )

    def _cached_batch(self, like: torch.Tensor) -> torch.Tensor:
        rows = [self.cache.get(key) for key in self._keys]
        out = torch.zeros(like.shape[0], like.shape[1], rows[0].shape[-1], dtype=rows[0].dtype)
        for row, cached in enumerate(rows):
            out[row, : cached.shape[0]] = cached
        return out.to(device=like.device, dtype=like.dtype)

    def _checkpointed_forward(self, original):
        def forward(*args, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(original, *args, use_reentrant=False, **kwargs)
            return original(*args, **kwargs)

        return forward
