"""GeneFace: audio-driven 3D talking-face synthesis in pure PyTorch."""

__version__ = "0.1.0"
