"""Speech -> facial motion: the landmark SyncNet, the audio2motion generator and the per-person postnet.

``MotionModel.load(run).predict(features)`` gives 68-point landmark offsets ``[T, 68, 3]`` for audio
features ``[2T, D]``; ``geneface train motion`` / ``geneface train postnet`` make such runs.
"""

from .data import ClipSet, MotionBatch, MotionClip, WindowSampler, WindowSource, load_clips, mouth_opening
from .generator import Audio2Motion, GeneratorConfig
from .model import MotionModel
from .postnet import Discriminator, Postnet, PostnetConfig
from .syncnet import SyncNet, SyncNetConfig, SyncScore

__all__ = ["Audio2Motion", "ClipSet", "Discriminator", "GeneratorConfig", "MotionBatch", "MotionClip",
           "MotionModel", "Postnet", "PostnetConfig", "SyncNet", "SyncNetConfig", "SyncScore", "WindowSampler",
           "WindowSource", "load_clips", "mouth_opening"]
