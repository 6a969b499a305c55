"""`geneface process`: a video of one person -> a training dataset (docs/dataset-format.md), and the per-clip
stages it is made of (`track_clip` runs them in memory on one clip).

>>> summary = process("talk.mp4", "data/", ProcessConfig(size=512))
>>> clip = track_clip("talk.mp4", ProcessConfig(size=256))   # clip.offsets [T, 68, 3], clip.features["mel"]
"""

from .pipeline import (MIN_SOURCE_SIDE, ClipTrack, HeadMotion, ProcessConfig, SourceTooSmallError, check_source,
                       process, split_frame, track_clip)

__all__ = ["MIN_SOURCE_SIDE", "ClipTrack", "HeadMotion", "ProcessConfig", "SourceTooSmallError", "check_source",
           "process", "split_frame", "track_clip"]
