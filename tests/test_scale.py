"""Past one machine: `corpus prepare --engine ray` on a local Ray cluster (the same corpus as one process, a worker
killed mid-clip retried, nothing half-written), shards from a Slurm job array, and `train motion` on two
torchrun "nodes" (one rendezvous on loopback) that lose a node and resume from the last checkpoint.

Every Ray cluster here is local (it needs no network but the loopback) and is stopped at the end of the test
that starts it; the tests check that none of its processes are left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

from corpus_arrays import assert_same, corpus_arrays  # tests/corpus_arrays.py
from geneface.cli import main
from geneface.corpus import Corpus, parse_shard, prepare_corpus, shard_of, slurm_array_shard
from geneface.corpus import ray_engine
from geneface.corpusdata import read_manifest
from geneface.engine import Dist, Launch, RunFolder, backend_for, local_device, stale_store_risk
from geneface.errors import InputError
from geneface.fileio import folder_lock
from geneface.motion.model import RUN_KIND

SPEAKERS, CLIPS, SECONDS = 3, 2, 1.2
FRAMES = round(SECONDS * 25)
ALL = SPEAKERS * CLIPS

KILL_HOOK = """
import os, sys
rules = os.environ.get("GENEFACE_TEST_KILL")
if rules and sys.argv[0].endswith("default_worker.py"):  # Ray's task workers only, not its helper processes
    import geneface.corpus.prepare as prepare
    import geneface.corpusdata as corpusdata
    compute, append, now = prepare._compute, corpusdata.PackWriter.append, {}

    def _compute(video, *args):
        now["clip"] = video.as_posix()
        return compute(video, *args)

    def _append(self, arrays):
        # rules: lines "SUFFIX once|always"; the worker dies after writing part of the clip's bytes
        for line in open(rules).read().splitlines():
            suffix, mode = line.split()
            marker = rules + "." + suffix.replace("/", "_")
            if now.get("clip", "").endswith(suffix) and (mode == "always" or not os.path.exists(marker)):
                open(marker, "a").close()
                self._file.write(b"\\xff" * 5000)
                os.fsync(self._file.fileno())
                os._exit(3)
        return append(self, arrays)

    prepare._compute, corpusdata.PackWriter.append = _compute, _append
"""

NODE_LOSS_HOOK = """
import os
marker = os.environ.get("GENEFACE_TEST_NODE_LOSS")
if marker and os.environ.get("RANK") == "1":
    import geneface.engine.run as run
    save = run.RunFolder.save_state

    def save_state(self, modules, optimizers, state):
        save(self, modules, optimizers, state)
        if state["stage"] == "generator" and state["step"] > 0 and not os.path.exists(marker):
            open(marker, "w").write(str(state["step"]))
            os._exit(9)  # the node is lost right after a checkpoint of the generator

    run.RunFolder.save_state = save_state
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    from geneface.synth.corpus import make_corpus

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not on PATH (synthetic speech is made with it; `make` installs it)")
    root = tmp_path_factory.mktemp("scale") / "clips"
    make_corpus(root, speakers=SPEAKERS, clips_per_speaker=CLIPS, seconds=SECONDS, size=256, seed=0)
    return root


@pytest.fixture(scope="module")
def reference(clips, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scale_ref") / "ref"
    assert prepare_corpus(clips, out, workers=1, progress=False)["prepared"]["ok"] == ALL
    return out


@pytest.fixture(scope="module")
def hooks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "sitecustomize.py").write_text(KILL_HOOK + NODE_LOSS_HOOK)
    return folder


def _ray_processes() -> set[int]:
    """Live processes of the Ray clusters this test process started: any process (an orphan too) with a file open
    in one of their session folders, which Ray names after the driver's pid (/tmp/ray/session_..._PID)."""
    me = os.getpid()
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:  # it ended meanwhile
            continue
        if any(link.split("/session_", 1)[1].split("/", 1)[0].endswith(f"_{me}") for link in links
               if "/session_" in link):
            found.add(int(proc.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # it ended meanwhile
        return ""


def _assert_no_ray_left(seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: _cmdline(pid)[:200] for pid in _ray_processes()}
    assert not left, f"Ray processes were left behind: {left}"


@pytest.fixture(scope="module")
def ray_cluster(hooks, tmp_path_factory):
    """A local Ray cluster of 2 CPUs whose workers load the kill hook (idle until a rule names a clip)."""
    ray = pytest.importorskip("ray")
    rules = tmp_path_factory.mktemp("kill") / "rules"
    rules.write_text("")
    env = {"PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
           "GENEFACE_TEST_KILL": str(rules)}  # the cluster's processes inherit the environment at its start
    with mock.patch.dict(os.environ, env):
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield rules
    finally:
        assert _ray_processes(), "the check for Ray's processes finds none of a running cluster"
        ray.shutdown()
        _assert_no_ray_left()


def _records(out: Path) -> list[dict]:
    """Every clip's newest record, sorted by key, without what differs from run to run."""
    keep = ("path", "audio", "speaker", "status", "reason", "frames", "source", "seconds", "face_found", "speech",
            "loudness_range_db", "notes")
    return [{k: r.get(k) for k in keep} for _, r in sorted(Corpus(out).records.items())]


def _assert_same_corpus(a: Path, b: Path) -> None:
    assert _records(a) == _records(b)
    arrays_a = corpus_arrays(a)
    assert len(arrays_a) == ALL
    assert_same(arrays_a, corpus_arrays(b))


def _assert_nothing_half_written(out: Path) -> None:
    """Every pack ends where the last clip its manifest records ends: no bytes of a dead writer are left."""
    ends: dict[str, int] = {}
    for r in Corpus(out).records.values():
        if r.get("span"):
            ends[r["pack"]] = max(ends.get(r["pack"], 0), r["span"][1])
    for pack in (out / "packs").iterdir():
        assert pack.stat().st_size == ends.get(f"packs/{pack.name}", 0), pack.name


# --- Ray ------------------------------------------------------------------------------------------

def test_ray_engine_prepares_the_same_corpus(clips, reference, tmp_path, capsys):
    """The command line with --engine ray starts its own cluster (2 CPUs), writes the corpus one process
    writes, stops the cluster, and a rerun has nothing left to do."""
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    assert main(["corpus", "prepare", str(clips), "--out", str(out), "--engine", "ray", "--workers", "2"]) == 0
    printed = capsys.readouterr()
    assert f"ray (2 tasks): {ALL} clips; 0 done before; prepared {ALL}: {ALL} ok" in printed.out
    assert "corpus ray (2 tasks)" in printed.err  # the progress bar, fed by the tasks' reports
    _assert_no_ray_left()
    _assert_same_corpus(out, reference)
    _assert_nothing_half_written(out)
    # the layout of two `--shard K/2` runs: a manifest and a pack per shard, each clip in its own shard
    assert sorted(p.name for p in out.glob("manifest-*")) == ["manifest-0of2.jsonl", "manifest-1of2.jsonl"]
    assert sorted(p.name for p in (out / "packs").iterdir()) == ["0of2-w00.pack", "1of2-w00.pack"]
    for k in range(2):
        assert all(shard_of(r["path"], 2) == k for r in read_manifest(out / f"manifest-{k}of2.jsonl"))
    # resume: nothing to do, and no cluster is started for it
    again = ray_engine.prepare_corpus_on_ray(clips, out, progress=False)
    assert again["done_before"] == ALL and sum(again["prepared"].values()) == 0


def test_a_killed_worker_is_retried_and_a_crashing_clip_fails_alone(clips, reference, ray_cluster, tmp_path,
                                                                    monkeypatch, caplog):
    """One worker is killed once while writing a clip: Ray runs its task again and the clip is prepared. Another clip
    kills its worker every time: once the attempts are spent it is recorded as failed and its shard goes on.
    The packs hold no byte of the dead writers, and a rerun with --retry-failed completes the corpus."""
    caplog.set_level("INFO", logger="geneface")
    monkeypatch.setattr(ray_engine, "RETRIES", 1)
    once, always = "speaker0/clip1.mp4", "speaker2/clip0.mp4"
    ray_cluster.write_text(f"{once} once\n{always} always\n")
    out = tmp_path / "killed"
    summary = ray_engine.prepare_corpus_on_ray(clips, out, tasks=2, progress=False)
    assert summary["prepared"] == {"ok": ALL - 1, "skipped": 0, "failed": 1} and summary["crashes"] == 1
    assert Path(f"{ray_cluster}.{once.replace('/', '_')}").exists()  # the first worker was killed indeed
    records = Corpus(out).records
    assert records[once]["status"] == "ok"
    assert records[always]["status"] == "failed"
    assert records[always]["reason"].startswith("worker crashed (") and "2 attempts" in records[always]["reason"]
    assert any(m.startswith(f"failed: {always}: worker crashed") for m in caplog.messages)
    _assert_nothing_half_written(out)
    ok = corpus_arrays(out)
    ref = corpus_arrays(reference)
    assert_same(ok, {p: ref[p] for p in ref if p != always})

    ray_cluster.write_text("")  # the clip is fixed
    again = ray_engine.prepare_corpus_on_ray(clips, out, tasks=2, retry_failed=True, progress=False)
    assert again["prepared"] == {"ok": 1, "skipped": 0, "failed": 0} and again["done_before"] == ALL - 1
    _assert_same_corpus(out, reference)
    _assert_nothing_half_written(out)


def test_ray_engine_refusals(clips, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(InputError, match=r"--engine ray needs the ray package: pip install 'geneface\[ray\]'"):
        ray_engine.prepare_corpus_on_ray(clips, tmp_path / "o")
    assert main(["corpus", "prepare", str(clips), "--out", str(tmp_path / "o"), "--engine", "ray"]) == 2
    assert "pip install 'geneface[ray]'" in capsys.readouterr().err
    for extra, message in ((["--address", "auto"], "--address needs --engine ray"),
                           (["--ray-tasks", "4"], "--ray-tasks needs --engine ray"),
                           (["--engine", "ray", "--shard", "0/2"], "leave --shard out")):
        assert main(["corpus", "prepare", str(clips), "--out", str(tmp_path / "o"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --- Slurm -----------------------------------------------------------------------------------------

def test_slurm_array_picks_the_shard(tmp_path, monkeypatch, capsys):
    assert slurm_array_shard({}) is None
    assert slurm_array_shard({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    # --array=1-16 and --array=0-30:2 number their tasks otherwise; both are shards 0..15 of 16
    assert slurm_array_shard({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "16",
                              "SLURM_ARRAY_TASK_MIN": "1"}) == (0, 16)
    assert slurm_array_shard({"SLURM_ARRAY_TASK_ID": "30", "SLURM_ARRAY_TASK_COUNT": "16",
                              "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2"}) == (15, 16)
    with pytest.raises(InputError, match="give the shard with --shard"):  # --array=0,3,7: not a range
        slurm_array_shard({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0"})
    with pytest.raises(InputError, match="SLURM_ARRAY_TASK_ID='x' is not a whole number"):
        slurm_array_shard({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "3"})
    slurm = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert parse_shard(None, slurm) == (2, 3) and parse_shard("0/5", slurm) == (0, 5)
    assert parse_shard(None, {**slurm, "RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)  # torchrun's ranks come first
    assert parse_shard(None, {"SLURM_JOB_ID": "7"}) == (0, 1)  # a Slurm job that is not an array: all clips

    # the command line in array task 1 of 2 prepares exactly the clips of shard 1 (unreadable ones: quick)
    root = tmp_path / "clips"
    for i in range(8):
        (root / f"s{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"s{i % 2}" / f"c{i}.mp4").write_bytes(b"not a video")
    for k, v in {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0"}.items():
        monkeypatch.setenv(k, v)
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    out = tmp_path / "out"
    assert main(["corpus", "prepare", str(root), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    mine = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.mp4")
                  if shard_of(p.relative_to(root).as_posix(), 2) == 1)
    assert f"shard 1/2: {len(mine)} of 8 clips" in capsys.readouterr().out
    assert [p.name for p in out.glob("manifest-*")] == ["manifest-1of2.jsonl"]
    assert sorted(r["path"] for r in read_manifest(out / "manifest-1of2.jsonl")) == mine


# --- multi-node training ---------------------------------------------------------------------------

def test_rank_and_device_selection(tmp_path):
    assert Launch.from_env({}) == Launch() == Launch.from_env({"WORLD_SIZE": "1", "RANK": "0"})
    two_nodes = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    launch = Launch.from_env(two_nodes)
    assert (launch.rank, launch.world, launch.local_rank, launch.local_world) == (5, 8, 1, 4)
    for bad in ({**two_nodes, "RANK": "8"}, {**two_nodes, "LOCAL_RANK": "4"}, {**two_nodes, "LOCAL_WORLD_SIZE": "9"}):
        with pytest.raises(InputError, match="inconsistent torchrun environment"):
            Launch.from_env(bad)
    with pytest.raises(InputError, match="LOCAL_RANK='a' is not a whole number"):
        Launch.from_env({**two_nodes, "LOCAL_RANK": "a"})
    # global rank 5 is process 1 of its node: it takes that node's second GPU, not GPU 5
    assert local_device(torch.device("cuda"), launch, gpus=4) == torch.device("cuda", 1)
    assert local_device(torch.device("cuda"), launch, gpus=8) == torch.device("cuda", 1)
    with pytest.raises(InputError, match="4 processes on this node .* but 2 CUDA GPUs visible"):
        local_device(torch.device("cuda"), launch, gpus=2)  # never two processes on one GPU
    assert local_device(torch.device("cpu"), launch, gpus=0) == torch.device("cpu")
    assert backend_for(torch.device("cuda", 1)) == "nccl"
    assert backend_for(torch.device("cpu")) == "gloo" and backend_for(torch.device("mps")) == "gloo"
    # torchrun restarts on a rendezvous store shared between them are flagged (and the README's command avoids it)
    shared = {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "3"}
    assert stale_store_risk(shared) and not stale_store_risk({**shared, "TORCHELASTIC_MAX_RESTARTS": "0"})
    assert not stale_store_risk({**shared, "TORCHELASTIC_USE_AGENT_STORE": "False"}) and not stale_store_risk({})
    # every rank must resume from the checkpoint rank 0 sees: a rank whose --out is not the shared folder stops
    class RankOne(Dist):  # rank 1 of 2, whose rank 0 is resuming a checkpoint this rank cannot see
        def barrier(self) -> None:
            pass

        def from_main(self, value):
            return {"stage": "generator", "step": 8}

        def any(self, flag: bool) -> bool:
            return flag

    with pytest.raises(InputError, match="--out must be a folder on storage every node shares"):
        RunFolder(tmp_path / "run", RUN_KIND, RankOne(rank=1, world=2)).begin()
    # a restarted rank 0 waits for the lock a lost process still holds, up to `wait` seconds
    held = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                             f"fd = os.open({str(tmp_path / '.geneface.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                             "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1.5)"],
                            stdout=subprocess.PIPE, text=True)
    assert held.stdout.readline().strip() == "held"
    with pytest.raises(InputError, match="in use by another geneface process"):
        with folder_lock(tmp_path):
            pass
    start = time.monotonic()
    with folder_lock(tmp_path, wait=30):
        assert time.monotonic() - start > 0.3
    held.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_lose_one_and_resume_from_the_checkpoint(reference, hooks, tmp_path):
    """The README's multi-node command on two torchrun agents ("nodes" of one process each, a c10d rendezvous on
    loopback): rank 1's node dies right after a generator checkpoint, torchrun restarts both (--max-restarts),
    every rank resumes from that checkpoint, rank 0 alone writes the run."""
    out, marker = tmp_path / "prior", tmp_path / "lost"
    # a new rendezvous store for each restart (the README's command; `stale_store_risk` says why)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "GENEFACE_TEST_NODE_LOSS": str(marker),
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
           "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")])}
    port = _free_port()
    nodes = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "scale-test",
               "--max-restarts", "1", "--local-addr", "127.0.0.1", "--monitor-interval", "0.5",
               "-m", "geneface.cli", "train", "motion", "--data", str(reference), "--out", str(out),
               "--preset", "tiny", "--syncnet-steps", "4", "--steps", "12", "--save-every", "4", "--batch-size", "4",
               "--window", "16", "--log-every", "2", "--val-speakers", "0.34", "--device", "cpu"]
        nodes.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True))
        if node == 0:
            time.sleep(1.0)  # node 0 hosts the rendezvous store
    try:
        results = [p.communicate(timeout=240) for p in nodes]
    finally:
        for p in nodes:  # a hung run: stop both agents and their workers
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, (_, err) in zip(nodes, results):
        assert p.returncode == 0, err[-3000:]
    stdout = "".join(o for o, _ in results)
    stderr = "".join(e for _, e in results)
    lost_at = int(marker.read_text())  # rank 1 was lost after the checkpoint of this generator step
    assert f"resuming generator training at step {lost_at}" in stderr
    assert stdout.count("metrics:") == 1  # printed by rank 0 only
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["world_size"] == 2 and not (out / "train_state").exists()
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps.count(2) == 2  # syncnet step 2 and generator step 2, each logged once: rank 0 alone writes
