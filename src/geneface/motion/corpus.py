"""Training data from prepared corpora: a streaming, speaker-balanced window source and held-out speakers.

Windows are read from the packs when drawn (a few kilobytes each; nothing else is kept), so a corpus of any
size trains in constant memory. Validation holds out whole speakers, chosen by a stable hash of their names,
so every run, rank and machine agrees on them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..corpusdata import Corpus, is_corpus
from .data import (ClipSet, MemoryClip, MotionClip, SpeakerBalancedSource, find_datasets, load_clips,
                   load_dataset_clips, spread)


class PackClip:
    """One usable corpus clip as :class:`geneface.motion.data.ClipWindows`: rows read on demand. It keeps
    only where its three arrays lie, not the manifest record."""

    __slots__ = ("reader", "name", "num_frames", "_specs")

    def __init__(self, corpus: Corpus, record: dict, kind: str) -> None:
        corpus.check_kind(kind)
        self.reader = corpus.reader(record)
        self.name = f"{corpus.root}:{record['path']}"
        self.num_frames = int(record["frames"])
        arrays = record["arrays"]
        self._specs = (arrays[kind], arrays["pitch"], arrays["offsets"])

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feats, pitch, offsets = self._specs
        return (self.reader.read(feats, 2 * start, 2 * stop), self.reader.read(pitch, 2 * start, 2 * stop),
                self.reader.read(offsets, start, stop))

    def load(self) -> MotionClip:
        """The whole clip in memory."""
        f, p, o = self.read(0, self.num_frames)
        return MotionClip(name=self.name, features=f.copy(), pitch=p.copy(), offsets=o.copy())


def held_out_speakers(speakers: Sequence[str], fraction: float) -> list[str]:
    """The speakers kept for validation: ``round(fraction * S)`` of them (at least one when ``fraction`` > 0
    and S >= 2, never all), the first by a stable hash of their names."""
    speakers = sorted(set(speakers))
    if fraction <= 0 or len(speakers) < 2:
        return []
    count = min(len(speakers) - 1, max(1, int(round(fraction * len(speakers)))))
    return sorted(speakers, key=lambda s: (hashlib.sha1(s.encode("utf-8")).hexdigest(), s))[:count]


def default_feature_kind(paths: Sequence[str | os.PathLike]) -> str:
    """``mel`` unless the corpora among ``paths`` all lack it: then the first kind they all have."""
    kinds = [Corpus(p).features for p in paths if is_corpus(p)]
    if not kinds or all("mel" in k for k in kinds):
        return "mel"
    common = [k for k in kinds[0] if all(k in other for other in kinds)]
    return common[0] if common else "mel"


@dataclass
class TrainingData:
    """What `train motion` draws from when corpora are among its data."""

    source: SpeakerBalancedSource
    """Training windows, speaker-balanced, streamed from the packs."""
    val_clips: list[MotionClip]
    """Clips of the held-out speakers (at most ``eval_count``, spread over them), in memory."""
    train_clips: list[MotionClip] = field(default_factory=list)
    """A few training clips in memory, measured when no speaker is held out."""
    info: dict = field(default_factory=dict)
    """Counts for messages and the run's config."""
    corpora: list[Corpus] = field(default_factory=list)
    """The corpora read (``bytes_read`` says how much of their packs was touched)."""


def open_training_data(paths: Sequence[str | os.PathLike], kind: str, val_fraction: float = 0.05,
                       eval_count: int = 64) -> TrainingData:
    """Corpora and processed person folders under ``paths`` as one speaker-balanced source.

    Each corpus contributes its speakers (``val_fraction`` of them held out); each person folder is one more
    speaker whose train split trains and whose val split validates.
    """
    corpora = [Corpus(p) for p in paths if is_corpus(p)]
    folders = [p for p in paths if not is_corpus(p)]
    speakers: dict[str, list] = {}
    val: dict[str, list] = {}
    dims: set[int] = set()
    held: list[str] = []
    for i, corpus in enumerate(corpora):
        corpus.check_kind(kind)
        groups = corpus.speakers()
        if not groups:
            s = corpus.summary()
            raise InputError(f"corpus {corpus.root} has no usable clips ({s['skipped']} skipped, {s['failed']} "
                             f"failed; their reasons are in its manifest-*.jsonl)")
        out = set(held_out_speakers(list(groups), val_fraction))
        held += [f"{corpus.root}:{s}" for s in sorted(out)]
        for name, records in groups.items():
            key = f"{i}:{name}" if len(corpora) > 1 else name
            clips = [PackClip(corpus, r, kind) for r in records]
            dims.update(int(r["arrays"][kind]["shape"][1]) for r in records[:1])
            (val if name in out else speakers)[key] = clips
    if folders:
        for root in find_datasets(folders):
            key = f"person:{root}"
            speakers[key] = [MemoryClip(c) for c in load_dataset_clips(root, kind, ("train",))]
            val[key] = [MemoryClip(c) for c in load_dataset_clips(root, kind, ("val",))]
            dims.update(c.clip.features.shape[1] for c in speakers[key][:1])
    if len(dims) > 1:
        raise InputError(f"the {kind!r} features of the data have different sizes {sorted(dims)}")
    if not dims:
        raise InputError("no motion clips to train on")
    source = SpeakerBalancedSource(speakers, dims.pop())
    val_clips = [c.load() if isinstance(c, PackClip) else c.clip for c in spread(val, eval_count)]
    train_clips = [] if val_clips else \
        [c.load() if isinstance(c, PackClip) else c.clip for c in spread(speakers, eval_count)]
    info = {"corpora": [str(c.root) for c in corpora], "speakers": len(speakers), "clips": len(source),
            "frames": source.num_frames, "val_speakers": len(held), "val_clips": len(val_clips)}
    return TrainingData(source, val_clips, train_clips, info, corpora)


def open_window_source(paths: Sequence[str | os.PathLike], kind: str):
    """Every clip under ``paths`` as a window source, for the other speakers' audio of `train postnet`:
    corpora streamed and speaker-balanced (no speaker held out), else the person folders' train and val
    splits in memory."""
    if any(is_corpus(p) for p in paths):
        return open_training_data(paths, kind, val_fraction=0.0, eval_count=0).source
    return ClipSet(load_clips(paths, kind, ("train", "val")))
