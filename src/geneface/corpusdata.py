"""A prepared corpus on disk: ``corpus.json``, JSON-lines manifests and append-only pack files.

Format (docs/corpus-format.md)::

    DIR/
      corpus.json                      format, version, feature kinds and the settings clips were made with
      manifest-<I>of<N>.jsonl          one line per clip attempt of shard I of N (the last line of a path wins)
      packs/<I>of<N>-w<K>.pack         raw little-endian arrays of many clips, each 64-byte aligned
      .lock-<I>of<N>                   held while a run works on that shard

A clip's line says where its arrays lie: ``"arrays": {"offsets": {"offset": 4096, "dtype": "<f4",
"shape": [T, 68, 3]}, ...}`` (byte offsets into its ``"pack"``), so one window of one clip can be read
without touching anything else (``PackReader.read``), or a whole array mapped with ``numpy.memmap``.
Nothing is pickled; packs only grow, and a record is written only after its bytes are on disk.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import InputError
from .fileio import read_json, write_json

FORMAT = "geneface-corpus"
VERSION = 1
CORPUS_FILE = "corpus.json"
PACK_DIR = "packs"
ALIGN = 64
"""Every array in a pack starts at a multiple of this many bytes."""
STATUSES = ("ok", "skipped", "failed")
"""``ok``: usable; ``skipped``: readable but not valid for training (no face, no speech, too short or long);
``failed``: could not be used (unreadable, no audio, an error)."""


def is_corpus(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder made by ``geneface corpus prepare`` (it holds ``corpus.json``)."""
    return (Path(path) / CORPUS_FILE).is_file()


def shard_tag(index: int, count: int) -> str:
    return f"{index}of{count}"


def manifest_path(out: Path, index: int, count: int) -> Path:
    return out / f"manifest-{shard_tag(index, count)}.jsonl"


# --- packs -------------------------------------------------------------------------------------

class PackWriter:
    """Appends arrays to one pack file. The file is first cut back to ``end`` (the bytes the manifest
    accounts for), so whatever an interrupted run appended after its last record is dropped."""

    def __init__(self, path: Path, end: int = 0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size if path.exists() else 0
        if size < end:
            raise InputError(f"pack file {path} is missing or shorter ({size} bytes) than its manifest says "
                             f"({end}); the corpus is damaged: prepare the clips into a new folder")
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        os.ftruncate(fd, end)
        self._file = os.fdopen(fd, "r+b", buffering=0)
        self._file.seek(end)
        self.end = end

    @property
    def name(self) -> str:
        """The pack's path relative to the corpus folder."""
        return f"{PACK_DIR}/{self.path.name}"

    def append(self, arrays: dict[str, np.ndarray]) -> tuple[list[int], dict[str, dict]]:
        """Write arrays and sync them to disk; returns the byte span ``[begin, end)`` and the array specs."""
        begin = self.end
        specs: dict[str, dict] = {}
        try:
            for key, value in arrays.items():
                a = np.ascontiguousarray(value)
                if a.dtype == object or a.dtype.kind not in "biuf":
                    raise TypeError(f"array {key!r} has dtype {a.dtype}; packs hold plain numbers")
                a = a.astype(a.dtype.newbyteorder("<"), copy=False)
                pad = (-self.end) % ALIGN
                if pad:
                    self._file.write(b"\0" * pad)
                self._file.write(a.tobytes())
                specs[key] = {"offset": self.end + pad, "dtype": a.dtype.str, "shape": list(a.shape)}
                self.end += pad + a.nbytes
            os.fsync(self._file.fileno())
        except BaseException:
            self._file.truncate(begin)
            self._file.seek(begin)
            self.end = begin
            raise
        return [begin, self.end], specs

    def close(self) -> None:
        self._file.close()


class PackReader:
    """Positional reads of array rows from one pack file: nothing is mapped or cached, so memory stays flat
    however large the corpus; ``bytes_read`` counts what was read."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise InputError(f"missing pack file {path}; the corpus is incomplete (rerun `geneface corpus "
                             f"prepare` to redo its clips)")
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        self.bytes_read = 0

    def read(self, spec: dict, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``[start:stop]`` (first axis) of the array described by ``spec``."""
        shape = [int(s) for s in spec["shape"]]
        dtype = np.dtype(spec["dtype"])
        row = dtype.itemsize * math.prod(shape[1:])
        stop = shape[0] if stop is None else min(int(stop), shape[0])
        start = max(0, min(int(start), stop))
        size = (stop - start) * row
        data = os.pread(self._fd, size, int(spec["offset"]) + start * row) if size else b""
        if len(data) != size:
            raise InputError(f"pack file {self.path} is shorter than its manifest says; the corpus is damaged")
        self.bytes_read += size
        return np.frombuffer(data, dtype).reshape(stop - start, *shape[1:])

    def memmap(self, spec: dict) -> np.memmap:
        """The whole array as a read-only memory map."""
        return np.memmap(self.path, dtype=np.dtype(spec["dtype"]), mode="r", offset=int(spec["offset"]),
                         shape=tuple(int(s) for s in spec["shape"]))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


# --- manifests ---------------------------------------------------------------------------------

def read_manifest(path: Path) -> Iterator[dict]:
    """Records of one manifest; a line cut short by an interrupted run (the last one) is ignored."""
    with open(path, "rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and "path" in record and "status" in record:
                yield record


def latest_records(out: Path) -> dict[str, dict]:
    """The newest record of every clip over all shards' manifests (by ``finished`` time)."""
    latest: dict[str, dict] = {}
    for path in sorted(out.glob("manifest-*.jsonl")):
        for record in read_manifest(path):
            old = latest.get(record["path"])
            if old is None or record.get("finished", 0) >= old.get("finished", 0):
                latest[record["path"]] = record
    return latest


class ManifestWriter:
    """Appends records to one shard's manifest, each line flushed and synced as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "ab")
        if self._file.tell():  # a run cut off mid-line: start a fresh line so the next record stays readable
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self._file.write(b"\n")

    def write(self, record: dict) -> None:
        self._file.write((json.dumps(record, separators=(",", ":")) + "\n").encode())
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- corpus.json -------------------------------------------------------------------------------

def read_corpus_meta(out: Path) -> dict:
    path = out / CORPUS_FILE
    try:
        meta = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is corrupt ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{out} is not a geneface corpus ({CORPUS_FILE} has another format)")
    if meta.get("version") != VERSION:
        raise InputError(f"{out} holds corpus format version {meta.get('version')}; this geneface reads version "
                         f"{VERSION}: prepare the clips again into another folder")
    return meta


def write_corpus_meta(out: Path, features: list[str], settings: dict[str, Any], root: Path) -> dict:
    meta = {"format": FORMAT, "version": VERSION, "features": list(features), "settings": settings,
            "root": str(root), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(out / CORPUS_FILE, meta)
    return meta


# --- reading a corpus --------------------------------------------------------------------------

class Corpus:
    """A prepared corpus, read lazily: the manifests are parsed at once, arrays only when asked for."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"no such corpus folder: {self.root}")
        if not is_corpus(self.root):
            raise InputError(f"{self.root} is not a prepared corpus (no {CORPUS_FILE}); make one with "
                             f"`geneface corpus prepare CLIPS --out {self.root}`")
        self.meta = read_corpus_meta(self.root)
        self.records = latest_records(self.root)
        """Newest record per clip path (every status)."""
        self._readers: dict[str, PackReader] = {}

    @property
    def features(self) -> list[str]:
        """Audio feature kinds stored for every clip."""
        return list(self.meta["features"])

    def clips(self, status: str = "ok") -> list[dict]:
        """Records with ``status`` (all when ``status`` is empty), sorted by path."""
        return [r for _, r in sorted(self.records.items()) if not status or r["status"] == status]

    def speakers(self) -> dict[str, list[dict]]:
        """Usable clips grouped by speaker (speakers sorted, clips by path)."""
        groups: dict[str, list[dict]] = {}
        for record in self.clips("ok"):
            groups.setdefault(record["speaker"], []).append(record)
        return dict(sorted(groups.items()))

    def check_kind(self, kind: str) -> None:
        if kind not in self.features:
            raise InputError(f"corpus {self.root} was prepared with {', '.join(self.features)} features, not "
                             f"{kind!r}; prepare the clips again with --features {kind} into another folder, or "
                             f"train on {self.features[0]!r}")

    def reader(self, record: dict) -> PackReader:
        name = record["pack"]
        if name not in self._readers:
            self._readers[name] = PackReader(self.root / name)
        return self._readers[name]

    def read(self, record: dict, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``[start:stop]`` of one array (``offsets``, ``pitch`` or a feature kind) of a usable clip."""
        if record.get("status") != "ok":
            raise InputError(f"clip {record['path']} has no arrays (status {record.get('status')})")
        try:
            spec = record["arrays"][key]
        except KeyError:
            raise InputError(f"clip {record['path']} has no {key!r} array; it has "
                             f"{', '.join(record.get('arrays', {}))}") from None
        return self.reader(record).read(spec, start, stop)

    @property
    def bytes_read(self) -> int:
        """Bytes read from the packs so far by this object."""
        return sum(r.bytes_read for r in self._readers.values())

    def summary(self) -> dict:
        """Counts of clips by status, frames and speakers of the usable ones, and the skip/failure reasons."""
        counts = {s: 0 for s in STATUSES}
        reasons: dict[str, int] = {}
        for r in self.records.values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
            if r["status"] != "ok":
                key = str(r.get("reason", "")).split(":")[0]
                reasons[key] = reasons.get(key, 0) + 1
        ok = self.clips("ok")
        return {**counts, "frames": sum(int(r["frames"]) for r in ok), "speakers": len(self.speakers()),
                "reasons": reasons}

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
