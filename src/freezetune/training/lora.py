"""LoRA through peft: one more way of choosing trainable tensors, run by the same loop."""

from __future__ import annotations

import contextlib
import warnings

from torch import nn

from freezetune.errors import FreezetuneError


def target_list(targets: str) -> str | list[str]:
    """--lora-targets as peft takes it: 'all-linear', or module names matched as name suffixes."""
    return (
        targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    )


def check_targets(model: nn.Module, targets: str) -> None:
    """Every named target is a module of the model: peft refuses a list only when none matches,
    and adapts the others without a word about the name that matched nothing."""
    if targets == "all-linear":
        return
    names = [name for name, _ in model.named_modules()]
    missing = [
        t for t in target_list(targets) if not any(n == t or n.endswith(f".{t}") for n in names)
    ]
    if missing:
        # Conv1D: GPT-2's linear layers
        linear = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
            }
        )
        raise FreezetuneError(
            f"--lora-targets {targets}: {', '.join(repr(m) for m in missing)} "
            f"{'names' if len(missing) == 1 else 'name'} no module of the model; its linear "
            f"layers are {', '.join(linear)}"
        )


def wrap_lora(model: nn.Module, rank: int, alpha: int, targets: str) -> nn.Module:
    """Add LoRA adapters (dropout 0, no bias), as peft names them: ...lora_A.default.weight."""
    from peft import LoraConfig, get_peft_model

    check_targets(model, targets)
    target_modules = target_list(targets)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=target_modules, lora_dropout=0.0, bias="none"
    )
    try:
        with _quiet_peft():
            return get_peft_model(model, config)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise FreezetuneError(f"--lora-targets {targets}: {str(exc).splitlines()[0]}") from None


def load_adapters(model: nn.Module, folder) -> nn.Module:
    """The adapters peft saved in ``folder``, on ``model``, folded into its weights."""
    from peft import PeftModel

    with _quiet_peft():
        return merge_lora(PeftModel.from_pretrained(model, folder))


@contextlib.contextmanager
def _quiet_peft():
    # peft reads a transformers property that now warns; nothing for the user to do
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights; returns the plain transformers model."""
    return model.merge_and_unload()
