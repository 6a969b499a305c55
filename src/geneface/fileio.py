"""Files: atomic writes (every file appears complete under its final name or not at all), one writer per
folder, and readers that refuse what they were not made for (pickles, oversized arrays).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from .errors import InputError

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked
    fcntl = None

LOCK_FILE = ".geneface.lock"
"""The lock file a writing command holds in its output folder (see `folder_lock`)."""


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` keeps an extension on the temporary name for writers that infer the format from it
    (defaults to the final path's suffix).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix if suffix is not None else path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes private files; give the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write plain numeric arrays (object arrays are refused, so the file never needs pickle)."""
    for key, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(f"array {key!r} has dtype object; only numeric arrays are stored")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB [H, W, 3] (or grey [H, W]) uint8 image atomically, its format from the suffix (.png, .jpg)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), rgb[..., ::-1] if rgb.ndim == 3 else rgb):
            raise OSError(f"could not write {path}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB [H, W, 3] uint8; a missing or unreadable one is an :class:`InputError`."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"missing or unreadable image {path}")
    return image[..., ::-1].copy()


def read_npz(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (never unpickled). With ``max_bytes``, an archive whose arrays would take more
    memory than that is refused (an ``InputError``) before any of them is read: their headers say how big."""
    if max_bytes is not None:
        total = npz_bytes(path)
        if total > max_bytes:
            raise InputError(f"{path} holds {total / 2**20:.0f} MB of arrays, more than the {max_bytes / 2**20:.0f} MB "
                             f"such a file may have; it is not a file geneface wrote")
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def npz_bytes(path: str | os.PathLike) -> int:
    """Bytes the arrays of an ``.npz`` take once loaded, from their headers alone (``ValueError`` if it is not
    an npz)."""
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                with archive.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    if version not in ((1, 0), (2, 0)):
                        raise ValueError(f"array format version {version}")
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = header(f)  # the header only
                    total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path} is not a readable .npz ({type(e).__name__}: {e})") from None
    return total


@contextmanager
def folder_lock(folder: str | os.PathLike, name: str = LOCK_FILE, what: str | None = None,
                wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (made if missing) while the block runs: one writer per folder.

    A second process that asks for the same lock stops (at once, or after ``wait`` seconds of asking again) with
    ``InputError("DIR is in use by another geneface process (pid N)")`` (``what`` replaces DIR in the message).
    The lock is an ``flock`` on ``folder/name``, which the kernel drops when its holder exits, so a killed
    process leaves no obstacle (on shared storage, a machine that was lost holds it until its lease there runs
    out: hence ``wait``); the file only keeps the holder's pid for that message. Not POSIX: no lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                    continue
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise InputError(f"{what or folder} is in use by another geneface process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
