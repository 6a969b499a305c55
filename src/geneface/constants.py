"""Numbers and index groups that every layer shares, defined once.

Audio is 16 kHz mono; audio features run at 50 Hz, two rows per 25 fps video frame. The 68-point landmarks
follow the iBUG layout (subject's right side first): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47 (right
36-41, left 42-47), outer lips 48-59, inner lips 60-67.
"""

from __future__ import annotations

import numpy as np

AUDIO_RATE = 16000
"""Sample rate (Hz) of all audio inside geneface: mono float32."""
FEATURE_RATE = 50
"""Audio feature rows per second: two per video frame."""
FPS = 25
"""Video frame rate of datasets, motion and rendered video."""
HOP = AUDIO_RATE // FEATURE_RATE
"""Audio samples per feature row (320 = 20 ms)."""

JAW_68 = np.arange(0, 17)
BROWS_68 = np.arange(17, 27)
NOSE_68 = np.arange(27, 36)
EYES_68 = np.arange(36, 48)
"""Both eyes: right 36-41, left 42-47."""
MOUTH_68 = np.arange(48, 68)
"""The 20 mouth points: outer lips 48-59, inner lips 60-67."""
MOUTH_SLICE = slice(48, 68)
"""`MOUTH_68` as a slice: indexing a tensor with it sends no index array to the tensor's device."""
EYE_UPPER_68 = np.array([37, 38, 43, 44])
"""Upper-lid points, each facing the lower-lid point at the same position of `EYE_LOWER_68`."""
EYE_LOWER_68 = np.array([41, 40, 47, 46])
EYE_CORNERS_68 = np.array([[36, 39], [36, 39], [42, 45], [42, 45]])
"""The two corners of the eye of each facing lid pair (the eye's width)."""
CONTOURS_68 = ((JAW_68, False), (np.arange(17, 22), False), (np.arange(22, 27), False), (np.arange(27, 31), False),
               (np.arange(31, 36), False), (np.arange(36, 42), True), (np.arange(42, 48), True),
               (np.arange(48, 60), True), (np.arange(60, 68), True))
"""(points, closed) of each contour drawn through the 68 points."""
