"""The app's long jobs: renders (speech -> mp4), training (`train_person`) and evaluation (`evaluate`).

- **render** jobs run one at a time, in order, on a thread of the server, with the person models loaded once
  (`Models`); their progress is counted frame by frame, and cancelling one stops it at the next frame.
- **train** and **evaluate** jobs run in a process of their own (spawned, in its own process group), so that
  a cancel is a Ctrl-C (SIGINT: training saves its checkpoint and stops) and the server stays responsive. One
  training at a time (a second is refused); evaluations queue behind each other and run beside training.
  The process writes ``progress.json`` (the stage, and the progress bar of its current step as tqdm reports
  it) and ``result.json`` into the job's folder; the server's monitor thread reads them. The process stops
  (with a checkpoint) if the server goes away.

Every job is recorded in ``WORK/jobs/ID/job.json``. After a restart, jobs that were queued or running are
*interrupted*; ``resume`` runs one again with its recorded parameters (training resumes from its
checkpoints, as `train_person` always does).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import queue
import re
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
import torch

from .. import media
from ..constants import AUDIO_RATE
from ..errors import GeneFaceError, InputError
from ..evaluate import EvalConfig
from ..evaluate import evaluate as evaluate_person
from ..fileio import read_json, write_json
from ..infer.cli_demo import bundled_speech
from ..infer.pipeline import InferConfig
from ..infer.train import TrainConfig, train_person, train_sizes
from ..motion.model import check_audio
from ..synth import speak
from .store import Models, NotFound, Work, new_id

log = logging.getLogger(__name__)

KINDS = ("render", "train", "evaluate")
STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ENDED = ("done", "failed", "cancelled", "interrupted")
RESUMABLE = ("failed", "cancelled", "interrupted")
CONTROLS = ("temperature", "seed", "pose", "blink", "mouth_scale", "smoothing", "side_by_side")
"""The `InferConfig` fields a request may set."""
TRAIN_SETTINGS = ("size", "render_size", "features", "motion_preset", "motion_steps", "render_steps", "sr_steps",
                  "device", "force")
"""The `TrainConfig` fields a request may set."""
TRAIN_STAGES = ("process", "motion", "render", "sr")
"""A training job's stages (``sr`` only when the output is larger than the renderer's: `train_stages`)."""
MAX_TEXT_CHARS = 5000
"""Longest text a render job speaks."""
MAX_EVAL_AUDIO = 8
"""Most unseen-audio files one evaluation takes."""
CANCEL_GRACE_S = 60.0
"""Seconds a cancelled process gets to save its checkpoint before it is killed."""
KEEP_JOBS = 500
"""Jobs listed after a restart (the most recent)."""


class Busy(GeneFaceError):
    """A job that cannot start now (HTTP 409)."""


class _Cancelled(Exception):
    pass


@dataclass
class Job:
    """One job and what the API shows of it (`public`)."""

    id: str
    kind: str
    title: str
    params: dict
    """What the job was asked to do: enough to run it again (`resume`)."""
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    progress: float | None = None
    """0..1, when known"""
    detail: str = ""
    """what it does now (``generator 450/1500 steps``)"""
    eta: float | None = None
    """seconds left of the current step, when known"""
    stages: list = field(default_factory=list)
    """train: [{name, state, step, n, total, left}] for process, motion, render"""
    error: str | None = None
    result: dict = field(default_factory=dict)
    pid: int | None = None
    cancel_at: float | None = None

    def public(self) -> dict:
        d = asdict(self)
        for key in ("params", "pid", "cancel_at"):
            d.pop(key)
        d["resumable"] = self.state in RESUMABLE
        return d


class Jobs:
    """Every job of the app: submit, list, cancel, resume (see the module docstring)."""

    def __init__(self, work: Work, models: Models, device: str, max_speech_seconds: float) -> None:
        self.work = work
        self.models = models
        self.device = device
        self.max_speech_seconds = max_speech_seconds
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._procs: dict[str, multiprocessing.Process] = {}
        self._render_queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._load()
        self._render_thread = threading.Thread(target=self._render_loop, name="geneface-render", daemon=True)
        self._monitor_thread = threading.Thread(target=self._monitor_loop, name="geneface-jobs", daemon=True)
        self._render_thread.start()
        self._monitor_thread.start()

    # --- the API ------------------------------------------------------------------------------------
    def render(self, person: str, controls: dict, audio: str | None = None, text: str | None = None,
               example: bool = False) -> Job:
        """Queue a render of ``person`` saying an upload (``audio``), ``text`` (espeak-ng) or the bundled speech
        (``example``), with the infer ``controls``."""
        self.work.person_path(person)  # exists
        infer_config(controls, self.device)  # valid
        sources = [s for s in (audio is not None, text is not None, example) if s]
        if len(sources) != 1:
            raise InputError("give exactly one of audio (an upload id), text, or example")
        if text is not None:
            check_text(text)
            if shutil.which("espeak-ng") is None:
                raise InputError("typed text needs espeak-ng, which this server does not have (Debian: apt-get "
                                 "install espeak-ng); upload or record the speech instead")
            title = f"{person} says “{text[:40]}{'…' if len(text) > 40 else ''}”"
        elif audio is not None:
            upload, _ = self.work.upload(audio, "audio")
            if upload.seconds > self.max_speech_seconds:
                raise InputError(f"{upload.name} is {upload.seconds:.0f} s long; the limit is "
                                 f"{self.max_speech_seconds:g} s (--max-speech-seconds)")
            title = f"{person} says {upload.name}"
        else:
            title = f"{person} says the example speech"
        job = self._add("render", title, {"person": person, "controls": dict(controls), "audio": audio, "text": text,
                                          "example": example})
        self._render_queue.put(job.id)
        return job

    def train(self, name: str, settings: dict, video: str | None = None, path: str | None = None) -> Job:
        """Start training a new person ``name`` from an uploaded ``video`` or a video file on the server
        (``path``), with the train all ``settings``."""
        out = self.work.new_person_path(name)
        train_stages(train_config(settings))  # the settings and the sizes they give
        if (video is None) == (path is None):
            raise InputError("give the video as an upload id (video) or a file on the server (path), not both")
        if video is not None:
            upload, _ = self.work.upload(video, "video")
            shown = upload.name
        else:
            shown = str(server_video(path))
        if (out / "person.json").exists():
            raise InputError(f"a person named {name} exists already; choose another name")
        self._check_one_training()
        job = self._add("train", f"train {name} from {shown}",
                        {"name": name, "settings": dict(settings), "video": video, "path": path})
        try:
            self._start_process(job)
        except GeneFaceError as e:
            self._end(job, "failed", str(e))
            raise
        return job

    def evaluate(self, person: str, frames: int | None = None, audio: list | None = None) -> Job:
        """Queue an evaluation of ``person`` on its validation frames (the first ``frames``) and uploads."""
        self.work.person_path(person)
        if not self.work.evaluable(person):
            raise InputError(f"{person} has no dataset to evaluate on (the bundled demo person ships without "
                             f"one); evaluate a person trained here or with `geneface train all`")
        EvalConfig(frames=frames)
        audio = list(audio or [])
        if len(audio) > MAX_EVAL_AUDIO:
            raise InputError(f"give at most {MAX_EVAL_AUDIO} audio files to evaluate on")
        for upload_id in audio:
            self.work.upload(upload_id, "audio")
        return self._add("evaluate", f"evaluate {person}", {"person": person, "frames": frames, "audio": audio})

    def get(self, job_id: object) -> Job:
        self.work.job_dir(job_id)  # a well-formed id
        with self._lock:
            job = self._jobs.get(str(job_id))
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def cancel(self, job_id: object) -> Job:
        job = self.get(job_id)
        with self._lock:
            if job.state == "queued":
                self._end(job, "cancelled")
            elif job.state == "running":
                job.cancel_at = job.cancel_at or time.time()
                job.detail = "cancelling"
                proc = self._procs.get(job.id)
                if proc is not None and proc.pid is not None:
                    _signal(proc.pid, signal.SIGINT)
        return job

    def resume(self, job_id: object) -> Job:
        """Run an ended job again with its parameters (training resumes from its checkpoints)."""
        job = self.get(job_id)
        with self._lock:
            if job.state not in RESUMABLE:
                raise Busy(f"job {job.id} is {job.state}; only a failed, cancelled or interrupted job can be resumed")
            job.state, job.error, job.cancel_at = "queued", None, None
            job.progress, job.eta, job.detail = None, None, ""
            job.started = job.finished = None
            self._save(job)
        if job.kind == "render":
            self._render_queue.put(job.id)
        elif job.kind == "train":
            try:
                self._start_process(job)
            except GeneFaceError as e:
                self._end(job, "interrupted", str(e))
                raise
        return job

    def close(self, timeout: float = CANCEL_GRACE_S) -> None:
        """Stop the threads; running processes get a Ctrl-C (a checkpoint) and are marked interrupted."""
        self._stop.set()
        self._render_queue.put(None)
        with self._lock:
            procs = dict(self._procs)
        for proc in procs.values():
            if proc.pid is not None:
                _signal(proc.pid, signal.SIGINT)
        deadline = time.time() + timeout
        for job_id, proc in procs.items():
            proc.join(max(0.0, deadline - time.time()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            job = self._jobs[job_id]
            if job.state == "running":
                self._end(job, "interrupted", "the server stopped; resume to go on")
        with self._lock:
            for job in self._jobs.values():
                if job.state in ("queued", "running"):
                    self._end(job, "interrupted", "the server stopped; resume to go on")
        self._render_thread.join(5)
        self._monitor_thread.join(5)

    # --- records ------------------------------------------------------------------------------------
    def _add(self, kind: str, title: str, params: dict) -> Job:
        job = Job(id=new_id(), kind=kind, title=title, params=params)
        self.work.job_dir(job.id).mkdir(parents=True)
        with self._lock:
            self._jobs[job.id] = job
            self._save(job)
        return job

    def _save(self, job: Job) -> None:
        write_json(self.work.job_dir(job.id) / "job.json", asdict(job))

    def _load(self) -> None:
        found = []
        for path in self.work.jobs.glob("*/job.json"):
            try:
                job = Job(**read_json(path))
            except (OSError, ValueError, TypeError) as e:
                log.warning(f"skipping the unreadable job record {path} ({type(e).__name__})")
                continue
            if job.id != path.parent.name or job.kind not in KINDS or job.state not in STATES:
                continue
            found.append(job)
        found.sort(key=lambda j: j.created)
        for job in found[-KEEP_JOBS:]:
            self._jobs[job.id] = job
            if job.state in ("queued", "running"):
                self._end(job, "interrupted", "the server stopped while it ran; resume to go on")

    def _end(self, job: Job, state: str, error: str | None = None) -> None:
        with self._lock:
            job.state, job.finished, job.pid = state, time.time(), None
            if error is not None:
                job.error = error
            job.eta = None
            job.detail = {"done": "done", "cancelled": "cancelled", "interrupted": "interrupted"}.get(state, "")
            if state == "done":
                job.progress = 1.0
            self._save(job)

    # --- render jobs (a thread) ---------------------------------------------------------------------
    def _render_loop(self) -> None:
        while True:
            job_id = self._render_queue.get()
            if job_id is None or self._stop.is_set():
                return
            job = self._jobs.get(job_id)
            if job is None or job.state != "queued":
                continue
            with self._lock:
                job.state, job.started = "running", time.time()
                self._save(job)
            try:
                self._render(job)
            except _Cancelled:
                self._end(job, "cancelled")
            except GeneFaceError as e:
                self._end(job, "failed", self._scrub(str(e)))
            except Exception as e:  # a bug: logged with its traceback, one line for the user
                log.exception(f"render job {job.id} failed")
                self._end(job, "failed", f"internal error ({type(e).__name__}); the server's log has the details")
            else:
                self._end(job, "done")

    def _render(self, job: Job) -> None:
        p = job.params
        config = infer_config(p["controls"], self.device)
        person_path = self.work.person_path(p["person"])
        job.detail = "reading the speech"
        if p.get("text") is not None:
            samples = check_audio(speak(check_text(p["text"])), "the spoken text")
        elif p.get("audio") is not None:
            upload, path = self.work.upload(p["audio"], "audio")
            samples = check_audio(media.read_audio(path), upload.name)
        else:
            samples = check_audio(media.read_audio(bundled_speech()), "the example speech")
        seconds = len(samples) / AUDIO_RATE
        if seconds > self.max_speech_seconds:
            raise InputError(f"the speech is {seconds:.0f} s long; the limit is {self.max_speech_seconds:g} s "
                             f"(--max-speech-seconds)")
        job.detail = "loading the person model"
        model = self.models.get(person_path)
        out = self.work.job_dir(job.id) / "video.mp4"
        with torch.inference_mode():
            job.detail = "predicting the motion"
            count = model.num_frames(samples)
            c2w = model.poses(config.pose, count)
            offsets = model.landmarks(samples, config)
            t0 = time.perf_counter()
            with media.VideoWriter(out, fps=model.fps, audio=samples) as writer:
                for i, frame in enumerate(model.frames(offsets, c2w, config)):
                    if job.cancel_at is not None or self._stop.is_set():
                        raise _Cancelled
                    writer.write(frame)
                    done = i + 1
                    rate = done / max(time.perf_counter() - t0, 1e-6)
                    job.progress, job.eta = done / count, (count - done) / rate
                    job.detail = f"rendering frame {done} of {count}"
        job.result = {"video": f"/api/jobs/{job.id}/video", "seconds": round(seconds, 3), "frames": count,
                      "size": [int(frame.shape[1]), int(frame.shape[0])], "fps": model.fps}

    # --- train and evaluate jobs (processes) ---------------------------------------------------------
    def _start_process(self, job: Job) -> None:
        with self._lock:
            if job.kind == "train":
                self._check_one_training(job)
            args = self._process_args(job)
            ctx = multiprocessing.get_context("spawn")
            proc = ctx.Process(target=child_main, args=(job.kind, str(self.work.job_dir(job.id)), args, os.getpid()),
                               name=f"geneface-{job.kind}-{job.id}", daemon=False)
            for name in ("progress.json", "result.json"):
                (self.work.job_dir(job.id) / name).unlink(missing_ok=True)
            proc.start()
            self._procs[job.id] = proc
            job.state, job.started, job.pid = "running", time.time(), proc.pid
            job.stages = [{"name": s, "state": "waiting"} for s in args.get("stages", ())]
            job.detail = "starting"
            self._save(job)

    def _check_one_training(self, job: Job | None = None) -> None:
        with self._lock:
            other = [j for j in self._jobs.values() if j.kind == "train" and j.state == "running" and j is not job]
        if other:
            raise Busy(f"one training at a time: {other[0].title} is running; cancel it or wait for it")

    def _process_args(self, job: Job) -> dict:
        """Paths and configs for the job's process, from its recorded parameters (checked again)."""
        p = job.params
        if job.kind == "train":
            video = (self.work.upload(p["video"], "video")[1] if p.get("video") is not None
                     else server_video(p["path"]))
            return {"video": str(video), "out": str(self.work.new_person_path(p["name"])),
                    "settings": dict(p["settings"]), "name": p["name"],
                    "stages": list(train_stages(train_config(p["settings"])))}
        audio = [str(self.work.upload(u, "audio")[1]) for u in p["audio"]]
        return {"person": str(self.work.person_path(p["person"])), "frames": p["frames"], "audio": audio,
                "out": str(self.work.job_dir(job.id) / "eval"), "device": "auto"}

    def _monitor_loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._monitor()
            except Exception:  # never let the monitor die
                log.exception("job monitor")

    def _monitor(self) -> None:
        with self._lock:
            running = [(self._jobs[i], p) for i, p in self._procs.items()]
        for job, proc in running:
            folder = self.work.job_dir(job.id)
            _apply_progress(job, folder / "progress.json")
            if job.cancel_at is not None and proc.is_alive() and time.time() - job.cancel_at > CANCEL_GRACE_S:
                proc.kill()
            if proc.is_alive():
                continue
            proc.join()
            with self._lock:
                self._procs.pop(job.id, None)
            try:
                result = read_json(folder / "result.json")
            except (OSError, ValueError):
                result = None
            if result is None:
                state = "cancelled" if job.cancel_at is not None else "failed"
                self._end(job, state, None if state == "cancelled" else
                          f"the {job.kind} process ended without a result (exit code {proc.exitcode}); resume to "
                          f"go on")
                continue
            job.result = result.get("result") or {}
            if job.kind == "evaluate" and result.get("state") == "done":
                job.result = {"report": f"/api/jobs/{job.id}/report", "files": job.result.get("files", [])}
            _apply_progress(job, folder / "progress.json")
            if result.get("state") == "done":
                for stage in job.stages:
                    stage["state"] = "done"
            self._end(job, str(result.get("state")), result.get("error"))
        # the next evaluation, one at a time
        with self._lock:
            if self._stop.is_set() or any(j.kind == "evaluate" and j.state == "running" for j in self._jobs.values()):
                return
            queued = sorted((j for j in self._jobs.values() if j.kind == "evaluate" and j.state == "queued"),
                            key=lambda j: j.created)
            if queued:
                try:
                    self._start_process(queued[0])
                except GeneFaceError as e:
                    self._end(queued[0], "failed", str(e))

    def _scrub(self, message: str) -> str:
        """A message without the server's folders in it."""
        for root in (str(self.work.root.resolve()), str(self.work.root)):
            if root and root != ".":
                message = message.replace(root, "WORK")
        return message


def infer_config(controls: object, device: str) -> InferConfig:
    """An `InferConfig` from a request's controls (`CONTROLS` only; pose loop or still)."""
    if not isinstance(controls, dict):
        raise InputError("controls must be an object such as {\"temperature\": 0.5}")
    unknown = sorted(set(controls) - set(CONTROLS))
    if unknown:
        raise InputError(f"unknown control {unknown[0]!r}; the controls are {', '.join(CONTROLS)}")
    if controls.get("pose", "loop") not in ("loop", "still"):
        raise InputError(f"pose must be loop or still, got {str(controls['pose'])[:40]!r}")
    if not isinstance(controls.get("side_by_side", False), bool):
        raise InputError("side_by_side must be true or false")
    return InferConfig(**controls, device=device)


def train_config(settings: object) -> TrainConfig:
    """A `TrainConfig` from a request's settings (`TRAIN_SETTINGS` only)."""
    if not isinstance(settings, dict):
        raise InputError("settings must be an object such as {\"size\": 128}")
    unknown = sorted(set(settings) - set(TRAIN_SETTINGS))
    if unknown:
        raise InputError(f"unknown setting {unknown[0]!r}; the settings are {', '.join(TRAIN_SETTINGS)}")
    if not isinstance(settings.get("force", False), bool):
        raise InputError("force must be true or false")
    return TrainConfig(**settings)


def train_stages(config: TrainConfig) -> tuple[str, ...]:
    """The stages a training job with ``config`` goes through (`TRAIN_STAGES`; ``sr`` only with a
    super-resolution stage)."""
    return TRAIN_STAGES if train_sizes(config)[2] is not None else TRAIN_STAGES[:-1]


def check_text(text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError("the text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"the text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    if "\x00" in text:
        raise InputError("the text holds a NUL character")
    return text


def server_video(path: object) -> Path:
    """A video file on the server named by a request: an absolute path to an existing file (it is only read)."""
    if not isinstance(path, str) or not path or "\x00" in path or len(path) > 4096:
        raise InputError("the video path must be an absolute path to a file on the server")
    p = Path(path)
    if not p.is_absolute():
        raise InputError(f"the video path must be absolute, got {path[:80]!r}")
    if not p.is_file():
        raise InputError(f"no video file at {path[:200]}")
    return p


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _apply_progress(job: Job, path: Path) -> None:
    try:
        progress = read_json(path)
    except (OSError, ValueError):
        return
    if not isinstance(progress, dict):
        return
    if job.kind == "train" and isinstance(progress.get("stages"), list):
        job.stages = progress["stages"]
    job.progress = progress.get("progress")
    job.eta = progress.get("left")
    if job.cancel_at is None:
        job.detail = str(progress.get("detail", ""))


# --- inside the job's process ---------------------------------------------------------------------------

BAR = re.compile(r"^\s*(?P<desc>[^:|\r\n]+?):\s+(?:(?P<pct>\d+)%\|[^|]*\|\s*)?(?P<n>\d+)(?:/(?P<total>\d+))?"
                 r"[^\[]*\[(?P<elapsed>[\d:]+)(?:<(?P<left>[\d:?]+))?")
"""A tqdm progress line: ``generator:  45%|####5     | 450/1000 [00:10<00:12, 45.0step/s]``."""
STAGE_OF_LOG = (("== process", "process"), ("== train motion", "motion"), ("== train postnet", "motion"),
                ("== train render", "render"), ("== train sr", "sr"))
"""`train_person`'s log lines that start its stages."""


def child_main(kind: str, folder: str, args: dict, parent: int) -> None:
    """The body of a train or evaluate job's process (spawned by `Jobs`)."""
    os.setpgrp()  # a Ctrl-C in the server's terminal reaches the server only; it stops us with a checkpoint
    job_dir = Path(folder)
    tracker = _Tracker(job_dir / "progress.json", tuple(args.get("stages", ())))
    log_file = open(job_dir / "log.txt", "a", buffering=1)
    for fd in (1, 2):  # what native libraries print goes to the job's log, not the server's terminal
        os.dup2(log_file.fileno(), fd)
    sys.stderr = _BarReader(tracker)
    handler = logging.StreamHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(lambda record: tracker.log(record.getMessage()) or True)
    root = logging.getLogger("geneface")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    state, error, result = "done", None, {}
    try:
        if kind == "train":
            train_person(args["video"], args["out"], train_config(args["settings"]), progress=True)
            result = {"person": args["name"]}
        else:
            evaluate_person(args["person"], args["audio"], args["out"],
                     EvalConfig(frames=args["frames"], device=args["device"], progress=True))
            out = Path(args["out"])
            result = {"files": sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".md", ".png"))}
    except KeyboardInterrupt:
        state = "cancelled"
    except GeneFaceError as e:
        state, error = "failed", str(e)
        root.error(error)
    except BaseException as e:
        state = "failed"
        error = f"internal error ({type(e).__name__}: {str(e)[:200]}); the job's log.txt has the details"
        log_file.write(traceback.format_exc())
    tracker.finish(state == "done")
    write_json(job_dir / "result.json", {"state": state, "error": error, "result": result})
    log_file.close()


def _watch_parent(parent: int) -> None:
    """Stop this process (a Ctrl-C: training saves a checkpoint) once the server that started it is gone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(CANCEL_GRACE_S)
    os._exit(1)


class _Tracker:
    """The progress of a job's process, written to progress.json at most 4 times a second."""

    def __init__(self, path: Path, stages: tuple[str, ...]) -> None:
        self.path = path
        self.stages = [{"name": s, "state": "waiting"} for s in stages]
        self.current: dict | None = None
        self.bar: dict = {}
        self._written = 0.0
        self._lock = threading.Lock()

    def log(self, message: str) -> None:
        for prefix, name in STAGE_OF_LOG:
            if message.startswith(prefix):
                self._enter(name)
        if "is already trained; skipping" in message:
            for prefix, name in (("train motion", "motion"), ("train postnet", "motion"), ("train render", "render"),
                                 ("train sr", "sr")):
                if prefix in message:
                    self._enter(name)
                    self.current["state"] = "skipped"
        self.write(force=True)

    def _enter(self, name: str) -> None:
        for stage in self.stages:
            if stage["name"] != name and stage["state"] == "running":
                _finished(stage)
        stage = next(s for s in self.stages if s["name"] == name)
        if stage is not self.current:
            self.bar = {}  # the previous stage's progress bar
        stage["state"] = "running"
        self.current = stage

    def bar_line(self, line: str) -> None:
        m = BAR.match(line)
        if not m:
            return
        n, total = int(m["n"]), int(m["total"]) if m["total"] else None
        self.bar = {"step": m["desc"].strip(), "n": n, "total": total, "elapsed": _seconds(m["elapsed"]),
                    "left": _seconds(m["left"]) if m["left"] else None}
        if self.current is not None:
            self.current.update(self.bar)
        self.write()

    def write(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._written < 0.25:
            return
        with self._lock:
            self._written = now
            bar = self.bar
            fraction = bar["n"] / bar["total"] if bar.get("total") else None
            if self.stages:
                done = sum(s["state"] in ("done", "skipped") for s in self.stages)
                progress = (done + (fraction or 0.0) if self.current and self.current["state"] == "running"
                            else done) / len(self.stages)
            else:
                progress = fraction
            detail = f"{bar['step']} {bar['n']}/{bar['total']}" if bar.get("total") else bar.get("step", "")
            if self.current is not None:
                detail = f"{self.current['name']}: {detail}" if detail else self.current["name"]
            write_json(self.path, {"stages": self.stages, "progress": progress, "left": bar.get("left"),
                                   "detail": detail})

    def finish(self, done: bool) -> None:
        if done:
            for stage in self.stages:
                if stage["state"] != "skipped":
                    _finished(stage)
        self.write(force=True)


def _finished(stage: dict) -> None:
    """Mark a stage done, its last progress bar full."""
    stage["state"] = "done"
    if stage.get("total"):
        stage["n"] = stage["total"]
    stage["left"] = None


class _BarReader(io.TextIOBase):
    """A stand-in for stderr that reads tqdm's progress lines (split on carriage returns and newlines)."""

    def __init__(self, tracker: _Tracker) -> None:
        self.tracker = tracker
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = re.split(r"[\r\n]", self._pending)
        for line in lines:
            if line.strip():
                self.tracker.bar_line(line)
        if len(self._pending) > 4096:
            self._pending = ""
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            self.tracker.bar_line(self._pending)

    def isatty(self) -> bool:
        return False


def _seconds(text: str | None) -> float | None:
    if not text or "?" in text:
        return None
    total = 0.0
    for part in text.split(":"):
        total = total * 60 + float(part)
    return total

