"""freezetune inside your own Hugging Face Trainer or TRL script:

    handle = freeze(model, "freeze bottom 75%")      # plan, preview, prefix runner
    trainer = SFTTrainer(model=model, ..., callbacks=[FreezeCallback(handle)])

TRL stays optional: nothing here imports it.
"""

from freezetune.hf.callback import FreezeCallback
from freezetune.hf.freeze import FreezeHandle, freeze

__all__ = ["FreezeCallback", "FreezeHandle", "freeze"]
