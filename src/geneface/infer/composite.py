"""`geneface infer --full-frame`: the rendered face crop pasted back into the source video's own frames.

The person's frames follow the training poses (`pose_track` "loop": forward then backward), and training pose j
is 25 fps source frame ``start + j`` (person.json's ``source``, `geneface.infer.person.source_block`), so the
source frame under each output frame shows the same head pose, body and background. `composite` pastes the
render over it: the rendered person is kept (its edge feathered into the source), the crop's border is
feathered, and the render's colours are shifted by their mean difference to the source along that border.
Pixels outside the crop stay the source's exactly.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .. import media
from ..constants import FPS
from ..errors import InputError
from ..fileio import sha256_file
from ..render import PersonRenderer
from .person import Person
from .stabilise import pose_at

if TYPE_CHECKING:
    from .pipeline import InferConfig, PersonModel

FEATHER = 0.04
"""Width of the crop border's feather, as a fraction of the crop's side."""
PERSON_FEATHER = 0.02
"""The rendered person's mask is grown by this fraction of the side, then blurred over as much again."""
COLOUR_BAND = 0.05
"""Width of the band along the crop border where the colour difference to the source is measured (of the side)."""
MAX_COLOUR_SHIFT = 16.0
"""Largest colour shift of the render, per channel, in 8-bit levels."""
RAW_BUDGET = 256 << 20
"""`SourceFrames` keeps the frames it needs again as raw arrays when they fit in this many bytes, else as PNG."""
MEMORY_BUDGET = 1 << 30
"""`SourceFrames` keeps PNG-encoded frames in memory up to this many bytes, then in a temporary folder."""


@dataclass(frozen=True)
class SourceRecord:
    """What person.json records of the source video (`geneface.infer.person.source_block`)."""

    path: Path
    """Absolute path of the video as `geneface process` read it."""
    sha256: str
    bytes: int
    width: int
    height: int
    crop: tuple[int, int, int]
    """(x0, y0, side): the square crop in source pixels; it may reach past the frame's edges."""
    size: int
    """Side of the resized crop the dataset holds."""
    frames: tuple[int, int]
    """[start, stop): training pose j is 25 fps source frame start + j."""

    @classmethod
    def of(cls, person: Person) -> "SourceRecord":
        """The record of ``person``; an `InputError` for a person model made before it was kept."""
        block = person.meta.get("source")
        if block is None:
            raise InputError(f"{person.root} has no record of its source video (its dataset was processed by an "
                             f"earlier geneface); process the video again: rerun `geneface train all VIDEO --out "
                             f"{person.root}` (finished stages are kept)")
        try:
            record = cls(Path(block["path"]), str(block["sha256"]), int(block["bytes"]), int(block["width"]),
                         int(block["height"]), tuple(int(v) for v in block["crop"]), int(block["size"]),
                         tuple(int(v) for v in block["frames"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{person.root / 'person.json'}: its 'source' is corrupt") from None
        start, stop = record.frames
        if "\x00" in str(record.path) or len(record.crop) != 3 or record.crop[2] < 1 or not 0 <= start < stop or stop - start != len(person.c2w):
            raise InputError(f"{person.root / 'person.json'}: its 'source' does not match its {len(person.c2w)} "
                             f"training poses")
        return record


def check_source(person: Person, given: str | os.PathLike | None = None) -> Path:
    """The person's source video, checked to be the file `train all` read (its size and SHA-256): the recorded
    path, or ``given`` (``--source``) when the video has moved. Raises `InputError` naming the file.

    A person model may come from someone else: the recorded path is read only with --full-frame, and only a file
    of the recorded size and checksum is used, so it can show nothing its author did not already have."""
    record = SourceRecord.of(person)
    path = Path(given) if given is not None else record.path
    what = f"--source {path}" if given is not None else f"source video {path}"
    hint = "pass --source PATH to where the video is now" if given is None else \
        f"pass the video {person.root} was trained on"
    if not path.is_file():
        moved = "is not there (moved or deleted since `train all`)" if given is None else "is not a file"
        raise InputError(f"{what} {moved}; {hint}")
    if path.stat().st_size != record.bytes or sha256_file(path) != record.sha256:
        changed = "has moved or changed since `train all`" if given is None else "is not the person's source video"
        raise InputError(f"{what} {changed} (checksum differs); {hint}")
    return path


def source_indices(record: SourceRecord, num_frames: int, mode: str) -> np.ndarray:
    """25 fps source frame [T] under each output frame of pose track ``mode`` (loop or still; `pose_at`)."""
    if mode not in ("loop", "still"):
        raise InputError("--full-frame needs --pose loop or still: a pose file's cameras have no source frames")
    start, stop = record.frames
    return start + pose_at(np.arange(stop - start), np.arange(num_frames), mode)


class SourceFrames:
    """The 25 fps frames of a video at ``indices`` [T], in that order, from one sequential decode.

    Frames are decoded once, front to back; a frame asked for again later (the backward half of a loop, the next
    loop) is kept until its last use: as it is when all such frames fit ``raw_budget`` bytes, else PNG-encoded in
    memory up to ``memory_budget`` bytes and in a temporary folder past that (lossless either way; the folder is
    removed at the end). Raises `InputError` when the video is shorter than the largest index.
    """

    def __init__(self, path: str | os.PathLike, indices: Sequence[int] | np.ndarray, raw_budget: int = RAW_BUDGET,
                 memory_budget: int = MEMORY_BUDGET) -> None:
        self.path = Path(path)
        self.indices = np.asarray(indices, dtype=np.int64)  # [T]
        if self.indices.ndim != 1 or (len(self.indices) and self.indices.min() < 0):
            raise ValueError("indices must be a 1-D sequence of frame numbers >= 0")
        self.raw_budget, self.memory_budget = raw_budget, memory_budget
        self.kept_max = 0
        """The most frames held at once during the last iteration."""
        self.on_disk = 0
        """Frames the last iteration kept in files."""

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[np.ndarray]:
        idx = [int(i) for i in self.indices]
        last = {f: t for t, f in enumerate(idx)}  # frame -> position of its last use
        repeated = int((np.unique(self.indices, return_counts=True)[1] > 1).sum())
        decoder = media.read_video(self.path, FPS)
        decoded = 0  # the frame number the decoder gives next
        kept: _FrameStore | None = None  # made at the first frame, when its size is known
        self.kept_max = 0
        try:
            for t, f in enumerate(idx):
                if kept is not None and f in kept:
                    rgb = kept.get(f)
                else:
                    rgb = None
                    while decoded <= f:
                        frame = next(decoder, None)
                        if frame is None:
                            raise InputError(f"source video {self.path} has {decoded} frames at 25 fps; frame {f} "
                                             f"is needed")
                        if kept is None:
                            kept = _FrameStore(repeated * frame.nbytes <= self.raw_budget, self.memory_budget)
                        g, decoded = decoded, decoded + 1
                        if g == f:
                            rgb = frame
                        elif last.get(g, -1) > t:  # decoded ahead of its turn
                            kept.put(g, frame)
                    if rgb is None:
                        raise RuntimeError(f"frame {f} was dropped before its last use")  # cannot happen
                    if last[f] > t:
                        kept.put(f, rgb)
                if last[f] == t:
                    kept.pop(f)
                self.kept_max = max(self.kept_max, len(kept))
                yield rgb
        finally:
            decoder.close()
            if kept is not None:
                self.on_disk = kept.on_disk
                kept.close()


class _FrameStore:
    """Frames by number: raw arrays, or PNG bytes in memory up to ``memory_budget`` bytes and files past it."""

    def __init__(self, raw: bool, memory_budget: int) -> None:
        self.raw, self.memory_budget = raw, memory_budget
        self.items: dict[int, np.ndarray | Path] = {}  # RGB [H, W, 3], PNG bytes [N], or a PNG file
        self.held = 0  # PNG bytes in memory
        self.on_disk = 0  # frames written to files so far
        self._dir: tempfile.TemporaryDirectory | None = None

    def __contains__(self, f: int) -> bool:
        return f in self.items

    def __len__(self) -> int:
        return len(self.items)

    def put(self, f: int, rgb: np.ndarray) -> None:
        if self.raw:
            self.items[f] = rgb
            return
        png = _png(rgb)
        if self.held + png.nbytes <= self.memory_budget:
            self.items[f] = png
            self.held += png.nbytes
            return
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="geneface-source-")
        path = Path(self._dir.name) / f"{f}.png"
        png.tofile(path)
        self.items[f] = path
        self.on_disk += 1

    def get(self, f: int) -> np.ndarray:
        item = self.items[f]
        if self.raw:
            return item
        png = np.fromfile(item, np.uint8) if isinstance(item, Path) else item
        return cv2.imdecode(png, cv2.IMREAD_COLOR)[..., ::-1]

    def pop(self, f: int) -> None:
        item = self.items.pop(f, None)
        if isinstance(item, Path):
            item.unlink()
        elif item is not None and not self.raw:
            self.held -= item.nbytes

    def close(self) -> None:
        self.items.clear()
        if self._dir is not None:
            self._dir.cleanup()


def composite(frame_rgb: np.ndarray, alpha: np.ndarray | None, source: np.ndarray,
              crop: Sequence[int]) -> np.ndarray:
    """The rendered crop frame_rgb [S, S, 3] uint8 pasted into source [H, W, 3] uint8 at ``crop`` (x0, y0, side)
    -> [H, W, 3] uint8.

    The render is resized to side x side (cubic up, area down) and blended over the part of the crop inside the
    frame with weight `blend_weight` (the crop border feathered; with the person's coverage ``alpha`` [S, S] in
    [0, 1], the background is the source's and the person's edge is feathered); its colours are first shifted by
    `colour_shift`. Pixels outside the crop equal the source's exactly, and so does every pixel of weight 0.
    """
    h, w = source.shape[:2]
    x0, y0, side = (int(v) for v in crop)
    s = frame_rgb.shape[0]
    if frame_rgb.shape != (s, s, 3) or (alpha is not None and alpha.shape != (s, s)):
        raise ValueError(f"frame [S, S, 3] and alpha [S, S] expected, got {frame_rgb.shape} and "
                         f"{None if alpha is None else alpha.shape}")
    out = source.copy()
    vx0, vy0, vx1, vy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)  # the crop inside the frame
    if vx0 >= vx1 or vy0 >= vy1:
        return out
    interp = cv2.INTER_CUBIC if side > s else cv2.INTER_AREA
    render = cv2.resize(frame_rgb, (side, side), interpolation=interp).astype(np.float32)  # [side, side, 3]
    cover = None if alpha is None else cv2.resize(alpha.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    inner = (slice(vy0 - y0, vy1 - y0), slice(vx0 - x0, vx1 - x0))  # the visible part, in crop pixels
    render = render[inner]
    weight = blend_weight(cover, side, edges=(x0 > 0, y0 > 0, x0 + side < w, y0 + side < h))[inner]
    src = source[vy0:vy1, vx0:vx1].astype(np.float32)
    band = _border_band(side, COLOUR_BAND, edges=(x0 > 0, y0 > 0, x0 + side < w, y0 + side < h))[inner]
    render = np.clip(render + colour_shift(render, src, band), 0, 255)
    blended = src + weight[..., None] * (render - src)
    out[vy0:vy1, vx0:vx1] = np.rint(blended).astype(np.uint8)
    return out


def blend_weight(alpha: np.ndarray | None, side: int, edges: tuple[bool, bool, bool, bool] = (True,) * 4) -> np.ndarray:
    """Weight [side, side] float32 in [0, 1] of the render over the source: a smooth ramp over `FEATHER` of the
    side inward from each crop edge in ``edges`` (left, top, right, bottom: those inside the frame), times the
    person's coverage ``alpha`` [side, side] grown and blurred by `PERSON_FEATHER` of the side (None: 1)."""
    f = max(2.0, FEATHER * side)
    ramp = np.clip(_edge_distance(side, edges) / f, 0, 1)
    weight = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    if alpha is not None:
        r = max(1, int(round(PERSON_FEATHER * side)))
        grown = cv2.dilate(np.clip(alpha, 0, 1).astype(np.float32),
                           cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        weight = weight * np.clip(cv2.GaussianBlur(grown, (0, 0), r / 2), 0, 1)
    return weight.astype(np.float32)


def colour_shift(render: np.ndarray, source: np.ndarray, band: np.ndarray) -> np.ndarray:
    """[3] float32: the mean of source - render [..., 3] over ``band`` [...] bool, clamped to ±`MAX_COLOUR_SHIFT`
    (0 for an empty band)."""
    if not band.any():
        return np.zeros(3, np.float32)
    diff = (source[band].astype(np.float64) - render[band]).mean(0)
    return np.clip(diff, -MAX_COLOUR_SHIFT, MAX_COLOUR_SHIFT).astype(np.float32)


def even_frame(rgb: np.ndarray) -> np.ndarray:
    """rgb [H, W, 3] with an odd height or width padded by one row or column, its edge replicated (H.264 needs
    even sizes; every source pixel is kept)."""
    h, w = rgb.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return rgb
    return cv2.copyMakeBorder(rgb, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)


def full_frames(model: "PersonModel", offsets: np.ndarray, c2w: np.ndarray, config: "InferConfig", source: Path,
                progress: bool = False) -> Iterator[np.ndarray]:
    """Frames [H', W', 3] uint8 of the source video's size (`even_frame`) with ``model``'s render of offsets
    [T, 68, 3] from cameras c2w [T, 4, 4] (the track of ``config.pose``) composited in, ``config.batch`` at a
    time; ``source``: the checked video (`check_source`)."""
    record = SourceRecord.of(model.person)
    frames = iter(SourceFrames(source, source_indices(record, len(offsets), config.pose)))
    landmarks = torch.from_numpy(np.ascontiguousarray(offsets, dtype=np.float32))  # [T, 68, 3]
    for start in tqdm(range(0, len(offsets), config.batch), desc="render", unit="batch", disable=not progress):
        idx = np.arange(start, min(start + config.batch, len(offsets)))
        rgb, alpha = model.render_layers(PersonRenderer.windows(landmarks, torch.from_numpy(idx)), c2w[idx])
        for frame, cover in zip(rgb, alpha):
            src = next(frames)
            if src.shape[:2] != (record.height, record.width):
                raise InputError(f"source video {source} has {src.shape[1]}x{src.shape[0]} frames, not the "
                                 f"{record.width}x{record.height} `train all` recorded")
            yield even_frame(composite(frame, cover, src, record.crop))


def _edge_distance(side: int, edges: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """[side, side] distance in pixels of each pixel centre to the nearest crop edge in ``edges`` (left, top,
    right, bottom; inf where none is)."""
    c = np.arange(side, dtype=np.float32) + 0.5
    inf = np.full(side, np.inf, np.float32)
    left, top = (c if edges[0] else inf), (c if edges[1] else inf)
    right, bottom = (side - c if edges[2] else inf), (side - c if edges[3] else inf)
    return np.minimum(np.minimum(left, right)[None, :], np.minimum(top, bottom)[:, None])


def _border_band(side: int, fraction: float, edges: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """[side, side] bool: within ``fraction`` of the side (2 px at least) of a crop edge in ``edges``."""
    return _edge_distance(side, edges) < max(2.0, fraction * side)


def _png(rgb: np.ndarray) -> np.ndarray:
    ok, buf = cv2.imencode(".png", rgb[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf


