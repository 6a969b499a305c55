"""`corpus prepare`: a folder tree of many speakers' clips -> what motion pretraining needs, in a few packs.

Each clip goes through `geneface.process.track_clip`: the same detect, track, pose, audio and features stages
as ``geneface process``, in memory, so its landmark offsets have exactly the person datasets' definition; only
the arrays motion training reads are kept: ``offsets`` [T, 68, 3], ``pitch`` [2T] and one ``[2T, D]`` array
per feature kind. What `process` would note about a clip (frames without a face, several faces) goes into its
manifest record (``notes``), and so does the audio/video offset it measured and corrected (``av_offset``, as in
a person's meta.json).

Work is split deterministically: ``--shard I/N`` keeps the clips whose path hashes to I (default: the
``RANK``/``WORLD_SIZE`` that ``torchrun`` sets, else a Slurm job array's task), and the worker processes of one
shard are handed clips one at a time, each appending to its own pack. A clip is recorded in the shard's
manifest once its arrays are on disk; a rerun skips recorded clips (a clip whose file changed is redone), so an
interrupted run resumes clip by clip. `prepare_shard` is that per-shard work on its own; the Ray engine
(`geneface.corpus.ray_engine`) runs it as one task per shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing as mp
import os
import time
import warnings
from dataclasses import asdict, dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable, Mapping

import cv2
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .. import media
from ..cliopts import MAX_SIZE, check_config, opt, same_as
from ..constants import FPS
from ..corpusdata import (PACK_DIR, ManifestWriter, PackWriter, is_corpus, latest_records, manifest_path,
                          read_corpus_meta, read_manifest, shard_tag, write_corpus_meta)
from ..errors import GeneFaceError, InputError, NoFaceError
from ..fileio import folder_lock
from ..features import FEATURE_KINDS
from ..features.activity import is_silent, loudness_db, speech_activity
from ..logs import ROOT
from ..process import ProcessConfig, SourceTooSmallError, track_clip

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".mov")
"""Files taken as clips."""
AUDIO_EXTENSIONS = (".wav", ".flac", ".m4a", ".mp3", ".ogg", ".opus", ".aac")
"""An audio file with a clip's name beside it is used as the clip's speech (an audio + video pair)."""


@dataclass
class PrepareConfig:
    """Options of `geneface corpus prepare` that decide what a clip's arrays are (kept in corpus.json: a
    rerun into the same folder must use the same ones)."""

    features: tuple[str, ...] = opt(("mel",), choices=FEATURE_KINDS, metavar="KIND")
    """Audio feature kinds to compute (mel, whisper, hubert; space or comma separated)."""
    feature_model: Path | None = None
    """Model folder for the whisper or hubert features (whisper defaults to the installed package)."""
    track_size: int = opt(256, min=64, max=MAX_SIZE, multiple_of=2)
    """Side of the square face crop the mesh is tracked on, in pixels."""
    crop_scale: float = same_as(ProcessConfig, "crop_scale")
    """Side of the square crop over the detected face-box width (as `geneface process`)."""
    focal_scale: float = same_as(ProcessConfig, "focal_scale")
    """Focal length of the assumed pinhole camera, as a multiple of the crop side (as `geneface process`)."""
    pose_smoothing: float = same_as(ProcessConfig, "pose_smoothing")
    """Gaussian smoothing of the head pose in time, sigma in frames (as `geneface process`)."""
    max_missing: float = opt(0.2, min=0.0, below=1.0)
    """Largest fraction of frames without a face; clips with more are skipped."""
    min_seconds: float = opt(1.0, above=0.0, max=86_400.0)
    """Shorter clips are skipped."""
    max_seconds: float = opt(300.0, above=0.0, max=86_400.0)
    """Longer clips are skipped."""
    min_loudness_range: float = opt(12.0, min=0.0, max=200.0)
    """Clips whose loudness (25 ms windows) varies less than this many dB between quiet and loud parts hold
    no speech (steady noise, a tone) and are skipped; silent clips are always skipped."""
    speaker_depth: int = opt(1, min=0, max=100)
    """Folder levels below ROOT that name the speaker (1: ROOT/SPEAKER/.../clip.mp4)."""

    def __post_init__(self) -> None:
        self.features = tuple(self.features)
        check_config(self)
        if not self.features:
            raise InputError("--features is empty; name at least one kind (mel, whisper, hubert)")
        if len(set(self.features)) != len(self.features):
            raise InputError(f"--features names a kind twice: {','.join(self.features)}")
        if not self.min_seconds <= self.max_seconds:
            raise InputError(f"need --min-seconds <= --max-seconds, got {self.min_seconds:g}, {self.max_seconds:g}")

    def settings(self) -> dict:
        """What a clip's arrays depend on, for corpus.json (the model path only by name)."""
        d = asdict(self)
        d["fps"] = float(FPS)  # every clip is resampled to 25 fps
        d["features"] = list(self.features)
        d["feature_model"] = str(self.feature_model) if self.feature_model is not None else None
        return d


@dataclass(frozen=True)
class ClipItem:
    """A clip found under ROOT."""

    path: str
    """Relative POSIX path of the video (the clip's key)."""
    audio: str | None
    """Relative path of a paired audio file, or None to use the video's own track."""
    speaker: str
    """The first ``speaker_depth`` folders of ``path`` ("" for a clip directly in ROOT)."""


# --- finding and sharding clips ----------------------------------------------------------------

def find_clips(root: Path, speaker_depth: int = 1, exclude: Path | None = None) -> list[ClipItem]:
    """Every video under ``root`` (hidden folders and ``exclude`` left out), sorted by relative path."""
    root = Path(root)
    skip = exclude.resolve() if exclude is not None else None
    items: list[ClipItem] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (skip is None or (here / d).resolve() != skip))
        audio = {}
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() in AUDIO_EXTENSIONS:
                audio.setdefault(stem, name)
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in VIDEO_EXTENSIONS or name.startswith("."):
                continue
            rel = (here / name).relative_to(root).as_posix()
            folders = rel.split("/")[:-1]
            pair = (here / audio[stem]).relative_to(root).as_posix() if stem in audio else None
            items.append(ClipItem(rel, pair, "/".join(folders[:speaker_depth])))
    return sorted(items, key=lambda it: it.path)


def shard_of(path: str, count: int) -> int:
    """The shard (0 .. count-1) of a clip: a stable hash of its relative path, the same on every machine."""
    digest = hashlib.sha1(path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(text: str | None, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``"I/N"`` -> (I, N); None -> the shard the environment (``os.environ`` unless ``environ``) gives: the
    torchrun rank and world size (``RANK``, ``WORLD_SIZE``), else the task of a Slurm job array
    (`slurm_array_shard`), else (0, 1)."""
    if text is None:
        env = os.environ if environ is None else environ
        world = _env_int(env, "WORLD_SIZE", 1)
        if world > 1:
            return _env_int(env, "RANK", 0), world
        return slurm_array_shard(env) or (0, 1)
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--shard {text}: need 0 <= I < N")
    return i, n


def slurm_array_shard(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """The shard of a Slurm job array task, or None outside one: task ``SLURM_ARRAY_TASK_ID`` of an array of
    ``SLURM_ARRAY_TASK_COUNT`` tasks numbered from ``SLURM_ARRAY_TASK_MIN`` by ``SLURM_ARRAY_TASK_STEP``
    (``sbatch --array=0-15``, ``--array=1-16`` and ``--array=0-30:2`` all make shards 0..15 of 16). An array
    whose task numbers are not one such range (``--array=0,3,7``) cannot be mapped: use ``--shard``."""
    if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
        return None
    task, count = _env_int(environ, "SLURM_ARRAY_TASK_ID", 0), _env_int(environ, "SLURM_ARRAY_TASK_COUNT", 1)
    first, step = _env_int(environ, "SLURM_ARRAY_TASK_MIN", 0), _env_int(environ, "SLURM_ARRAY_TASK_STEP", 1)
    index, off_step = divmod(task - first, max(1, step))
    if count < 1 or off_step or not 0 <= index < count:
        raise InputError(f"Slurm array task {task} (of {count}, from {first} by {step}) is not one of a range of "
                         f"task numbers (sbatch --array=0-{count - 1}); give the shard with --shard I/N")
    return index, count


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"environment variable {name}={text!r} is not a whole number") from None


# --- one clip ----------------------------------------------------------------------------------

class _Skip(Exception):
    """The clip is readable but not valid for training."""


def _source_stat(root: Path, item: ClipItem) -> dict:
    out = {}
    for key, rel in (("video", item.path), ("audio", item.audio)):
        if rel is not None:
            st = (root / rel).stat()
            out[key] = [st.st_size, st.st_mtime_ns]
    return out


def _speech_facts(audio: np.ndarray, config: PrepareConfig) -> dict:
    if is_silent(audio):
        raise _Skip("no speech: the audio is silent")
    db = loudness_db(audio)
    spread = float(np.percentile(db, 95) - np.percentile(db, 10))
    if spread < config.min_loudness_range:
        raise _Skip(f"no speech: the loudness varies by only {spread:.1f} dB (steady noise or a tone?)")
    return {"speech": round(float((speech_activity(db) > 0.5).mean()), 4), "loudness_range_db": round(spread, 2)}


def _compute(video: Path, audio_file: Path | None, config: PrepareConfig) -> tuple[dict, dict]:
    """The arrays of one clip and facts about it; raises ``_Skip``, ``NoFaceError`` or ``InputError``."""
    info = media.probe(video)
    if info.duration < config.min_seconds:
        raise _Skip(f"too short: {info.duration:.2f} s (at least {config.min_seconds} s)")
    if info.duration > config.max_seconds:
        raise _Skip(f"too long: {info.duration:.1f} s (at most {config.max_seconds} s)")
    if audio_file is None and not info.has_audio:
        raise InputError("no audio: the video has no audio track and no audio file with its name lies beside it")
    facts = _speech_facts(media.read_audio(audio_file or video), config)

    pcfg = ProcessConfig(size=config.track_size, audio=audio_file, features=config.features,
                         feature_model=config.feature_model, focal_scale=config.focal_scale,
                         crop_scale=config.crop_scale, pose_smoothing=config.pose_smoothing,
                         max_missing=config.max_missing, track_side=config.track_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clip = track_clip(video, pcfg)
    except SourceTooSmallError as e:
        raise _Skip(f"too small: {e.width}x{e.height} (at least {e.minimum} px on the short side are needed to "
                    f"track a face)") from None
    t = clip.num_frames
    if t < config.min_seconds * FPS:
        raise _Skip(f"too short: {t} frames decoded (at least {config.min_seconds} s)")
    facts.update(frames=t, seconds=round(t / FPS, 3), face_found=round(float(clip.found.mean()), 4),
                 av_offset=clip.av_offset)
    if clip.notes:
        facts["notes"] = " ".join(" ".join(clip.notes).split())
    return {"offsets": clip.offsets, "pitch": clip.pitch, **clip.features}, facts


def process_clip(root: Path, item: ClipItem, config: PrepareConfig, pack: PackWriter) -> dict:
    """Prepare one clip into ``pack``; returns its manifest record (never raises for a bad clip)."""
    record: dict = {"path": item.path, "audio": item.audio, "speaker": item.speaker, "status": "ok",
                    "reason": None, "frames": 0}
    start = time.perf_counter()
    try:
        record["source"] = _source_stat(root, item)
        arrays, facts = _compute(root / item.path, root / item.audio if item.audio else None, config)
        record.update(facts)
        span, specs = pack.append(arrays)
        record.update(pack=pack.name, span=span, arrays=specs)
    except _Skip as e:
        record.update(status="skipped", reason=str(e))
    except NoFaceError as e:
        record.update(status="skipped", reason=f"no face: {e}")
    except GeneFaceError as e:
        record.update(status="failed", reason=str(e))
    except Exception as e:  # a bug or a broken file we did not foresee: record it, go on with the others
        record.update(status="failed", reason=f"error: {type(e).__name__}: {e}")
    record["prepare_seconds"] = round(time.perf_counter() - start, 3)
    record["finished"] = time.time()
    return record


# --- worker processes --------------------------------------------------------------------------

def _pack_name(tag: str, worker: int) -> str:
    """A worker's pack, relative to the corpus folder."""
    return f"{PACK_DIR}/{tag}-w{worker:02d}.pack"


def _pack_path(out: Path, tag: str, worker: int) -> Path:
    return out / _pack_name(tag, worker)


def _worker_main(worker: int, root: str, out: str, tag: str, end: int, config: PrepareConfig, conn) -> None:
    """A worker process: prepare the clips the main process sends over ``conn`` (None: stop) into its own
    pack, answering each with its record."""
    cv2.setNumThreads(1)
    root_p, out_p = Path(root), Path(out)
    pack = PackWriter(_pack_path(out_p, tag, worker), end)
    try:
        while True:
            task = conn.recv()
            if task is None:
                break
            conn.send(process_clip(root_p, ClipItem(*task), config, pack))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the main process stopped
        pass
    finally:
        pack.close()
        conn.close()


@contextlib.contextmanager
def _worker_env() -> None:
    """One thread per worker and no progress bars in it (children inherit the environment at start)."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TQDM_DISABLE",
                                             "OMP_WAIT_POLICY")}
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1", OMP_WAIT_POLICY="PASSIVE")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_workers(workers: int, todo: list[ClipItem], root: Path, out: Path, tag: str, ends: dict[str, int],
                 config: PrepareConfig, on_record: Callable[[dict], None]) -> None:
    """Prepare ``todo`` in ``workers`` spawned processes, one clip at a time each (sent over a pipe, so the
    main process always knows which clip a worker holds). A worker that dies is replaced and its clip
    recorded as failed; the rest of the run goes on."""
    ctx = mp.get_context("spawn")
    pending = list(reversed(todo))
    procs: dict = {}
    conns: dict = {}
    inflight: dict[int, ClipItem] = {}

    def start(k: int) -> None:
        parent, child = ctx.Pipe()
        with _worker_env():
            p = ctx.Process(target=_worker_main, name=f"corpus-worker-{k}", daemon=True,
                            args=(k, str(root), str(out), tag, ends.get(_pack_name(tag, k), 0), config, child))
            p.start()
        child.close()
        procs[k], conns[k] = p, parent

    def feed(k: int) -> None:
        if not procs[k].is_alive():  # it died after its last answer: a fresh one appends to the same pack
            procs[k].join()
            conns[k].close()
            start(k)
        item = pending.pop() if pending else None
        if item is not None:
            inflight[k] = item
        try:
            conns[k].send((item.path, item.audio, item.speaker) if item is not None else None)
        except OSError:  # it died just now: the wait below sees it and records the clip
            pass

    def crashed(k: int) -> None:
        item = inflight.pop(k)
        procs[k].join()
        conns[k].close()
        on_record({"path": item.path, "audio": item.audio, "speaker": item.speaker, "status": "failed",
                   "reason": f"worker crashed (exit code {procs[k].exitcode}) while preparing this clip",
                   "frames": 0, "finished": time.time()})
        if pending:
            start(k)
            feed(k)

    try:
        for k in range(workers):
            start(k)
            feed(k)
        while inflight:
            ready = set(wait([conns[k] for k in inflight] + [procs[k].sentinel for k in inflight]))
            for k in list(inflight):
                conn, dead = conns[k], procs[k].sentinel in ready
                if conn in ready or (dead and conn.poll()):
                    try:
                        record = conn.recv()
                    except (EOFError, OSError):
                        crashed(k)
                        continue
                    inflight.pop(k)
                    if record.get("span"):
                        ends[record["pack"]] = max(ends.get(record["pack"], 0), record["span"][1])
                    on_record(record)
                    feed(k)
                elif dead:
                    crashed(k)
        for p in procs.values():
            p.join(timeout=30)
    finally:
        for k, p in procs.items():
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            conns[k].close()


# --- the run -----------------------------------------------------------------------------------

def open_output(out: Path, root: Path, config: PrepareConfig) -> None:
    """Create ``out`` as a corpus, or check that the corpus in it was made with the same settings."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    if out.exists() and any(not p.name.startswith(".") for p in out.iterdir()) and not is_corpus(out):
        raise InputError(f"--out {out} is not empty and is not a prepared corpus; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    if not is_corpus(out):
        write_corpus_meta(out, list(config.features), config.settings(), root)
        return
    meta = read_corpus_meta(out)
    if list(meta["features"]) != list(config.features):
        raise InputError(f"{out} was prepared with --features {','.join(meta['features'])}, but this run asks "
                         f"for {','.join(config.features)}; use the same features, or prepare into another --out")
    have, want = meta.get("settings", {}), config.settings()
    differ = [k for k in want if k not in ("features", "feature_model") and have.get(k) != want[k]]
    if differ:
        listing = ", ".join(f"{k} {have.get(k)} (asked {want[k]})" for k in differ)
        raise InputError(f"{out} was prepared with other settings: {listing}; use the same ones, or prepare "
                         f"into another --out")


def needs_work(root: Path, item: ClipItem, record: dict | None, retry_failed: bool) -> bool:
    """Whether ``item`` is to be prepared, given its newest ``record`` in the corpus (None: never prepared)."""
    if record is None:
        return True
    if record["status"] == "failed" and retry_failed:
        return True
    if record.get("audio") != item.audio:
        return True
    try:
        return record.get("source") != _source_stat(root, item)
    except OSError:
        return True


def check_inputs(root: str | os.PathLike, out: str | os.PathLike, config: PrepareConfig) -> tuple[Path, Path,
                                                                                            list[ClipItem]]:
    """``root`` and ``out`` as paths and every clip under ``root``, after the checks every engine makes first."""
    root, out = Path(root), Path(out)
    if not root.exists():
        raise InputError(f"no such folder: {root}")
    if not root.is_dir():
        raise InputError(f"ROOT must be a folder of clips, got a file: {root}")
    items = find_clips(root, config.speaker_depth, exclude=out)
    if not items:
        raise InputError(f"no video clips ({', '.join(VIDEO_EXTENSIONS)}) in {root} or below it")
    return root, out, items


def pack_ends(manifest: Path) -> dict[str, int]:
    """The bytes of each pack (by name, relative to the corpus) that a shard's manifest accounts for: a writer
    cuts its pack back to them before appending, dropping what an interrupted run left after its last record."""
    ends: dict[str, int] = {}
    if manifest.exists():
        for r in read_manifest(manifest):
            if r.get("span"):
                ends[r["pack"]] = max(ends.get(r["pack"], 0), r["span"][1])
    return ends


def trim_packs(out: Path, index: int, count: int) -> None:
    """Cut every pack of shard I of N back to the bytes its manifest accounts for (as a writer does before it
    appends), so that nothing a dead writer left after its last record stays on disk; the caller holds
    `shard_lock`."""
    ends = pack_ends(manifest_path(out, index, count))
    for path in sorted((out / PACK_DIR).glob(f"{shard_tag(index, count)}-w*.pack")):
        end = ends.get(f"{PACK_DIR}/{path.name}", 0)
        if path.stat().st_size > end:
            PackWriter(path, end).close()


@contextlib.contextmanager
def shard_lock(out: Path, index: int, count: int):
    """Hold shard I of N of corpus ``out`` (its ``.lock-IofN``): one writer per shard's manifest and packs."""
    with folder_lock(out, f".lock-{shard_tag(index, count)}", what=f"shard {index}/{count} of {out}"):
        yield


def prepare_shard(root: Path, out: Path, config: PrepareConfig, todo: list[ClipItem], index: int, count: int, *,
                  workers: int = 1, on_record: Callable[[dict], None] | None = None,
                  on_start: Callable[[ClipItem], None] | None = None) -> None:
    """Prepare ``todo`` (clips of shard ``index`` of ``count``) into corpus ``out``; the caller holds
    `shard_lock`. Each clip's record is appended to the shard's manifest once its arrays are in a pack
    (``IofN-wK.pack``, one per worker process; ``workers`` 1: in this process, pack ``w00``), then passed to
    ``on_record``. ``on_start(item)`` is called before each clip is begun (in this process only, so with
    ``workers`` 1)."""
    tag = shard_tag(index, count)
    mpath = manifest_path(out, index, count)
    ends = pack_ends(mpath)
    with ManifestWriter(mpath) as manifest:
        def record(r: dict) -> None:
            manifest.write(r)
            if on_record is not None:
                on_record(r)

        if todo and (workers == 1 or len(todo) == 1):
            pack = PackWriter(_pack_path(out, tag, 0), ends.get(_pack_name(tag, 0), 0))
            try:
                for item in todo:
                    if on_start is not None:
                        on_start(item)
                    record(process_clip(root, item, config, pack))
            finally:
                pack.close()
        elif todo:
            _run_workers(min(workers, len(todo)), todo, root, out, tag, ends, config, record)


def prepare_corpus(root: str | os.PathLike, out: str | os.PathLike, config: PrepareConfig | None = None, *,
                   workers: int = 1, shard: tuple[int, int] | None = None, retry_failed: bool = False,
                   progress: bool = True) -> dict:
    """Prepare (or resume preparing) the clips under ``root`` that fall in ``shard`` into corpus ``out``.

    ``shard``: (I, N), default :func:`parse_shard` (None). ``workers``: processes (1 works in this process).
    Returns counts: ``clips`` (found in all shards), ``shard_clips``, ``done_before`` (recorded by an earlier
    run and unchanged), ``prepared`` (this run, by status), ``frames``, ``seconds``.
    """
    config = config or PrepareConfig()
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    index, count = shard if shard is not None else parse_shard(None)
    if not (count >= 1 and 0 <= index < count):
        raise InputError(f"shard {index}/{count}: need 0 <= I < N")
    root, out, items = check_inputs(root, out, config)
    mine = [it for it in items if shard_of(it.path, count) == index]
    open_output(out, root, config)
    tag = shard_tag(index, count)
    started = time.perf_counter()
    with shard_lock(out, index, count):
        latest = latest_records(out)
        todo = [it for it in mine if needs_work(root, it, latest.get(it.path), retry_failed)]
        counts = {"ok": 0, "skipped": 0, "failed": 0}
        frames = 0
        bar = tqdm(total=len(todo), desc=f"corpus {tag}", unit="clip", disable=not progress, dynamic_ncols=True)
        above_bar = logging_redirect_tqdm([logging.getLogger(ROOT)])  # log lines go above the bar, not through it
        with contextlib.closing(bar), above_bar:
            def on_record(record: dict) -> None:
                nonlocal frames
                counts[record["status"]] += 1
                frames += int(record.get("frames") or 0) if record["status"] == "ok" else 0
                log_record(record)
                bar.update(1)
                bar.set_postfix(counts, refresh=False)

            prepare_shard(root, out, config, todo, index, count, workers=workers, on_record=on_record)
    return {"clips": len(items), "shard": [index, count], "shard_clips": len(mine),
            "done_before": len(mine) - len(todo), "prepared": counts, "frames": frames,
            "seconds": round(time.perf_counter() - started, 2)}


def log_record(record: dict) -> None:
    """A line in the log for a clip that was skipped or failed (as every engine reports them)."""
    if record["status"] != "ok":
        log.info(f"{record['status']}: {record['path']}: {record['reason']}")
