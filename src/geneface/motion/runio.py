"""A motion run on disk: JSON config plus safetensors weights, and the training state for resuming.

```
RUN/
  config.json            written last: a folder without it is unfinished
  syncnet.safetensors
  generator.safetensors
  postnet.safetensors    only in a postnet run
  metrics.json           measures on the validation split
  train_log.jsonl        losses every few steps
  train_state/           weights + optimizer states + state.json, replaced atomically at each save
```
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import weights
from ..weights import (config_from_dict, config_to_dict, load_optimizer, load_weights, read_weights,  # noqa: F401
                       save_optimizer, save_weights)

RUN_FORMAT = "geneface-motion"
RUN_VERSION = 1
STATE_DIR = "train_state"


def read_run_config(run: str | os.PathLike) -> dict:
    """``config.json`` of a finished motion run, checked for format and version."""
    return weights.read_run_config(run, RUN_FORMAT, RUN_VERSION, "motion model", "geneface train motion", STATE_DIR)
