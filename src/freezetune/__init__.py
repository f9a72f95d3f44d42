"""freezetune: fine-tune Hugging Face language models with layer freezing.

The public API mirrors the CLI: load a model, parse a plan, resolve it on the model's
anatomy, preview it, apply it.
"""

import importlib

# names resolve on first use, so `import freezetune` (and the CLI's start) does not load torch
_HOMES = {
    "Anatomy": "plans.anatomy",
    "find_anatomy": "plans.anatomy",
    "FreezetuneError": "errors",
    "PlanError": "errors",
    "LoadedModel": "models.loading",
    "load_model": "models.loading",
    "FreezePlan": "plans.language",
    "Rule": "plans.language",
    "ResolvedPlan": "plans.resolution",
    "apply_plan": "plans.resolution",
    "resolve": "plans.resolution",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"freezetune.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'freezetune' has no attribute {name!r}")


__all__ = [
    "Anatomy",
    "FreezePlan",
    "FreezetuneError",
    "LoadedModel",
    "PlanError",
    "ResolvedPlan",
    "Rule",
    "apply_plan",
    "find_anatomy",
    "load_model",
    "resolve",
]
__version__ = "0.1.0"
