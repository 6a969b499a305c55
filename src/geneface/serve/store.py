"""The app's work folder and the person models it serves.

Nothing a request names becomes a path by itself: uploads, jobs and their files get generated names
(16 hex digits), and a person is looked up by name in a listing of the people folder, never joined onto it.
A name that a request gives for something new (a person to train) must be a plain word
(`PERSON_NAME`). Layout::

    WORK/uploads/ID.EXT    an uploaded file (EXT from a fixed list, else .bin), ID.json its record
    WORK/jobs/ID/          one job: job.json, and what it wrote (video.mp4, log.txt, progress.json, eval/)
    WORK/people/           person models trained by the app (unless --people names another folder)
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import AsyncIterator

from python_multipart import MultipartParser
from starlette.requests import ClientDisconnect
from python_multipart.multipart import parse_options_header

from .. import media
from ..constants import AUDIO_RATE
from ..errors import GeneFaceError, InputError
from ..fileio import read_json, write_json
from ..infer.cli_demo import bundled_person
from ..infer.person import Person
from ..infer.pipeline import PersonModel
from ..motion.model import check_audio

log = logging.getLogger(__name__)

DEMO = "demo"
"""Name of the bundled demo person."""
PERSON_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A person's name: a plain word of letters, digits, - and _ (at most 64), which is also its folder's name."""
FILE_ID = re.compile(r"[0-9a-f]{16}")
"""The generated name of an upload or a job."""
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".webm", ".mp4", ".mov",
                    ".mkv")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
MAX_NAME_CHARS = 120
"""An uploaded file's name is kept (for display only) up to this many characters."""
MB = 1 << 20


class TooLarge(GeneFaceError):
    """An upload over its size limit (HTTP 413)."""


class NotFound(GeneFaceError):
    """A person, upload or job that does not exist (HTTP 404)."""


def new_id() -> str:
    return secrets.token_hex(8)


def check_id(value: object, what: str) -> str:
    """``value`` if it is a generated name (`FILE_ID`), else `NotFound`."""
    if not isinstance(value, str) or not FILE_ID.fullmatch(value):
        raise NotFound(f"no {what} {_shown(value)}")
    return value


def check_person_name(value: object) -> str:
    """A name for a new person (`PERSON_NAME`; not the demo's), else a one-line `InputError`."""
    if not isinstance(value, str) or not PERSON_NAME.fullmatch(value):
        raise InputError(f"a person's name must be 1 to 64 letters, digits, - or _ (starting with a letter or "
                         f"digit), got {_shown(value)}")
    if value == DEMO:
        raise InputError(f"{DEMO!r} is the bundled demo person's name; choose another")
    return value


def display_name(name: object) -> str:
    """An uploaded file's name as shown to the user: its last path part, printable, at most `MAX_NAME_CHARS`."""
    text = str(name or "")
    text = re.split(r"[/\\]", text)[-1]
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C")
    return text[:MAX_NAME_CHARS].strip() or "upload"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Upload:
    """An uploaded file's record (``uploads/ID.json``)."""

    id: str
    kind: str
    """audio or video"""
    name: str
    """the file's name as the client gave it (display only)"""
    file: str
    """its file name in the uploads folder"""
    bytes: int
    seconds: float
    """its audio's length (audio) or the video's (video)"""
    created: float


class Work:
    """The work folder (see the module docstring)."""

    def __init__(self, root: Path, people: Path | None = None) -> None:
        self.root = Path(root)
        self.uploads = self.root / "uploads"
        self.jobs = self.root / "jobs"
        self.people = Path(people) if people is not None else self.root / "people"
        for folder in (self.uploads, self.jobs, self.people):
            folder.mkdir(parents=True, exist_ok=True)

    # --- uploads ------------------------------------------------------------------------------------
    async def receive(self, chunks: AsyncIterator[bytes], content_type: str, kind: str, name: str,
                      limit: int, limit_hint: str) -> tuple[Path, str]:
        """Stream a request body into ``uploads/ID.EXT`` (a raw body, or the first file of a multipart form);
        `TooLarge` once it passes ``limit`` bytes (the partial file is removed). Returns the path and the file's
        name (a multipart form's own, else ``name``); its record is written by `record` once the file is
        checked."""
        if kind not in ("audio", "video"):
            raise InputError(f"kind must be audio or video, got {_shown(kind)}")
        upload_id = new_id()
        part = self.uploads / f".{upload_id}.part"
        received = 0
        multipart = _Multipart(content_type) if content_type.startswith("multipart/form-data") else None
        try:
            with open(part, "wb") as f:
                if multipart is not None:
                    multipart.out = f
                async for chunk in _until_disconnect(chunks):
                    received += len(chunk)
                    if received > limit:
                        raise TooLarge(f"the {kind} upload is larger than the {limit // MB} MB limit ({limit_hint})")
                    if multipart is not None:
                        multipart.feed(chunk)
                    else:
                        f.write(chunk)
                if multipart is not None:
                    multipart.finish()
                    name = multipart.filename if multipart.filename is not None else name
            if part.stat().st_size == 0:
                raise InputError(f"the {kind} upload is empty")
            ext = Path(display_name(name)).suffix.lower()
            allowed = AUDIO_EXTENSIONS if kind == "audio" else VIDEO_EXTENSIONS
            path = self.uploads / f"{upload_id}{ext if ext in allowed else '.bin'}"
            os.replace(part, path)
            return path, name
        finally:
            part.unlink(missing_ok=True)

    def record(self, path: Path, kind: str, name: str) -> Upload:
        """Check an uploaded file (blocking: decodes its audio) and write its record; a file that is not usable
        is removed and refused with a one-line message."""
        try:
            if kind == "audio":
                seconds = len(check_audio(media.read_audio(path), display_name(name))) / AUDIO_RATE
            else:
                seconds = media.probe(path).duration
        except GeneFaceError as e:
            path.unlink(missing_ok=True)
            raise InputError(str(e).replace(str(path), display_name(name))) from None
        upload = Upload(id=path.stem, kind=kind, name=display_name(name), file=path.name,
                        bytes=path.stat().st_size, seconds=round(float(seconds), 3), created=time.time())
        write_json(self.uploads / f"{upload.id}.json", asdict(upload))
        return upload

    def upload(self, upload_id: object, kind: str | None = None) -> tuple[Upload, Path]:
        """An upload's record and file, by its id (`NotFound` for anything else)."""
        upload_id = check_id(upload_id, "upload")
        try:
            upload = Upload(**read_json(self.uploads / f"{upload_id}.json"))
        except (OSError, ValueError, TypeError):
            raise NotFound(f"no upload {upload_id}") from None
        path = self.uploads / upload.file
        if Path(upload.file).name != upload.file or not path.is_file():
            raise NotFound(f"no upload {upload_id}")
        if kind is not None and upload.kind != kind:
            raise InputError(f"upload {upload_id} is {upload.kind}, not {kind}")
        return upload, path

    # --- people -------------------------------------------------------------------------------------
    def person_path(self, name: object) -> Path:
        """The folder of the person called ``name`` (the bundled demo, or a folder of the people folder)."""
        listing = self.list_people()
        for entry in listing:
            if entry["id"] == name and not entry.get("problem"):
                return Path(entry["path"])
        for entry in listing:
            if entry["id"] == name:
                raise InputError(f"person {name} cannot be used: {entry['problem']}")
        raise NotFound(f"no person {_shown(name)}")

    def evaluable(self, name: object) -> bool:
        """Whether the person called ``name`` has its dataset (what `evaluate` measures it on)."""
        return any(e["id"] == name and e.get("evaluable") for e in self.list_people())

    def list_people(self) -> list[dict]:
        """The demo person, then every person model folder in the people folder (plain folders only: a link is
        not followed), with its size and fps, or the problem that keeps it from loading."""
        people = [_describe(DEMO, bundled_person(), bundled=True)]
        try:
            entries = sorted(os.scandir(self.people), key=lambda e: e.name)
        except OSError as e:
            log.warning(f"cannot list the people folder {self.people}: {e.strerror}")
            entries = []
        for entry in entries:
            if entry.name == DEMO or not PERSON_NAME.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            if not (Path(entry.path) / "person.json").is_file():
                continue  # not a person model (yet: a training folder)
            people.append(_describe(entry.name, Path(entry.path)))
        return people

    def new_person_path(self, name: object) -> Path:
        """The folder a new person called ``name`` is trained into (inside the people folder)."""
        path = self.people / check_person_name(name)
        if path.is_symlink():
            raise InputError(f"{name} is a link in the people folder; choose another name")
        return path

    # --- jobs ---------------------------------------------------------------------------------------
    def job_dir(self, job_id: object) -> Path:
        return self.jobs / check_id(job_id, "job")


async def _until_disconnect(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks of a request body; a client that goes away mid-upload is a one-line `InputError`."""
    try:
        async for chunk in chunks:
            yield chunk
    except ClientDisconnect:
        raise InputError("the upload was interrupted (the client disconnected)") from None


def _describe(name: str, path: Path, bundled: bool = False) -> dict:
    entry: dict = {"id": name, "path": str(path), "bundled": bundled}
    try:
        person = Person(path)
        entry.update(size=person.size, fps=person.fps, features=person.feature_kind,
                     evaluable=person.data_dir is not None)
    except GeneFaceError as e:
        entry["problem"] = str(e)
    return entry


class Models:
    """Person models loaded once and shared by render jobs and live sessions (the last few, reloaded when the
    folder's person.json changes)."""

    def __init__(self, device: str, keep: int = 4) -> None:
        self.device = device
        self.keep = keep
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[float, PersonModel]] = {}

    def get(self, path: Path) -> PersonModel:
        key = str(path)
        stamp = (path / "person.json").stat().st_mtime
        with self._lock:
            hit = self._loaded.pop(key, None)
            if hit is None or hit[0] != stamp:
                log.info(f"loading person model {path}")
                # not under inference_mode: the renderer's occupancy grid keys a cache on its tensor's version
                hit = (stamp, PersonModel.load(path, self.device))
            self._loaded[key] = hit  # most recent last
            while len(self._loaded) > self.keep:
                self._loaded.pop(next(iter(self._loaded)))
            return hit[1]


class _Multipart:
    """The first file of a multipart/form-data body, streamed into ``out`` (python-multipart's parser)."""

    def __init__(self, content_type: str) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise InputError("a multipart upload needs a boundary in its Content-Type")
        self.out = None
        self.filename: str | None = None
        self._state = "before"  # before the file part, in it, after it
        self._header_field = b""
        self._header_value = b""
        self._disposition = b""
        self._parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._begin, "on_header_field": self._field, "on_header_value": self._value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
            "on_part_data": self._data, "on_part_end": self._end})
        self._in_file = False

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except Exception as e:  # python-multipart raises its own errors for malformed bodies
            raise InputError(f"malformed multipart upload ({type(e).__name__})") from None

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except Exception as e:
            raise InputError(f"malformed multipart upload ({type(e).__name__})") from None
        if self.filename is None:
            raise InputError("the multipart upload holds no file (send it as a form field with a file name, e.g. "
                             "curl -F file=@speech.wav)")

    def _begin(self) -> None:
        self._disposition = b""

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_field.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._disposition)
        self._in_file = self._state == "before" and b"filename" in params
        if self._in_file:
            self.filename = params[b"filename"].decode("utf-8", "replace")
            self._state = "in"

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.out.write(data[start:end])

    def _end(self) -> None:
        if self._in_file:
            self._state = "after"
        self._in_file = False
