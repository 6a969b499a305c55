"""`corpus prepare --engine ray`: the clips are prepared by Ray tasks on a cluster (one started on this machine
when no address is given), into the same corpus that `prepare_corpus` writes.

The clips left to prepare are split into M shards by the usual hash (`shard_of`; M is ``tasks``, by default the
cluster's CPUs), and each shard is one Ray task that runs `prepare_shard` under the shard's lock, exactly as
``geneface corpus prepare --shard K/M`` would on a machine of its own: manifest ``manifest-KofM.jsonl`` and one
pack ``packs/KofM-w00.pack``, so no two writers ever share a file. ROOT and OUT must be the same paths on every
node (shared storage), and geneface must be installed on every node. Each task tells the driver (through a Ray
queue) which clip it begins and each record it writes; the driver draws the progress bar and logs skipped and
failed clips as the local engine does.

Failures. A task whose worker dies (killed, out of memory, a crash in a decoder, its node lost) is run again by
Ray (`RETRIES` times); the new attempt cuts the shard's pack back to what its manifest accounts for and goes on
after the last recorded clip, so the clip that was being prepared is redone and nothing half-written is ever
read. When the attempts are spent, that clip is recorded as failed (``worker crashed ...``, as ``--workers``
does) and the shard goes on in a new task with its other clips. A rerun resumes as a local run does: any clip
recorded in any manifest and unchanged is skipped, whatever engine or shard count recorded it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from pathlib import Path

import cv2
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..corpusdata import ManifestWriter, latest_records, manifest_path, read_manifest
from ..errors import GeneFaceError, InputError
from ..logs import ROOT
from .prepare import (ClipItem, PrepareConfig, check_inputs, log_record, needs_work, open_output, prepare_shard,
                      shard_lock, shard_of, trim_packs)

log = logging.getLogger(__name__)

RETRIES = 2
"""Times Ray runs a shard's task again after its worker died, before the clip it was on is recorded as failed."""
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TQDM_DISABLE": "1"}
"""Environment of the task workers: one thread each (a task holds one CPU) and no progress bars."""
POLL_SECONDS = 0.5
"""How often the driver looks at the queue of clip reports while no task finishes."""


def import_ray():
    """The ``ray`` module, or a clear error where it is not installed."""
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs the ray package: pip install 'geneface[ray]'") from None
    return ray


# --- in a task ---------------------------------------------------------------------------------

def _shard_task(root: str, out: str, config: PrepareConfig, items: list[ClipItem], index: int, count: int,
                seen: int, reports) -> None:
    """The Ray task of shard ``index`` of ``count``: prepare ``items`` into it, except the clips its manifest
    recorded after its first ``seen`` records (done by an earlier attempt of this task, or recorded as failed by
    the driver). ``reports``: the driver's queue; each put returns once the driver's queue holds it, so when a
    task dies the driver knows the clip it was on."""
    cv2.setNumThreads(1)
    root_p, out_p = Path(root), Path(out)
    with shard_lock(out_p, index, count):
        done = {r["path"] for r in _records_after(out_p, index, count, seen)}
        todo = [it for it in items if it.path not in done]
        prepare_shard(root_p, out_p, config, todo, index, count,
                      on_start=lambda item: reports.put(("start", index, item.path)),
                      on_record=lambda r: reports.put(("record", index, _brief(r))))


def _brief(record: dict) -> dict:
    """What the driver needs of a record (for the progress bar and the log)."""
    return {k: record.get(k) for k in ("path", "status", "reason", "frames")}


def _records_after(out: Path, index: int, count: int, seen: int) -> list[dict]:
    path = manifest_path(out, index, count)
    return list(read_manifest(path))[seen:] if path.exists() else []


# --- the driver --------------------------------------------------------------------------------

@contextlib.contextmanager
def _cluster(ray, address: str | None, num_cpus: int | None):
    """Ray, initialised: as it is if this process already joined a cluster; the cluster at ``address``
    (``auto``: the one ``ray start`` made on this machine); else a new one on this machine (``num_cpus``; it
    needs no network but the loopback). A cluster joined or started here is left (a started one stopped) at the
    end."""
    if ray.is_initialized():
        yield
        return
    try:
        with _ctrl_c_held():  # a cluster stopped while it starts leaves some of its processes behind a while
            if address is None:
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
            else:
                try:
                    ray.init(address=address, logging_level=logging.WARNING)
                except ConnectionError as e:
                    raise InputError(f"--address {address}: no Ray cluster to join ({e}); start one with `ray "
                                     f"start --head` on the head node, or leave --address out to start one "
                                     f"here") from None
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _ctrl_c_held():
    """Hold Ctrl-C (SIGINT) back until the block is over, then raise it (main thread only; an ignored SIGINT
    stays ignored)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) in (
            signal.SIG_IGN, None):
        yield
        return
    pressed: list[bool] = []
    previous = signal.signal(signal.SIGINT, lambda *_: pressed.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def cluster_cpus(ray) -> int:
    """The CPUs of the Ray cluster this process is connected to."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < 1:
        raise InputError("the Ray cluster has no CPUs to run tasks on")
    return cpus


def prepare_corpus_on_ray(root: str | Path, out: str | Path, config: PrepareConfig | None = None, *,
                          address: str | None = None, tasks: int | None = None, num_cpus: int | None = None,
                          retry_failed: bool = False, progress: bool = True) -> dict:
    """Prepare (or resume preparing) every clip under ``root`` into corpus ``out`` with Ray tasks (see the module
    docstring). ``address``: the cluster (None: a new one on this machine with ``num_cpus`` CPUs, default all;
    a process that already called ``ray.init`` uses its cluster). ``tasks``: shards, each one task with its own
    pack (default: the cluster's CPUs). Returns the counts `prepare_corpus` returns (``shard_clips``: every
    clip), and ``tasks`` (shards; 0 when nothing was left to do) and ``crashes`` (clips recorded as failed because
    their worker died)."""
    config = config or PrepareConfig()
    if tasks is not None and tasks < 1:
        raise InputError(f"--ray-tasks must be at least 1, got {tasks}")
    ray = import_ray()
    root, out, items = check_inputs(root, out, config)
    open_output(out, root, config)
    started = time.perf_counter()
    latest = latest_records(out)
    todo = [it for it in items if needs_work(root, it, latest.get(it.path), retry_failed)]
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    frames, count, crashes = 0, 0, 0
    if todo:
        with _cluster(ray, address, num_cpus):
            count = tasks or cluster_cpus(ray)
            shards: dict[int, list[ClipItem]] = {}
            for it in todo:
                shards.setdefault(shard_of(it.path, count), []).append(it)
            seen = {k: len(_records_after(out, k, count, 0)) for k in shards}
            crashes = _run_tasks(ray, root, out, config, shards, count, seen, progress)
            for k in shards:  # the counts from what is on disk, whatever the reports said
                for r in _records_after(out, k, count, seen[k]):
                    counts[r["status"]] += 1
                    frames += int(r.get("frames") or 0) if r["status"] == "ok" else 0
    return {"clips": len(items), "shard": [0, 1], "shard_clips": len(items), "done_before": len(items) - len(todo),
            "prepared": counts, "frames": frames, "seconds": round(time.perf_counter() - started, 2),
            "tasks": count, "crashes": crashes}


def _run_tasks(ray, root: Path, out: Path, config: PrepareConfig, shards: dict[int, list[ClipItem]], count: int,
               seen: dict[int, int], progress: bool) -> int:
    """Run one task per shard until every clip is recorded; returns how many clips were recorded as failed
    because their worker kept dying."""
    from ray.exceptions import RayError, RayTaskError
    from ray.util.queue import Queue

    reports = Queue(actor_options={"num_cpus": 0})
    remote = ray.remote(_shard_task).options(num_cpus=1, max_retries=RETRIES, retry_exceptions=False,
                                             runtime_env={"env_vars": WORKER_ENV})
    running: dict = {}
    on_clip: dict[int, str | None] = {}  # the clip each shard's task has begun and not yet recorded
    reported: set[str] = set()
    idle_deaths = {k: 0 for k in shards}
    crashes = 0
    status = {"ok": 0, "skipped": 0, "failed": 0}
    bar = tqdm(total=sum(len(v) for v in shards.values()), desc=f"corpus ray ({count} tasks)", unit="clip",
               disable=not progress, dynamic_ncols=True)

    def submit(k: int) -> None:
        running[remote.remote(str(root), str(out), config, shards[k], k, count, seen[k], reports)] = k

    def report(record: dict) -> None:
        reported.add(record["path"])
        status[record["status"]] += 1
        log_record(record)
        bar.update(1)
        bar.set_postfix(status, refresh=False)

    def drain() -> None:
        waiting = reports.qsize()
        for kind, k, value in reports.get_nowait_batch(waiting) if waiting else ():
            if kind == "start":
                on_clip[k] = value
            else:
                on_clip[k] = None
                report(value)

    def catch_up(k: int) -> list[dict]:
        """Report the records of shard ``k`` on disk that no report announced; its records of this run."""
        mine = _records_after(out, k, count, seen[k])
        for r in mine:
            if r["path"] not in reported:
                report(_brief(r))
        return mine

    def died(k: int, error: Exception) -> None:
        nonlocal crashes
        drain()  # what the dead task reported is all in the queue by now
        path = on_clip.pop(k, None)
        with shard_lock(out, k, count):
            recorded = {r["path"] for r in catch_up(k)}
            if path is not None and path not in recorded:
                item = next(it for it in shards[k] if it.path == path)
                record = {"path": item.path, "audio": item.audio, "speaker": item.speaker, "status": "failed",
                          "reason": f"worker crashed ({type(error).__name__}, {RETRIES + 1} attempts) while "
                                    f"preparing this clip", "frames": 0, "finished": time.time()}
                with ManifestWriter(manifest_path(out, k, count)) as manifest:
                    manifest.write(record)
                recorded.add(path)
                crashes += 1
                report(_brief(record))
            else:  # it died before it began a clip (or after its last one): a fault of the worker, not a clip
                idle_deaths[k] += 1
                if idle_deaths[k] > RETRIES:
                    raise GeneFaceError(f"the Ray task of shard {k}/{count} keeps failing outside any clip: "
                                        f"{type(error).__name__}: {error}")
            trim_packs(out, k, count)
        if any(it.path not in recorded for it in shards[k]):
            submit(k)

    above_bar = logging_redirect_tqdm([logging.getLogger(ROOT)])
    try:
        with contextlib.closing(bar), above_bar:
            for k in sorted(shards):
                submit(k)
            while running:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
                drain()
                for ref in ready:
                    k = running.pop(ref)
                    try:
                        ray.get(ref)
                    except RayTaskError as e:  # the task raised: a fault of the run (a lock, the disk), not a clip
                        if isinstance(e.cause, GeneFaceError):
                            raise e.cause from None
                        raise
                    except RayError as e:  # its worker died, and Ray's attempts are spent
                        died(k, e)
                    else:
                        drain()
                        catch_up(k)
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    finally:
        reports.shutdown()
    return crashes
