"""A trained person: motion and render runs plus what inference needs from the training clip.

Folder layout (``geneface train all`` writes it)::

    PERSON/person.json   format, version, fps, size (the output's and the dataset's), feature kind (and its
                         local model folder), run folder names (``sr``: null or absent when there is none),
                         the source video and where its frames were cropped (``source``: `source_block`)
    PERSON/track.npz     c2w [N,4,4] training poses, intrinsics [3,3], landmark statistics (below)
    PERSON/motion/       audio2motion run (geneface.motion)
    PERSON/render/       head NeRF + torso run (geneface.render)
    PERSON/sr/           super-resolution run (geneface.render.sr), when the output is larger than the renderer's
    PERSON/data/         the processed dataset (optional; evaluate uses its validation split)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import EYE_LOWER_68, EYE_UPPER_68
from ..dataset import PersonDataset
from ..errors import InputError
from ..fileio import read_json, read_npz, write_json, write_npz

FORMAT = "geneface-person"
VERSION = 1


@dataclass
class LandmarkStats:
    """The person's range of motion, from the training frames' 68-point offsets."""

    low: np.ndarray
    """[68, 3] lowest offset per point and axis"""
    high: np.ndarray
    """[68, 3] highest offset per point and axis"""
    pca_mean: np.ndarray
    """[204] mean of the flattened offsets"""
    pca_basis: np.ndarray
    """[K, 204] principal directions keeping 99% of the variance"""
    mean68: np.ndarray
    """[68, 3] mean landmarks in head units"""
    iod: float
    """inter-ocular distance in head units"""

    @classmethod
    def from_offsets(cls, offsets: np.ndarray, mean68: np.ndarray, iod: float) -> "LandmarkStats":
        flat = offsets.reshape(len(offsets), -1).astype(np.float64)
        mu = flat.mean(0)
        _, s, vt = np.linalg.svd(flat - mu, full_matrices=False)
        energy = np.cumsum(s ** 2) / max((s ** 2).sum(), 1e-12)
        k = int(np.searchsorted(energy, 0.99) + 1)
        return cls(offsets.min(0), offsets.max(0), mu.astype(np.float32), vt[:k].astype(np.float32),
                   mean68.astype(np.float32), float(iod))

    def blink_offsets(self) -> np.ndarray:
        """[68, 3] offset that closes both eyes: upper lids onto the lower lids."""
        d = np.zeros((68, 3), np.float32)
        d[EYE_UPPER_68] = (self.mean68[EYE_LOWER_68] - self.mean68[EYE_UPPER_68]) / self.iod
        return d


class Person:
    """A person model folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not (self.root / "person.json").exists():
            raise InputError(f"{self.root} is not a person model (no person.json); make one with "
                             f"`geneface train all VIDEO --out {self.root}`")
        check_contained(self.root)  # before any file of it is read
        if (self.root / "person.json").stat().st_size > MAX_JSON_BYTES:
            raise InputError(f"{self.root / 'person.json'} is too large to be a person model's")
        try:
            meta = read_json(self.root / "person.json")
        except ValueError:
            raise InputError(f"{self.root / 'person.json'} is corrupt") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            version = meta.get("version") if isinstance(meta, dict) else None
            raise InputError(f"{self.root} is a person model of another format version "
                             f"({version}; this geneface reads {VERSION})")
        for key in ("motion", "render"):
            self._inside(meta.get(key), f"person.json's {key!r}")
        if meta.get("sr") is not None:
            self._inside(meta["sr"], "person.json's 'sr'")
        self.meta = meta
        try:
            track = read_npz(self.root / "track.npz", max_bytes=MAX_TRACK_BYTES)
        except (OSError, ValueError) as e:
            raise InputError(f"{self.root / 'track.npz'} is missing or corrupt ({e.__class__.__name__})") from None
        _check_track(track, self.root / "track.npz")
        self.c2w: np.ndarray = track["c2w"]
        self.intrinsics: np.ndarray = track["intrinsics"]
        self.stats = LandmarkStats(track["low"], track["high"], track["pca_mean"], track["pca_basis"],
                                   track["mean68"], float(track["iod"]))

    def _inside(self, name: object, what: str) -> Path:
        """``root / name`` for a plain relative folder name that stays inside the person folder."""
        if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts \
                or "\x00" in name:
            raise InputError(f"{self.root}: {what} must be a folder name inside the person model, got {name!r}")
        return self.root / name

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def feature_kind(self) -> str:
        return str(self.meta["features"])

    @property
    def feature_model(self) -> Path | None:
        """The local model folder the audio features need (hubert), as given to `train all`, when it lies inside
        the person folder; one outside it is never followed (see `named_feature_model`)."""
        path = self.named_feature_model
        if path is None:
            return None
        full = path if path.is_absolute() else self.root / path
        return full if _within(full, self.root) else None

    def feature_model_for(self, given: str | os.PathLike | None) -> Path | None:
        """The feature model folder to use: ``given`` (the user's option), else the one inside the person folder.
        One that person.json names outside the folder is used only when the user names it."""
        if given:
            return Path(given)
        if self.feature_model is None and self.named_feature_model is not None and self.feature_kind == "hubert":
            raise InputError(f"{self.root} names a feature model outside its folder ({self.named_feature_model}); "
                             f"a person model's own files are the only ones read unless you name another: pass "
                             f"--feature-model {self.named_feature_model} to use it")
        return self.feature_model

    @property
    def named_feature_model(self) -> Path | None:
        """The feature model folder person.json names, wherever it is (for messages)."""
        path = self.meta.get("feature_model")
        return Path(path) if isinstance(path, str) and path and "\x00" not in path else None

    @property
    def motion_dir(self) -> Path:
        return self._inside(self.meta["motion"], "person.json's 'motion'")

    @property
    def render_dir(self) -> Path:
        return self._inside(self.meta["render"], "person.json's 'render'")

    @property
    def sr_dir(self) -> Path | None:
        """The super-resolution run, or None (person models made before it existed have none)."""
        sr = self.meta.get("sr")
        return None if sr is None else self._inside(sr, "person.json's 'sr'")

    @property
    def data_dir(self) -> Path | None:
        d = self.root / "data"
        return d if (d / "meta.json").exists() else None

    @staticmethod
    def write(root: Path, data: PersonDataset, feature_kind: str, motion: str = "motion",
              render: str = "render", feature_model: Path | None = None, sr: str | None = None) -> None:
        """Write person.json and track.npz for runs ``root/motion``, ``root/render`` and ``root/sr`` (when ``sr``
        names it) trained on ``data``."""
        train = data.split("train")
        offsets = data.motion["offsets"][train]
        stats = LandmarkStats.from_offsets(offsets, data.motion["mean68"], float(data.motion["iod"]))
        write_npz(root / "track.npz", c2w=data.pose["c2w"][train], intrinsics=data.intrinsics,
                  low=stats.low, high=stats.high, pca_mean=stats.pca_mean, pca_basis=stats.pca_basis,
                  mean68=stats.mean68, iod=np.array(stats.iod, np.float32))
        write_json(root / "person.json", {"format": FORMAT, "version": VERSION, "fps": data.fps,
                                          "size": data.size, "features": feature_kind,
                                          "motion": motion, "render": render, "sr": sr,
                                          "feature_model": str(feature_model.resolve()) if feature_model else None,
                                          "source": source_block(data)})


def source_block(data: PersonDataset) -> dict | None:
    """person.json's ``source``: the source video as the dataset's meta.json records it (``path``, ``sha256``,
    ``bytes``, ``width``, ``height``), the square ``crop`` [x0, y0, side] in its pixels, the ``size`` of the
    resized crop, and ``frames`` [start, stop): training pose j is dataset frame, and 25 fps source frame,
    start + j. None for a dataset processed before ``bytes`` was recorded (`geneface.infer.composite`)."""
    source = data.meta.get("source")
    keys = ("path", "sha256", "bytes", "width", "height")
    if not isinstance(source, dict) or any(k not in source for k in keys) or "crop" not in data.meta:
        return None
    start, stop = (int(v) for v in data.meta["split"]["train"])
    return {**{k: source[k] for k in keys}, "crop": [int(v) for v in data.meta["crop"]], "size": data.size,
            "frames": [start, stop]}


MAX_JSON_BYTES = 1 << 20
"""A person.json larger than this is not one geneface wrote."""
MAX_TRACK_BYTES = 256 << 20
"""A track.npz whose arrays take more memory than this is not one geneface wrote (5 hours of poses take 30 MB)."""


def _within(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def check_contained(root: Path) -> None:
    """Refuse a folder holding a symbolic link that leads outside it: a person model may come from someone
    else, and loading it must never read a file elsewhere."""
    top = root.resolve()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink() and not path.resolve().is_relative_to(top):
                raise InputError(f"{path} links outside the person model ({os.readlink(path)}); a person model "
                                 f"must hold its own files")


def _check_track(track: dict[str, np.ndarray], path: Path) -> None:
    """The arrays of track.npz have the shapes `Person.write` gives them, and finite values."""
    shapes = {"c2w": (None, 4, 4), "intrinsics": (3, 3), "low": (68, 3), "high": (68, 3), "pca_mean": (204,),
              "pca_basis": (None, 204), "mean68": (68, 3), "iod": ()}
    for key, shape in shapes.items():
        a = track.get(key)
        if a is None or a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)) \
                or a.dtype.kind != "f" or not np.isfinite(a).all():
            got = "missing" if a is None else f"{a.dtype} {list(a.shape)}"
            raise InputError(f"{path}: {key!r} must be finite floats of shape {list(shape)} (None: any), got {got}")
    if len(track["c2w"]) == 0 or not 0 < len(track["pca_basis"]) <= 204 or not float(track["iod"]) > 0:
        raise InputError(f"{path} is corrupt (empty pose track, basis or inter-ocular distance)")


def project_landmarks(offsets: np.ndarray, c2w: np.ndarray, K: np.ndarray, stats: LandmarkStats) -> np.ndarray:
    """Image positions [T, 68, 2] of offsets [T, 68, 3] under cameras c2w [T, 4, 4] and intrinsics K [3, 3]."""
    head = stats.mean68[None] + offsets * stats.iod  # [T, 68, 3]
    w2c = np.linalg.inv(c2w)
    cam = np.einsum("tij,tnj->tni", w2c[:, :3, :3], head) + w2c[:, None, :3, 3]
    return cam[..., :2] / cam[..., 2:3] * K[[0, 1], [0, 1]] + K[:2, 2]

