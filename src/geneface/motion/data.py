"""Motion training data: clips of (audio features, pitch, landmark offsets) and a sampler of windows.

The trainers only see a :class:`WindowSource` (anything that can draw a random window): the in-memory
:class:`ClipSet` for person folders, or a :class:`SpeakerBalancedSource` over :class:`ClipWindows` that read
their rows on demand (a prepared corpus, `geneface.motion.corpus`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch

from ..dataset import PersonDataset
from ..errors import InputError
from ..features import extract_features
from ..features.mel import ENERGY_COLUMN, F0_COLUMN, F0_SPAN, LOG_FLOOR, f0_hz, mel_centres


@dataclass
class MotionClip:
    """One continuous stretch of a talking person."""

    name: str
    """Where it came from (dataset folder and split), for messages."""
    features: np.ndarray
    """Audio features ``[2T, D]`` float32 at 50 Hz."""
    pitch: np.ndarray
    """Fundamental frequency ``[2T]`` float32 in Hz at 50 Hz, 0 where unvoiced."""
    offsets: np.ndarray
    """Landmark offsets ``[T, 68, 3]`` float32 (head space, minus the person's mean, over the IOD)."""

    @property
    def num_frames(self) -> int:
        return int(self.offsets.shape[0])

    def cut(self, start: int, stop: int) -> "MotionClip":
        """Frames ``start .. stop - 1`` as a clip of their own."""
        return MotionClip(f"{self.name}[{start}:{stop}]", self.features[2 * start: 2 * stop],
                          self.pitch[2 * start: 2 * stop], self.offsets[start:stop])


def tail_cut(num_frames: int, fraction: float, min_frames: int = 16) -> int | None:
    """Where to cut a clip of ``num_frames`` so its last ``fraction`` (at least ``min_frames``) is held out,
    keeping at least twice ``min_frames`` before it; None when the clip is too short to give any."""
    tail = max(min_frames, int(round(num_frames * fraction)))
    if fraction <= 0 or num_frames - tail < 2 * min_frames:
        return None
    return num_frames - tail


@dataclass
class MotionBatch:
    """A batch of equal-length windows (shorter clips are zero-padded, ``mask`` marks valid frames)."""

    features: torch.Tensor
    """``[B, 2W, D]``"""
    pitch: torch.Tensor
    """``[B, 2W]`` Hz"""
    offsets: torch.Tensor
    """``[B, W, 68, 3]``"""
    mask: torch.Tensor
    """``[B, W]`` 1 on valid frames"""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MotionBatch":
        return MotionBatch(*(t.to(device, non_blocking=non_blocking) for t in self._tensors()))

    def pinned(self) -> "MotionBatch":
        """The batch in page-locked memory (a CUDA copy from it can overlap with the GPU's work)."""
        return MotionBatch(*(t.pin_memory() for t in self._tensors()))

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return self.features, self.pitch, self.offsets, self.mask


class WindowSource(Protocol):
    """Anything that can draw a random training window (an in-memory clip set or a streaming corpus)."""

    feature_dim: int

    def sample(self, rng: np.random.Generator, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """One window: features ``[2W, D]``, pitch ``[2W]``, offsets ``[W, 68, 3]`` (zero-padded), valid length."""
        ...


class ClipSet:
    """Clips held in memory; windows are drawn from a clip chosen in proportion to its length."""

    def __init__(self, clips: Sequence[MotionClip]) -> None:
        if not clips:
            raise InputError("no motion clips to train on")
        dims = {c.features.shape[1] for c in clips}
        if len(dims) != 1:
            raise InputError(f"clips have audio features of different sizes {sorted(dims)}; use one kind")
        self.clips = list(clips)
        self.feature_dim = dims.pop()
        lengths = np.array([c.num_frames for c in clips], dtype=np.float64)
        self.weights = lengths / lengths.sum()

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def num_frames(self) -> int:
        return sum(c.num_frames for c in self.clips)

    def split_tail(self, fraction: float) -> tuple["ClipSet", list[MotionClip]]:
        """This set without the last ``fraction`` of each clip, and those tails (see `tail_cut`)."""
        heads, tails = [], []
        for clip in self.clips:
            cut = tail_cut(clip.num_frames, fraction)
            heads.append(clip if cut is None else clip.cut(0, cut))
            if cut is not None:
                tails.append(clip.cut(cut, clip.num_frames))
        return ClipSet(heads), tails

    def sample(self, rng: np.random.Generator, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        clip = self.clips[rng.choice(len(self.clips), p=self.weights)]
        n = min(window, clip.num_frames)
        start = int(rng.integers(0, clip.num_frames - n + 1))
        feats = np.zeros((2 * window, self.feature_dim), np.float32)
        pitch = np.zeros(2 * window, np.float32)
        offsets = np.zeros((window, 68, 3), np.float32)
        feats[: 2 * n] = clip.features[2 * start: 2 * (start + n)]
        pitch[: 2 * n] = clip.pitch[2 * start: 2 * (start + n)]
        offsets[:n] = clip.offsets[start: start + n]
        return feats, pitch, offsets, n


class ClipWindows(Protocol):
    """Random access to one clip's aligned arrays, in memory or read from disk on demand."""

    name: str
    num_frames: int

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features ``[2n, D]``, pitch ``[2n]`` and offsets ``[n, 68, 3]`` of frames ``start .. stop`` (n of them)."""
        ...


class MemoryClip:
    """:class:`ClipWindows` over a :class:`MotionClip` held in memory."""

    def __init__(self, clip: MotionClip) -> None:
        self.clip = clip
        self.name = clip.name
        self.num_frames = clip.num_frames

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.clip
        return c.features[2 * start: 2 * stop], c.pitch[2 * start: 2 * stop], c.offsets[start:stop]


class ClipRange:
    """:class:`ClipWindows` over frames ``start .. stop - 1`` of another."""

    def __init__(self, clip: ClipWindows, start: int, stop: int) -> None:
        self.clip, self.start = clip, start
        self.name = f"{clip.name}[{start}:{stop}]"
        self.num_frames = stop - start

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.clip.read(self.start + start, self.start + stop)

    def load(self) -> MotionClip:
        f, p, o = self.read(0, self.num_frames)
        return MotionClip(self.name, np.array(f), np.array(p), np.array(o))


class SpeakerBalancedSource:
    """Windows drawn speaker first: a speaker uniformly, then one of its clips in proportion to its length,
    then a start uniformly. A corpus where a few speakers talk for hours and most for minutes is then learnt
    from every voice alike. Clips are read through :class:`ClipWindows`, so nothing needs to be in memory.
    """

    def __init__(self, speakers: dict[str, Sequence[ClipWindows]], feature_dim: int) -> None:
        groups = {name: list(clips) for name, clips in speakers.items() if clips}
        if not groups:
            raise InputError("no motion clips to train on")
        self.feature_dim = feature_dim
        self.speakers = sorted(groups)
        self._clips = [groups[name] for name in self.speakers]
        self._cumulative = [np.cumsum([c.num_frames for c in clips], dtype=np.float64) for clips in self._clips]

    def __len__(self) -> int:
        return sum(len(c) for c in self._clips)

    @property
    def num_frames(self) -> int:
        return int(sum(c[-1] for c in self._cumulative))

    def split_tail(self, fraction: float, max_tails: int = 64) -> tuple["SpeakerBalancedSource", list[MotionClip]]:
        """This source without the last ``fraction`` of each clip, and up to ``max_tails`` of those tails (spread
        over the speakers) in memory."""
        heads: dict[str, list[ClipWindows]] = {}
        tails: dict[str, list[ClipRange]] = {}
        for name, clips in zip(self.speakers, self._clips):
            for clip in clips:
                cut = tail_cut(clip.num_frames, fraction)
                heads.setdefault(name, []).append(clip if cut is None else ClipRange(clip, 0, cut))
                if cut is not None:
                    tails.setdefault(name, []).append(ClipRange(clip, cut, clip.num_frames))
        return SpeakerBalancedSource(heads, self.feature_dim), [t.load() for t in spread(tails, max_tails)]

    def sample(self, rng: np.random.Generator, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        s = int(rng.integers(len(self._clips)))
        cum = self._cumulative[s]
        clip = self._clips[s][min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)]
        n = min(window, clip.num_frames)
        start = int(rng.integers(0, clip.num_frames - n + 1))
        f, p, o = clip.read(start, start + n)
        feats = np.zeros((2 * window, self.feature_dim), np.float32)
        pitch = np.zeros(2 * window, np.float32)
        offsets = np.zeros((window, 68, 3), np.float32)
        feats[: 2 * n], pitch[: 2 * n], offsets[:n] = f, p, o
        return feats, pitch, offsets, n


@dataclass
class VoiceAugment:
    """Random changes of voice applied to ``mel`` windows, so a model heard few speakers generalises.

    Each window gets one vocal-tract-length warp of the mel spectrum (frequencies scaled by a factor),
    one pitch factor (f0 and the pitch channel) and one loudness change (log-mel and energy).
    """

    warp: float = 0.12
    """Frequency scale factors are drawn from [1 - warp, 1 + warp]."""
    pitch: float = 1.6
    """f0 factors are drawn log-uniformly from [1 / pitch, pitch]."""
    gain_db: float = 10.0
    """Loudness changes are drawn from [-gain_db, gain_db] dB."""

    def __call__(self, features: np.ndarray, pitch: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Augmented copies of ``mel`` features ``[2W, 83]`` and f0 ``[2W]`` (Hz)."""
        feats = features.copy()
        n_mels = F0_COLUMN
        centres = _mel_centres()
        alpha = rng.uniform(1 - self.warp, 1 + self.warp)
        src = np.interp(centres / alpha, centres, np.arange(n_mels))  # fractional source band of each band
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_mels - 1)
        w = (src - lo).astype(np.float32)
        feats[:, :n_mels] = features[:, lo] * (1 - w) + features[:, hi] * w
        floor = np.log10(LOG_FLOOR)
        gain = rng.uniform(-self.gain_db, self.gain_db) / 10.0  # log10 power units
        cols = list(range(n_mels)) + [ENERGY_COLUMN]
        feats[:, cols] = np.where(feats[:, cols] > floor, np.maximum(feats[:, cols] + gain, floor), floor)
        beta = float(np.exp(rng.uniform(-np.log(self.pitch), np.log(self.pitch))))
        voiced = feats[:, F0_COLUMN] > 0
        feats[:, F0_COLUMN] = np.where(voiced, np.maximum(feats[:, F0_COLUMN] + np.log(beta) / np.log(F0_SPAN), 1e-3),
                                       0.0)
        return feats, np.where(pitch > 0, pitch * beta, 0.0).astype(np.float32)


@lru_cache(maxsize=1)
def _mel_centres() -> np.ndarray:
    return np.asarray(mel_centres(), dtype=np.float64)


class WindowSampler:
    """Endless random batches of windows from a :class:`WindowSource` (one RNG stream per rank).

    ``augment(features, pitch, rng) -> (features, pitch)`` changes each window (e.g. :class:`VoiceAugment`).
    """

    def __init__(self, source: WindowSource, window: int, batch_size: int, seed: int = 0,
                 augment: Callable[[np.ndarray, np.ndarray, np.random.Generator],
                                   tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        self.source = source
        self.window = window
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.augment = augment

    def batches(self, device: torch.device) -> Iterator[MotionBatch]:
        """Endless batches on ``device``. On CUDA the next batch is drawn on a thread while the GPU works on
        this one, into pinned memory, and copied without blocking; elsewhere they are drawn one at a time (a
        thread would only compete with the training for the CPU). The order is `next`'s either way."""
        if device.type != "cuda":
            while True:
                yield self.next().to(device)
        with ThreadPoolExecutor(1, thread_name_prefix="batches") as pool:
            ahead = pool.submit(lambda: self.next().pinned())
            while True:
                batch = ahead.result()
                ahead = pool.submit(lambda: self.next().pinned())
                yield batch.to(device, non_blocking=True)

    def next(self) -> MotionBatch:
        items = [self.source.sample(self.rng, self.window) for _ in range(self.batch_size)]
        if self.augment is not None:
            items = [(*self.augment(f, p, self.rng), o, n) for f, p, o, n in items]
        mask = np.zeros((self.batch_size, self.window), np.float32)
        for i, item in enumerate(items):
            mask[i, : item[3]] = 1.0
        return MotionBatch(
            features=torch.from_numpy(np.stack([it[0] for it in items])),
            pitch=torch.from_numpy(np.stack([it[1] for it in items])),
            offsets=torch.from_numpy(np.stack([it[2] for it in items])),
            mask=torch.from_numpy(mask))


def spread(groups: dict[str, list], count: int) -> list:
    """At most ``count`` items taken round-robin over the groups (sorted), so many groups are represented."""
    picked: list = []
    lists = [list(v) for _, v in sorted(groups.items())]
    depth = 0
    while len(picked) < count and any(depth < len(v) for v in lists):
        for v in lists:
            if depth < len(v) and len(picked) < count:
                picked.append(v[depth])
        depth += 1
    return picked


# --- pitch -------------------------------------------------------------------------------------

def pitch_from_mel(features: np.ndarray) -> np.ndarray:
    """f0 ``[2T]`` in Hz (0 where unvoiced) from ``mel`` features ``[2T, 83]``."""
    return f0_hz(features).astype(np.float32)


def pitch_from_audio(audio: np.ndarray, num_frames: int | None = None) -> np.ndarray:
    """f0 ``[2T]`` in Hz from 16 kHz audio, through the weight-free ``mel`` extractor."""
    return pitch_from_mel(extract_features("mel", audio, num_frames=num_frames))


# --- datasets on disk --------------------------------------------------------------------------

def find_datasets(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Processed clip folders: each path is one (it has ``meta.json``) or a folder holding some below it."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"no such data folder: {p}")
        if (p / "meta.json").exists():
            found.append(p)
            continue
        below = sorted(m.parent for m in p.rglob("meta.json"))
        if not below:
            raise InputError(f"{p} holds no processed clips (no meta.json in it or below it); "
                             f"run `geneface process` on its videos first")
        found.extend(below)
    return found


def load_dataset_clips(root: Path, kind: str, splits: Sequence[str] = ("train",),
                       min_frames: int = 8) -> list[MotionClip]:
    """The given splits of one processed dataset as clips (splits shorter than ``min_frames`` are skipped)."""
    ds = PersonDataset(root)
    feats = ds.features(kind)
    offsets = np.asarray(ds.motion["offsets"], dtype=np.float32)
    t = offsets.shape[0]
    if feats.shape[0] < 2 * t:
        raise InputError(f"{root}: {kind} features cover {feats.shape[0]} steps, expected {2 * t}; "
                         f"process the video again")
    if kind == "mel":
        pitch = pitch_from_mel(feats)
    elif (root / "features" / "mel.npz").exists():
        pitch = pitch_from_mel(ds.features("mel"))
    else:
        pitch = pitch_from_audio(ds.audio(), num_frames=t)
    clips = []
    for split in splits:
        a, b = ds.meta["split"][split]
        if b - a >= min_frames:
            clips.append(MotionClip(name=f"{root}:{split}", features=feats[2 * a: 2 * b].astype(np.float32),
                                    pitch=pitch[2 * a: 2 * b], offsets=offsets[a:b]))
    return clips


def load_clips(paths: Sequence[str | os.PathLike], kind: str, splits: Sequence[str] = ("train",),
               min_frames: int = 8) -> list[MotionClip]:
    """Clips of every processed dataset found under ``paths`` (see :func:`find_datasets`)."""
    clips: list[MotionClip] = []
    for root in find_datasets(paths):
        clips.extend(load_dataset_clips(root, kind, splits, min_frames))
    return clips


# --- measures on landmarks ---------------------------------------------------------------------

UPPER_LIP_68, LOWER_LIP_68 = 62, 66
"""Inner-lip centre points of the iBUG 68 layout."""


def mouth_opening(offsets: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Change of the inner-lip gap (in inter-ocular distances) ``[...]`` from offsets ``[..., 68, 3]``.

    Head space has y pointing down, so a lower lip moving down opens the mouth.
    """
    return offsets[..., LOWER_LIP_68, 1] - offsets[..., UPPER_LIP_68, 1]
