"""GeneFace: audio-driven 3D talking-face synthesis in pure PyTorch.

The public API (imported on first use, so ``import geneface`` stays light)::

    from geneface import TrainConfig, PersonModel, train_person
    person = train_person("me.mp4", "people/me", TrainConfig(device="cpu"))   # what `geneface train all` does
    person = PersonModel.load("people/me")                                      # later: load once ...
    person.speak("speech.wav", "me_speaking.mp4")                               # ... speak many times

Also: `ProcessConfig` with `geneface.process.process` (video -> dataset), `MotionModel` (speech -> landmarks),
`PersonRenderer` (poses + landmarks -> frames), `EvalConfig` with `geneface.evaluate.evaluate` (a person model's
quality), `InferConfig`, `SpeechStream` with `StreamConfig` (audio chunks in, frames out, live). (``process`` and ``evaluate`` are also the names of subpackages, so the functions are
imported from those: ``from geneface.process import process``.)
"""

import importlib
import os
from typing import Any

# Idle OpenMP threads spinning make torch many times slower on a shared or busy CPU (the web app's live sessions
# beside its jobs, tests, benchmarks of several processes); `geneface train` owns the CPU and lets them spin
# (`geneface.cli.spin_for_training`). Either must be decided before torch is imported.
OMP_POLICY_GIVEN = "OMP_WAIT_POLICY" in os.environ
"""Whether the user chose OpenMP's wait policy (then geneface never changes it)."""
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_API = {
    "train_person": "geneface.infer.train", "TrainConfig": "geneface.infer.train",
    "PersonModel": "geneface.infer.pipeline", "InferConfig": "geneface.infer.pipeline",
    "ProcessConfig": "geneface.process.pipeline", "MotionModel": "geneface.motion.model",
    "PersonRenderer": "geneface.render.renderer", "EvalConfig": "geneface.evaluate.report",
    "SpeechStream": "geneface.infer.stream", "StreamConfig": "geneface.infer.stream",
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'geneface' has no attribute {name!r}")
