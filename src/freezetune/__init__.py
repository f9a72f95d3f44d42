"""freezetune: fine-tune Hugging Face language models with layer freezing.

The public API mirrors the CLI: load a model, parse a plan, resolve it on the model's
anatomy, preview it, apply it.
"""

from freezetune.anatomy import Anatomy, find_anatomy
from freezetune.errors import FreezetuneError, PlanError
from freezetune.models import LoadedModel, load_model
from freezetune.plan import FreezePlan, Rule
from freezetune.resolve import ResolvedPlan, apply_plan, resolve

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
