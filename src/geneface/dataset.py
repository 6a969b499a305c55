"""Read a processed person dataset (format in docs/dataset-format.md)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError
from .fileio import read_json, read_npz
from .media import read_audio

FORMAT = "geneface-dataset"
VERSION = 1


class PersonDataset:
    """A processed person folder. Arrays load lazily; frames and masks are read one at a time."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"no such dataset folder: {self.root}")
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            hint = " (processing did not finish; rerun `geneface process` to resume)" \
                if (self.root / "progress.json").exists() else " (run `geneface process` first)"
            raise InputError(f"{self.root} is not a processed dataset: no meta.json{hint}")
        meta = read_json(meta_path)
        if meta.get("format") != FORMAT:
            raise InputError(f"{self.root} is not a geneface dataset")
        if meta.get("version") != VERSION:
            raise InputError(f"{self.root} has dataset format version {meta.get('version')}, this geneface "
                             f"reads version {VERSION}; process the video again")
        self.meta = meta

    # --- scalars --------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int(self.meta["num_frames"])

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def intrinsics(self) -> np.ndarray:
        """[3, 3] pinhole intrinsics in pixels of the cropped frames."""
        return np.asarray(self.meta["intrinsics"], dtype=np.float32)

    def split(self, name: str) -> np.ndarray:
        """Frame indices of ``"train"`` or ``"val"``."""
        a, b = self.meta["split"][name]
        return np.arange(a, b)

    # --- arrays ---------------------------------------------------------------------------------
    def _npz(self, name: str) -> dict[str, np.ndarray]:
        path = self.root / name
        if not path.exists():
            raise InputError(f"dataset {self.root} lacks {name}; process the video again")
        return read_npz(path)

    @cached_property
    def pose(self) -> dict[str, np.ndarray]:
        """``rotation`` [T,3,3], ``translation`` [T,3], ``c2w`` [T,4,4], ``euler`` [T,3], ..."""
        return self._npz("pose.npz")

    @cached_property
    def landmarks(self) -> dict[str, np.ndarray]:
        """``mesh`` [T,478,3] in frame pixels, ``found`` [T]."""
        return self._npz("landmarks.npz")

    @cached_property
    def motion(self) -> dict[str, np.ndarray]:
        """``offsets`` [T,68,3], ``mean68`` [68,3], ``iod``."""
        return self._npz("motion.npz")

    def features(self, kind: str = "mel") -> np.ndarray:
        """Audio features [2T, D] at 50 Hz."""
        path = self.root / "features" / f"{kind}.npz"
        if not path.exists():
            have = ", ".join(self.meta.get("features", [])) or "none"
            raise InputError(f"dataset {self.root} has no {kind!r} audio features (has: {have}); "
                             f"run `geneface process ... --features {kind}`")
        return read_npz(path)["features"]

    def audio(self) -> np.ndarray:
        """The clip's 16 kHz mono audio [N] float32."""
        return read_audio(self.root / "audio.wav")

    # --- images ---------------------------------------------------------------------------------
    def frame(self, i: int) -> np.ndarray:
        """RGB frame ``i`` [size, size, 3] uint8."""
        return _read_image(self.root / "frames" / f"{i:06d}.jpg")[..., ::-1].copy()

    def parsing(self, i: int) -> np.ndarray:
        """Labels of frame ``i`` [size, size] uint8: 0 background, 1 head, 2 torso."""
        return _read_image(self.root / "parsing" / f"{i:06d}.png", cv2.IMREAD_UNCHANGED)

    def background(self) -> np.ndarray:
        """Static background [size, size, 3] uint8 RGB."""
        return _read_image(self.root / "background.png")[..., ::-1].copy()

    def background_unseen(self) -> np.ndarray:
        """[size, size] bool: True where no training frame showed the background (`background` is inpainted
        there; ``background_unseen.png``). All False for datasets written before the file existed."""
        path = self.root / "background_unseen.png"
        if not path.exists():
            return np.zeros((self.size, self.size), bool)
        return _read_image(path, cv2.IMREAD_GRAYSCALE) > 127

    @property
    def valid_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), half-open: the frames' real pixels; outside it the crop reached past the source
        frame and holds padding (its edges replicated), which no loss or metric may see. The whole frame for
        datasets written before padding existed."""
        box = self.meta.get("valid_box")
        return tuple(int(v) for v in box) if box is not None else (0, 0, self.size, self.size)

    def valid_mask(self) -> np.ndarray:
        """[size, size] bool: True on the real pixels, False on the padding (``valid.png``, `valid_box`)."""
        path = self.root / "valid.png"
        if not path.exists() and "valid_box" not in self.meta:
            return np.ones((self.size, self.size), bool)
        return _read_image(path, cv2.IMREAD_GRAYSCALE) > 127


def _read_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise InputError(f"missing or unreadable image {path}; process the video again")
    return image
