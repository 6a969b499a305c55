"""Synthetic talking heads: a face photo animated in sync with speech, with exact ground truth.

The data behind the demo and the tests: ``synthesize`` writes an mp4 (H.264 + AAC) and
``VIDEO.truth.npz`` with the per-frame mesh, head pose, mouth opening and blinks (the format is
described in ``geneface.synth.generator``).
"""

from .generator import Animator, Clip, SynthConfig, prepare, synthesize, truth_path
from .photo import crop_face, default_face, load_face
from .speech import default_speech, speak

__all__ = ["Animator", "Clip", "SynthConfig", "crop_face", "default_face", "default_speech", "load_face",
           "prepare", "speak", "synthesize", "truth_path"]
