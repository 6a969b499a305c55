"""The training engine every model uses: a run folder (format, resume, finish), one step loop with
callbacks, torchrun/DDP helpers, and symmetric save/load of configured modules.

A model supplies only its losses, parameter groups and callbacks; see `geneface.motion.train` and
`geneface.render.train` for the two users.
"""

from .dist import (Dist, Launch, LossCall, backend_for, close_distributed, init_distributed, local_device,
                   stale_store_risk)
from .run import STATE_DIR, RunFolder, RunKind, TrainingError
from .saveload import Savable
from .trainer import Callback, Plateau, Trainer

__all__ = ["STATE_DIR", "Callback", "Dist", "Launch", "LossCall", "Plateau", "RunFolder", "RunKind", "Savable",
           "Trainer", "TrainingError", "backend_for", "close_distributed", "init_distributed", "local_device", "stale_store_risk"]
