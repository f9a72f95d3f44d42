"""Using a run: load its base model with the trained tensors applied, export a standard HF folder."""

from __future__ import annotations

from pathlib import Path

from freezetune.checkpoint import check_base, load_trainable, model_hash, read_manifest, staged_dir
from freezetune.errors import FreezetuneError
from freezetune.lora import merge_lora, wrap_lora
from freezetune.models import LoadedModel, load_model


def load_run(run_dir: Path, cache_dir: Path | None = None, base: str | None = None) -> LoadedModel:
    """The run's base model (or ``base``, which must hash the same) with its trained tensors."""
    manifest = read_manifest(run_dir)
    weights = Path(run_dir) / "trainable.safetensors"
    if not weights.is_file():
        raise FreezetuneError(f"{run_dir} has no trainable.safetensors: the run has not finished (resume it first)")
    loaded = load_model(base or manifest["base_model"]["name"], cache_dir=cache_dir)
    check_base(manifest, model_hash(loaded.path), run_dir)
    config = manifest["config"]
    if config.get("lora_r"):  # rebuild the same adapters, load them, fold them into the weights
        loaded.model = wrap_lora(loaded.model, config["lora_r"], config["lora_alpha"], config["lora_targets"])
        load_trainable(loaded.model, weights)
        loaded.model = merge_lora(loaded.model)
    else:
        load_trainable(loaded.model, weights)
    return loaded


def export_run(run_dir: Path, out_dir: Path, cache_dir: Path | None = None, base: str | None = None) -> Path:
    """Merge the trained tensors into the base model and write a folder `from_pretrained` loads."""
    loaded = load_run(run_dir, cache_dir, base)
    with staged_dir(Path(out_dir)) as staging:
        loaded.model.save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
    return Path(out_dir)


def is_run(path: str) -> bool:
    return (Path(path) / "manifest.json").is_file()
