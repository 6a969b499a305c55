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

import json
import os
from pathlib import Path

from ..errors import InputError
from ..fileio import read_json
from ..weights import (config_from_dict, config_to_dict, load_optimizer, load_weights, read_weights,  # noqa: F401
                       save_optimizer, save_weights)

RUN_FORMAT = "geneface-motion"
RUN_VERSION = 1
STATE_DIR = "train_state"


def read_run_config(run: str | os.PathLike) -> dict:
    """``config.json`` of a finished run, checked for format and version."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"no motion model folder {run} (train one with `geneface train motion`)")
    path = run / "config.json"
    if not path.exists():
        hint = " (training did not finish; rerun the same command to resume)" if (run / STATE_DIR).exists() else ""
        raise InputError(f"{run} is not a trained motion model: no config.json{hint}")
    try:
        config = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is corrupt ({e})") from None
    if not isinstance(config, dict) or config.get("format") != RUN_FORMAT:
        raise InputError(f"{run} is not a geneface motion model")
    if config.get("version") != RUN_VERSION:
        raise InputError(f"{run} has motion model version {config.get('version')}; this geneface reads "
                         f"version {RUN_VERSION}")
    return config
