"""GeneFace: audio-driven 3D talking-face synthesis in pure PyTorch."""

import os

# Idle OpenMP threads spinning make torch many times slower on a shared or busy CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
