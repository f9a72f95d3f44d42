"""What `generate` and `evaluate` take: a run folder, a PEFT adapter folder (`export --format peft`,
or any adapter peft saved), or a model. An adapter folder holds no config.json, so as a model it
was "not a model", though peft users load one with `AutoPeftModelForCausalLM` as it is."""

from __future__ import annotations

from pathlib import Path

from freezetune.errors import FreezetuneError
from freezetune.models.loading import LoadedModel, load_model
from freezetune.runs.manifest import check_base, findable, model_hash, read_json, read_manifest
from freezetune.training.export import EXPORT_MARK, is_run, load_run, run_base
from freezetune.training.lora import load_adapters

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(source: str) -> bool:
    folder = Path(source)
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def base_of(source: str) -> str | None:
    """The base model a run or an adapter was trained on, as it can be loaded; None for a model."""
    if is_run(source):
        return run_base(read_manifest(Path(source)))
    return _adapter(source)[0] if is_adapter(source) else None


def _adapter(source: str) -> tuple[str, dict | None]:
    """An adapter folder's base model, as it can be loaded, and freezetune's export marker (None
    for an adapter another tool saved)."""
    config = read_json(Path(source) / ADAPTER_CONFIG)
    named = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not named:
        raise FreezetuneError(
            f"{Path(source) / ADAPTER_CONFIG} names no base model (base_model_name_or_path)"
        )
    marker = read_json(Path(source) / EXPORT_MARK)
    recorded = marker.get("base_model") if isinstance(marker, dict) else None
    if marker is not None and not (isinstance(recorded, dict) and recorded.get("name")):
        raise FreezetuneError(
            f"{Path(source) / EXPORT_MARK}: no base_model.name, so not an export marker freezetune "
            "wrote; remove the file to load the adapter as peft saved it"
        )
    # freezetune's export wrote the base as typed too: an embedded name outlives its converted folder
    typed = recorded["name"] if marker is not None else named
    return findable(typed, named), marker


def load_source(source: str, cache_dir: Path | None = None) -> LoadedModel:
    """The model ``source`` names, ready to answer: a run's or an adapter's merged into its base."""
    if is_run(source):
        return load_run(Path(source), cache_dir)
    if not is_adapter(source):
        return load_model(source, cache_dir)
    base, marker = _adapter(source)
    loaded = load_model(base, cache_dir)
    # the base it was trained on, as for a run: same weights, config, tokenizer
    if marker is not None:
        check_base(marker, model_hash(loaded.path, cache_dir), loaded.path, Path(source))
    loaded.model = load_adapters(loaded.model, source)
    return loaded
