"""freeze(model, plan): freezetune's plan, preview and prefix runner on a model you already train.

A script that freezes layers by hand (``requires_grad = False``) and then turns on gradient
checkpointing, as the HF Trainer, TRL and LLaMA-Factory do by default, pays for a backward
pass through every frozen block: transformers' ``gradient_checkpointing_enable()`` calls
``enable_input_require_grads()``, which makes the embeddings' output require grad, so
autograd records the whole frozen prefix. ``freeze`` resolves the plan, sets requires_grad,
and installs the prefix runner (training/prefix.py): the frozen prefix runs without
autograd, and checkpointing, when asked for or turned on later, covers the trained blocks
only. It takes over the model's ``gradient_checkpointing_enable`` and
``enable_input_require_grads`` so that a Trainer turning checkpointing on gets that instead.
``handle.remove()`` puts everything back.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import warnings

import torch
from torch import nn

from freezetune.errors import FreezetuneError
from freezetune.plans.anatomy import find_anatomy
from freezetune.plans.language import FreezePlan
from freezetune.plans.preview import describe, render_text
from freezetune.plans.resolution import ResolvedPlan, apply_plan, resolve
from freezetune.training.prefix import PrefixRunner
from freezetune.training.prefix_cache import PrefixCache

log = logging.getLogger("freezetune")
MARK = "_freezetune_handle"  # in the model's __dict__ while a handle holds it
TAKEN_OVER = (
    "activation_checkpointing_enable",
    "activation_checkpointing_disable",
    "gradient_checkpointing_enable",
    "gradient_checkpointing_disable",
    "enable_input_require_grads",
    "train",
)


def checkpointing_on(model: nn.Module) -> bool:
    """Whether transformers' own checkpointing is on (the new name, else the deprecated one)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


class FreezeHandle:
    """What ``freeze`` changed on a model, and the way back."""

    def __init__(
        self,
        model: nn.Module,
        resolved: ResolvedPlan,
        gradient_checkpointing: bool,
        prefix_cache: bool,
    ):
        self.model, self.resolved, self.universe = model, resolved, resolved
        self.requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        self.had_checkpointing = checkpointing_on(model)
        # transformers' own, with its input-grad hook: replaced by ours below
        if self.had_checkpointing:
            (
                getattr(model, "activation_checkpointing_disable", None)
                or model.gradient_checkpointing_disable
            )()
            disable = getattr(model, "disable_input_require_grads", None)
            if disable is not None and getattr(model, "_require_grads_hook", None) is not None:
                disable()
        self.cache = PrefixCache() if prefix_cache else None
        apply_plan(model, resolved)
        self.runner = PrefixRunner(model, resolved, gradient_checkpointing, self.cache).install()
        self._originals = {name: model.__dict__.get(name) for name in TAKEN_OVER}
        model.__dict__[MARK] = self  # a second freeze() on this model is refused until remove()
        model.activation_checkpointing_enable = model.gradient_checkpointing_enable = (
            self._checkpointing_on
        )
        model.activation_checkpointing_disable = model.gradient_checkpointing_disable = (
            self._checkpointing_off
        )
        # non-reentrant checkpointing needs no grad-requiring input
        model.enable_input_require_grads = lambda: None
        model.train = self._train
        self._wrap_forward()
        self.preview = render_text(describe(resolved, type(model).__name__))

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def warn_idle_checkpointing(self, checkpointing: bool) -> None:
        """Checkpointing asked for (TRL's default) under a plan whose backward runs through no block:
        nothing to recompute, so said rather than silently ignored (the CLI refuses it)."""
        if checkpointing and self.universe.backward_depth == 0:
            warnings.warn(
                f"freeze(): gradient checkpointing has nothing to recompute: the plan "
                f"'{self.universe.plan.render()}' trains no block or embedding, so the backward "
                "pass runs through none",
                stacklevel=3,
            )

    @property
    def active_blocks(self) -> list[int]:
        return [row["index"] for row in self.resolved.layer_rows() if row["trainable_params"]]

    def _checkpointing_on(self, *args, **kwargs) -> None:
        """What a Trainer's ``gradient_checkpointing=True`` gets: checkpointing of the trained blocks only
        (non-reentrant; transformers' every_n_layers and offload settings do not apply)."""
        self.warn_idle_checkpointing(True)
        self._reinstall(True)

    def _checkpointing_off(self) -> None:
        self._reinstall(False)

    def _reinstall(self, checkpointing: bool) -> None:
        self.runner.remove()
        self.runner.gradient_checkpointing = checkpointing
        self.runner.install()

    def _train(self, mode: bool = True) -> nn.Module:
        """model.train(), with the frozen prefix kept in eval mode (no dropout: deterministic, cacheable)."""
        nn.Module.train(self.model, mode)
        if mode:
            self.runner.keep_prefix_in_eval()
        return self.model

    def _wrap_forward(self) -> None:
        """Give each forward its rows' cache keys: a hash of each row's tokens, so any collator works."""
        original = self.model.forward
        self._originals["forward"] = self.model.__dict__.get("forward")

        @functools.wraps(original)  # the Trainer reads the signature to pick dataset columns
        def forward(*args, **kwargs):
            keys, lengths = self._keys(kwargs.get("input_ids"), kwargs.get("attention_mask"))
            with self.runner.batch(keys, lengths):
                return original(*args, **kwargs)

        self.model.forward = forward

    def _keys(self, input_ids, attention_mask):
        if (
            self.cache is None
            or input_ids is None
            or not self.model.training
            or not torch.is_grad_enabled()
        ):
            return None, None
        if attention_mask is None:
            lengths = [input_ids.shape[1]] * input_ids.shape[0]
        else:
            lengths = attention_mask.sum(dim=1).tolist()
            # the runner stores each row's first `length` positions: only right padding lines up
            if any(
                int(attention_mask[row, :length].sum()) != length
                for row, length in enumerate(lengths)
            ):
                return None, None
        keys = [
            hashlib.sha256(input_ids[row, :length].cpu().numpy().tobytes()).hexdigest()[:32]
            for row, length in enumerate(lengths)
        ]
        return keys, [int(length) for length in lengths]

    def retarget(self, resolved: ResolvedPlan) -> None:
        """Another trainable set from the next step on (a schedule's phase)."""
        apply_plan(self.model, resolved)
        self.runner.retarget(resolved)
        self._train(self.model.training)
        self.resolved = resolved

    def remove(self) -> None:
        """Undo everything: the runner, the methods taken over, requires_grad, transformers' checkpointing.
        A second call does nothing."""
        if self.model.__dict__.get(MARK) is not self:
            return
        del self.model.__dict__[MARK]
        self.runner.remove()
        for name, original in self._originals.items():
            if original is None:
                self.model.__dict__.pop(name, None)
            else:
                setattr(self.model, name, original)
        for name, param in self.model.named_parameters():
            param.requires_grad_(self.requires_grad[name])
        if self.had_checkpointing:
            (
                getattr(self.model, "activation_checkpointing_enable", None)
                or self.model.gradient_checkpointing_enable
            )()


def freeze(
    model: nn.Module,
    plan: str | FreezePlan,
    *,
    gradient_checkpointing: bool | None = None,
    prefix_cache: bool = False,
) -> FreezeHandle:
    """Apply ``plan`` to an already loaded model and install the prefix runner.

    ``gradient_checkpointing``: checkpoint the trained blocks (None: as the model had it; a Trainer
    that turns it on later gets the same). ``prefix_cache``: keep the frozen prefix's output per
    row, keyed by the row's tokens, and skip the frozen blocks when a row comes again; only for
    data whose rows repeat exactly (no random augmentation), and it holds one hidden state per
    token in memory. The preview ``freezetune plan`` prints is ``handle.preview``.
    """
    plan = FreezePlan.from_argument(plan) if isinstance(plan, str) else plan
    earlier = model.__dict__.get(MARK)
    # two runners on one model: blocks marked trainable that no gradient reaches
    if earlier is not None:
        raise FreezetuneError(
            f"freeze(): this model already has a handle (plan '{earlier.resolved.plan.render()}'); "
            "call its remove() first, then freeze() with the new plan"
        )
    resolved = resolve(plan, find_anatomy(model))
    if gradient_checkpointing is None:
        gradient_checkpointing = checkpointing_on(model)
    handle = FreezeHandle(model, resolved, gradient_checkpointing, prefix_cache)
    handle.warn_idle_checkpointing(gradient_checkpointing)
    # what `freezetune plan` would print as a notice (a tied head, base weights beside adapters)
    for notice in resolved.notices:
        warnings.warn(f"freeze(): {notice}", stacklevel=2)
    log.info(
        "freezetune: %s trainable of %s parameters (%s)",
        f"{resolved.trainable_params:,}",
        f"{resolved.total_params:,}",
        plan.render(),
    )
    return handle
