"""Using a run: load its base model with the trained tensors applied, export a standard HF folder.

Export never deletes what it did not write: an existing, non-empty ``--out`` is refused unless
``force``, and even then only a folder that an earlier export wrote (it holds EXPORT_MARK) is
replaced, never the run folder or the base model's folder; the files EXPORT_MARK does not list
(a user's notes) are carried into the new export.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError

from freezetune.distributed.state import apply_trainable
from freezetune.errors import FreezetuneError
from freezetune.models.loading import LoadedModel, load_model, require_causal_lm
from freezetune.plans.resolution import ADAPTER
from freezetune.runs.checkpoint import checkpoint_dirs, damage, read_tensors
from freezetune.runs.durable import staged_dir, write_json
from freezetune.runs.manifest import check_base, findable, model_hash, read_json, read_manifest
from freezetune.training.lora import merge_lora, wrap_lora

EXPORT_MARK = "freezetune-export.json"  # what the export came from; also what marks a folder as ours to replace


def load_run(
    run_dir: Path, cache_dir: Path | None = None, base: str | None = None, merge: bool = True
) -> LoadedModel:
    """The run's base model (or ``base``, which must hash the same) with its trained tensors; a LoRA run's
    adapters are folded into the weights unless ``merge`` is False (then the model is peft's)."""
    manifest = read_manifest(run_dir)
    weights = Path(run_dir) / "trainable.safetensors"
    if not weights.is_file():
        raise FreezetuneError(
            f"{run_dir} has no trainable.safetensors: the run has not finished (resume it first)"
        )
    # before the model loads: a damaged file fails at once
    trained = _read_trained(Path(run_dir), weights)
    loaded = load_model(base or run_base(manifest), cache_dir=cache_dir)
    check_base(manifest, model_hash(loaded.path, cache_dir), loaded.path, run_dir)
    config = manifest.get("config") or {}
    if config.get("lora_r"):  # rebuild the same adapters, load them, fold them into the weights
        loaded.model = wrap_lora(
            loaded.model, config["lora_r"], config["lora_alpha"], config["lora_targets"]
        )
        apply_trainable(loaded.model, trained, weights)
        loaded.model = merge_lora(loaded.model) if merge else loaded.model
    else:
        apply_trainable(loaded.model, trained, weights)
    return loaded


def run_base(manifest: dict) -> str:
    """The base model a run was trained on, as it can be loaded from here: the path recorded absolute,
    where it is still there, else the name as typed."""
    return findable(manifest["base_model"]["name"], (manifest.get("paths") or {}).get("model"))


def _read_trained(run_dir: Path, weights: Path) -> dict[str, torch.Tensor]:
    """The run's trained tensors, checked; when damaged, the error names the intact copy its last checkpoint keeps."""
    try:
        return read_tensors(weights)
    except FreezetuneError as exc:
        last = checkpoint_dirs(run_dir)[-1:]
        if not last or damage(last[0]) is not None:
            raise
        raise FreezetuneError(
            f"{exc}; its last checkpoint holds the same tensors, intact: copy "
            f"{last[0] / 'trainable.safetensors'} over it"
        ) from None


def check_export_target(out_dir: Path, run_dir: Path, force: bool) -> None:
    """Refuse any --out whose contents export would destroy (see the module doc)."""
    blocked = next((p for p in out_dir.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise FreezetuneError(f"--out {out_dir}: {blocked} is a file, not a folder")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FreezetuneError(f"--out {out_dir} is a file, not a folder")
    if not any(out_dir.iterdir()):
        return
    if out_dir.resolve() == Path(run_dir).resolve():
        raise FreezetuneError(f"--out {out_dir} is the run folder itself; choose a new folder")
    if (out_dir / "manifest.json").is_file():
        raise FreezetuneError(f"--out {out_dir} is a run folder; choose a new folder")
    earlier = (out_dir / EXPORT_MARK).is_file()
    # said as what it is: "or pass --force" read as though it might not be
    if not force and earlier:
        raise FreezetuneError(
            f"--out {out_dir} holds an earlier export; pass --force to replace it (files you added "
            "there are kept), or choose a new folder"
        )
    if not force:
        raise FreezetuneError(f"--out {out_dir} already holds files; choose a new folder")
    if not earlier:
        raise FreezetuneError(
            f"--out {out_dir} is not an earlier freezetune export (no {EXPORT_MARK}); "
            "--force replaces only those"
        )


def base_dtype(model_path: Path) -> torch.dtype:
    """The dtype the base checkpoint declares in its config.json (fp32 when it declares none)."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    name = (
        config.get("dtype")
        or config.get("torch_dtype")
        or (config.get("text_config") or {}).get("dtype")
        or "float32"
    )
    return getattr(torch, str(name).removeprefix("torch."), torch.float32)


def export_run(
    run_dir: Path,
    out_dir: Path,
    cache_dir: Path | None = None,
    base: str | None = None,
    force: bool = False,
    dtype: str = "auto",
    form: str = "hf",
) -> tuple[Path, list[str]]:
    """Merge the trained tensors into the base model and write a folder `from_pretrained` loads, in the base's
    dtype unless ``dtype`` says otherwise (merging happens in fp32 either way). ``form`` "peft": a LoRA run's
    adapters as peft saves them (adapter_config.json, adapter_model.safetensors), for PeftModel.from_pretrained.
    Returns the folder and the files a user had added to the export it replaced, which it keeps."""
    out_dir = Path(out_dir)
    manifest = read_manifest(run_dir)
    # a PEFT adapter holds LoRA matrices only: a run that trained more would lose it there
    others = [n for n in manifest.get("trainable_names") or [] if not ADAPTER.search(n)]
    if form == "peft" and (others or not (manifest.get("config") or {}).get("lora_r")):
        trained = (
            f"also trained {others[0].removeprefix('base_model.model.')}"
            + (
                f" and {len(others) - 1} more of the base model's tensors"
                if len(others) > 1
                else ""
            )
            if (manifest.get("config") or {}).get("lora_r")
            else f"trained the base model's own tensors (plan '{'; '.join(manifest.get('plan') or [])}')"
        )
        raise FreezetuneError(
            f"--format peft: {run_dir} {trained}, and a PEFT adapter holds LoRA matrices only; "
            "export it as an HF model folder (the default format)"
        )
    check_export_target(out_dir, run_dir, force)  # before loading: a wrong --out fails at once
    loaded = load_run(run_dir, cache_dir, base, merge=form != "peft")
    require_causal_lm(loaded, "export")
    if out_dir.exists() and out_dir.resolve() == Path(loaded.path).resolve():
        raise FreezetuneError(
            f"--out {out_dir} is the base model's folder; exporting there would replace the model "
            "every run of it is tied to"
        )
    if form != "peft":  # adapters stay fp32, as peft keeps them; the base is not written at all
        loaded.model.to(base_dtype(loaded.path) if dtype == "auto" else getattr(torch, dtype))
    try:
        # replace: only what check_export_target allowed
        with staged_dir(out_dir, replace=True) as staging:
            loaded.model.save_pretrained(staging)
            loaded.tokenizer.save_pretrained(staging)
            # the marker lists them: a later --force replaces only these
            written = [*_files_in(staging), EXPORT_MARK]
            write_json(
                staging / EXPORT_MARK,
                {
                    "run": str(Path(run_dir).resolve()),
                    "base_model": manifest["base_model"],
                    "plan": manifest.get("plan"),
                    "files": written,
                },
            )
            kept = _carry_user_files(out_dir, staging)
    except SafetensorError as exc:  # safetensors' writer reports a full disk in its own error type
        raise FreezetuneError(
            f"--out {out_dir}: writing the export failed ({str(exc).splitlines()[0]}); "
            "nothing there was replaced"
        ) from None
    return out_dir, kept


def _files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _carry_user_files(old: Path, new: Path) -> list[str]:
    """Into the new export, every file of the old one that its marker does not list: the user put it there.
    An older marker without a list: every file the new export does not write is carried."""
    if not (old / EXPORT_MARK).is_file():
        return []
    marker = read_json(old / EXPORT_MARK)
    listed = marker.get("files") if isinstance(marker, dict) else None
    ours = set(listed) if isinstance(listed, list) else set(_files_in(new)) | {EXPORT_MARK}
    kept = [rel for rel in _files_in(old) if rel not in ours]
    for rel in kept:
        if (new / rel).exists():
            raise FreezetuneError(
                f"--out {old}: {rel} was not written by the earlier export, and this export writes "
                "a file of that name; move it out first"
            )
        (new / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(old / rel, new / rel)
    return kept


def is_run(path: str) -> bool:
    return (Path(path) / "manifest.json").is_file()
