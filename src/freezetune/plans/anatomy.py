"""Anatomy: where the parts of any Hugging Face model are, found from its structure.

A plan speaks of blocks, embeddings, the final norm, the head, and attention/MLP/norm
parameters inside blocks. This module maps those words onto parameter names without a
table of model names:

- blocks: the longest ``nn.ModuleList`` of identical modules that is not itself inside
  another such list (so a list of MoE experts inside a block never wins), searched inside
  the language stack when the model names one (``get_decoder()``): on a vision-language
  model the vision tower's list may be longer, but it is not what generates text. The
  decoder's own layer list may mix block classes (Jamba's Mamba and attention layers): it
  is one ordered stack;
- final norm: a norm module that sits beside the block list (a child of the same parent);
- embeddings: everything outside the blocks registered before them (token and position
  embeddings, an embedding LayerNorm; a vision tower and its projector, which feed the
  language stack), plus ``get_input_embeddings()``;
- head: everything else outside the blocks (``lm_head``, BERT's prediction transform, ...);
- inside a block: ``norm`` if the owning module is a norm, ``attn`` if the path names
  attention or a Mamba mixer (the sequence mixer), otherwise ``mlp`` (dense MLPs, MoE
  experts, routers, shared experts).

Tied weights are one tensor under several names; each name keeps its own part, and the
tensor is reported under its first name (the canonical one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

PARTS = ("embeddings", "block", "norm", "head")
ROLES = ("attn", "mlp", "norm")


@dataclass(frozen=True)
class Entry:
    """One parameter name. Tied weights give several entries that share ``tensor``."""

    name: str
    tensor: str  # canonical name of the underlying tensor (first registration)
    numel: int
    part: str  # one of PARTS
    layer: int | None = None  # block index, for part == "block"
    role: str | None = None  # one of ROLES, for part == "block"
    expert: bool = False  # a mixture-of-experts expert or router parameter


@dataclass(frozen=True)
class Dims:
    """The sizes the memory estimate needs."""

    hidden_size: int
    num_heads: int
    vocab_size: int
    # the head can project the target positions alone (head_problem is None)
    target_head: bool = False


@dataclass(frozen=True)
class Anatomy:
    model_class: str
    blocks_path: str | None  # e.g. "model.layers"; None when no block list was found
    num_layers: int
    entries: tuple[Entry, ...]  # every parameter name, aliases included, in registration order
    dims: Dims
    block_children: tuple[str, ...] = field(default=())  # child module names of a block, in order

    @property
    def tensors(self) -> dict[str, int]:
        """Canonical tensor name -> number of elements, in registration order."""
        return {e.tensor: e.numel for e in self.entries if e.name == e.tensor}

    @property
    def total_params(self) -> int:
        return sum(self.tensors.values())

    def aliases(self, tensor: str) -> list[str]:
        return [e.name for e in self.entries if e.tensor == tensor]

    def tied_groups(self) -> list[list[str]]:
        """Names that share one tensor, one list per tensor with more than one name."""
        groups: dict[str, list[str]] = {}
        for e in self.entries:
            groups.setdefault(e.tensor, []).append(e.name)
        return [names for names in groups.values() if len(names) > 1]


def _is_norm(module: nn.Module) -> bool:
    # LayerNorm, RMSNorm, LlamaRMSNorm, T5LayerNorm, GroupNorm...: all say "norm" in the class name
    return (
        isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()
    )


def _decoder_path(model: nn.Module) -> str | None:
    """Where the language stack is, when the model names it and it is not the model itself."""
    getter = getattr(model, "get_decoder", None)
    try:
        decoder = getter() if callable(getter) else None
    except (AttributeError, NotImplementedError, TypeError):
        return None
    if not isinstance(decoder, nn.Module) or decoder is model:
        return None
    return next((path for path, module in model.named_modules() if module is decoder), None)


def _find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    decoder = _decoder_path(model)
    candidates = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        layers_of_decoder = decoder is not None and path.rpartition(".")[0] == decoder
        if len({type(child) for child in module}) != 1 and not layers_of_decoder:
            continue
        if not any(True for _ in module.parameters()):
            continue
        candidates.append((path, module))
    inside = [(p, m) for p, m in candidates if decoder is not None and p.startswith(decoder + ".")]
    candidates = inside or candidates  # the language stack's own list, when it has one
    # a ModuleList nested inside another candidate (MoE experts inside a block) is not the stack
    top_level = [
        (path, module)
        for path, module in candidates
        if not any(other != path and path.startswith(other + ".") for other, _ in candidates)
    ]
    if not top_level:
        return None
    return max(top_level, key=lambda pm: (len(pm[1]), sum(p.numel() for p in pm[1].parameters())))


def _block_role(model: nn.Module, name: str, within: str) -> tuple[str, bool]:
    owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    segments = within.lower().split(".")[:-1]
    expert = any("expert" in s or s in ("gate", "router") for s in segments)
    if _is_norm(owner):
        return "norm", expert
    if any("attn" in s or "attention" in s or "mamba" in s for s in segments):
        return "attn", expert
    return "mlp", expert


def _final_norm_paths(model: nn.Module, blocks_path: str) -> set[str]:
    parent_path, _, list_name = blocks_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    before, after, seen_blocks = [], [], False
    for child_name, child in parent.named_children():
        if child_name == list_name:
            seen_blocks = True
        elif _is_norm(child) and any(True for _ in child.parameters()):
            (after if seen_blocks else before).append(child_name)
    # a norm registered after the blocks is the final norm (Bloom also has an embedding norm
    # before them); OPT registers its only final norm before the blocks
    chosen = after or before
    prefix = parent_path + "." if parent_path else ""
    return {prefix + c for c in chosen}


def _dims(model: nn.Module) -> Dims:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()

    def pick(*keys: str) -> int | None:
        for key in keys:
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embedding, "weight", None)
    hidden = pick("hidden_size", "n_embd", "d_model") or (
        int(weight.shape[1]) if weight is not None else 0
    )
    vocab = pick("vocab_size") or (int(weight.shape[0]) if weight is not None else 0)
    heads = pick("num_attention_heads", "n_head", "num_heads") or max(1, hidden // 64)
    return Dims(hidden, heads, vocab, target_head=head_problem(model) is None)


def head_problem(model: nn.Module) -> str | None:
    """Why the output layer cannot be restricted to the target positions (training/head.py), or None."""
    getter = getattr(model, "get_output_embeddings", None)
    layer = getter() if getter else None
    if not isinstance(layer, nn.Linear) or type(layer).forward is not nn.Linear.forward:
        return f"the output layer is a {type(layer).__name__}, not a plain linear layer"
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None):
        return "the model soft-caps its logits after the output layer"
    if getattr(config, "output_router_logits", False):
        return "the model adds its routers' load-balancing loss to the cross-entropy"
    return None


def find_anatomy(model: nn.Module) -> Anatomy:
    """Map every parameter name of ``model`` to its part, block index and role."""
    found = _find_blocks(model)
    blocks_path = found[0] if found else None
    num_layers = len(found[1]) if found else 0
    final_norms = _final_norm_paths(model, blocks_path) if blocks_path else set()
    input_embedding = (
        model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    )
    input_ids = (
        {id(p) for p in input_embedding.parameters()} if input_embedding is not None else set()
    )

    named = list(model.named_parameters(remove_duplicate=False))
    block_prefix = (blocks_path + ".") if blocks_path else None
    first_block_at = next(
        (i for i, (n, _) in enumerate(named) if block_prefix and n.startswith(block_prefix)),
        len(named),
    )
    canonical: dict[int, str] = {}
    entries = []
    for position, (name, param) in enumerate(named):
        tensor = canonical.setdefault(id(param), name)
        if block_prefix and name.startswith(block_prefix):
            index, _, within = name[len(block_prefix) :].partition(".")
            role, expert = _block_role(model, name, within)
            entries.append(Entry(name, tensor, param.numel(), "block", int(index), role, expert))
            continue
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if owner in final_norms:
            part = "norm"
        elif position < first_block_at or (id(param) in input_ids and tensor == name):
            part = "embeddings"
        else:
            part = "head"
        entries.append(Entry(name, tensor, param.numel(), part))

    children: tuple[str, ...] = ()
    if found:
        children = tuple(
            name
            for name, child in found[1][0].named_children()
            if any(True for _ in child.parameters())
        )
    return Anatomy(
        model_class=type(model).__name__,
        blocks_path=blocks_path,
        num_layers=num_layers,
        entries=tuple(entries),
        dims=_dims(model),
        block_children=children,
    )
