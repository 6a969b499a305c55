"""Faults around the happy path: a `train all` killed at a random moment of each stage and run again, Ctrl-C,
a full disk during a checkpoint, two writers on one folder, and person models from someone else.

`make test` runs one kill per stage; `pytest -m slow` runs several seeds of each (the fault matrix)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from geneface import PersonModel
from geneface.cli import main
from geneface.engine import TrainingError
from geneface.errors import InputError
from geneface.fileio import folder_lock, write_json, write_npz
from geneface.infer.person import Person
from geneface.motion.train import MotionTrainConfig, train_motion
from geneface.synth import default_speech

STAGES = ("process", "motion", "postnet", "render")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def prior(tiny_dataset, tmp_path_factory) -> Path:
    """A tiny audio2motion run to adapt with the postnet (`train all --prior`)."""
    out = tmp_path_factory.mktemp("prior") / "run"
    train_motion([tiny_dataset], out, preset_name="tiny", device="cpu", progress=False,
                 config=MotionTrainConfig(syncnet_steps=4, steps=4, batch_size=2, window=16, warmup=1))
    return out


def _argv(clip: Path, out: Path, stage: str, prior: Path) -> list[str]:
    """`train all` sized so that each stage lasts a few seconds on one core."""
    argv = [sys.executable, "-m", "geneface.cli", "train", "all", str(clip), "--out", str(out), "--size", "64",
            "--motion-steps", "60", "--render-steps", "12", "--device", "cpu"]
    return argv + (["--prior", str(prior)] if stage == "postnet" else ["--motion-preset", "tiny"])


def _running(stage: str, out: Path) -> bool:
    """Whether the `train all` writing ``out`` is inside ``stage`` (its files say so)."""
    if stage == "process":
        return (out / "data" / "progress.json").exists() and not (out / "data" / "meta.json").exists()
    run = out / ("motion" if stage in ("motion", "postnet") else "render")
    return run.exists() and not (run / "config.json").exists()


def _kill_inside(argv: list[str], stage: str, out: Path, seed: int, sig: int = signal.SIGKILL
                 ) -> subprocess.CompletedProcess:
    """Start ``argv``, wait until it is inside ``stage``, wait a random moment (seeded), check that it is still
    inside, and send ``sig``."""
    rng = np.random.default_rng(seed)
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not _running(stage, out):
            assert proc.poll() is None, f"ended before {stage}: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, f"never reached {stage}"
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.8)))
        assert _running(stage, out), f"{stage} ended before the kill; make it longer"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _check_person(out: Path) -> None:
    """The person model loads and speaks: frames of the right size and count."""
    model = PersonModel.load(out, "cpu")
    offsets = model.landmarks(default_speech()[:16000])
    frames = list(model.frames(offsets[:5], model.poses("still", 5)))
    assert len(frames) == 5 and frames[0].shape == (64, 64, 3) and np.std(frames[0]) > 5


def _rerun(argv: list[str], out: Path) -> subprocess.CompletedProcess:
    rerun = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not list(out.rglob("train_state")) and (out / "person.json").exists()
    _check_person(out)
    return rerun


def test_killed_in_every_stage_and_interrupted_then_rerun_finishes(synthetic_clip, prior, tmp_path):
    """The small form of the fault matrix: one `train all` killed in processing, interrupted (Ctrl-C) in motion
    training, killed in rendering, then finished by a rerun; one with --prior killed in the postnet."""
    out = tmp_path / "person"
    argv = _argv(synthetic_clip[0], out, "motion", prior)
    assert _kill_inside(argv, "process", out, seed=0).returncode == -signal.SIGKILL
    interrupted = _kill_inside(argv, "motion", out, seed=1, sig=signal.SIGINT)
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    assert "interrupted; rerun the same command to resume" in interrupted.stderr
    assert "Traceback" not in interrupted.stderr
    assert _kill_inside(argv, "render", out, seed=2).returncode == -signal.SIGKILL
    _rerun(argv, out)

    # the person with --prior starts from copies of the finished dataset and renderer (the same clip and render
    # settings, so `train all` skips those stages): its kill and rerun are the postnet's alone
    adapted = tmp_path / "adapted"
    for stage in ("data", "render"):
        shutil.copytree(out / stage, adapted / stage)
    argv = _argv(synthetic_clip[0], adapted, "postnet", prior)
    assert _kill_inside(argv, "postnet", adapted, seed=3).returncode == -signal.SIGKILL
    rerun = _rerun(argv, adapted)
    assert "is already trained; skipping `geneface train render`" in rerun.stderr


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13, 14])
@pytest.mark.parametrize("stage", STAGES)
def test_fault_matrix_sigkill(stage, seed, synthetic_clip, prior, tmp_path):
    """The fault matrix: SIGKILL at a random moment (seeded) of each stage, then a rerun that must finish."""
    out = tmp_path / f"{stage}-{seed}"
    argv = _argv(synthetic_clip[0], out, stage, prior)
    assert _kill_inside(argv, stage, out, seed).returncode == -signal.SIGKILL
    _rerun(argv, out)


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tiny_dataset, tmp_path, monkeypatch, capsys):
    import geneface.weights as weights

    out = tmp_path / "run"
    write = weights.write_bytes
    calls = {"n": 0}

    def full_disk(path, data):
        calls["n"] += 1
        if calls["n"] > 4:  # the second checkpoint (two weight and two optimizer files each)
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data)

    monkeypatch.setattr(weights, "write_bytes", full_disk)
    config = MotionTrainConfig(syncnet_steps=10, steps=10, batch_size=2, window=16, warmup=1, save_every=4)
    with pytest.raises(TrainingError, match=r"disk is full.*previous checkpoint \(syncnet step 4\) is kept"):
        train_motion([tiny_dataset], out, preset_name="tiny", device="cpu", config=config, progress=False)
    state = json.loads((out / "train_state" / "state.json").read_text())
    assert (state["stage"], state["step"]) == ("syncnet", 4)
    monkeypatch.setattr(weights, "write_bytes", write)
    train_motion([tiny_dataset], out, preset_name="tiny", device="cpu", config=config, progress=False)
    assert (out / "config.json").exists() and not (out / "train_state").exists()
    # from the command line it is one line and exit status 2
    calls["n"] = 0
    monkeypatch.setattr(weights, "write_bytes", full_disk)
    code = main(["train", "motion", "--data", str(tiny_dataset), "--out", str(tmp_path / "cli"), "--preset", "tiny",
                 "--syncnet-steps", "10", "--steps", "10", "--batch-size", "2", "--window", "16", "--save-every",
                 "4", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) >= 1 and err[-1].startswith("error: could not write a checkpoint")


# --- one writer per folder --------------------------------------------------------------------------------

def test_a_second_writer_is_refused_at_once_and_a_dead_lock_is_no_obstacle(synthetic_clip, tiny_dataset, prior,
                                                                           tmp_path, capsys):
    out = tmp_path / "person"
    shutil.copytree(tiny_dataset, out / "data")  # the clip processed at 128 px: the writer goes straight to motion
    argv = _argv(synthetic_clip[0], out, "motion", prior)
    argv[argv.index("--size") + 1] = "128"
    first = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not _running("motion", out):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        start = time.monotonic()
        code = main(argv[3:])  # the same `train all` in this process
        err = capsys.readouterr().err
        assert code == 2 and time.monotonic() - start < 5
        assert f"{out} is in use by another geneface process (pid {first.pid})" in err
        stage = ["train", "motion", "--data", str(out / "data"), "--out", str(out / "motion"), "--device", "cpu"]
        assert main(stage) == 2  # the stage's own folder is held too
        assert f"{out / 'motion'} is in use by another geneface process (pid {first.pid})" in capsys.readouterr().err
    finally:
        first.kill()
        first.wait()
    with folder_lock(out):  # the killed holder's lock is gone with it
        pass


def test_readers_do_not_block_each_other(tiny_person, tmp_path):
    speech = tmp_path / "speech.wav"
    from geneface.media import write_audio

    write_audio(speech, default_speech()[:16000])
    procs = [subprocess.Popen([sys.executable, "-m", "geneface.cli", "infer", "--person", str(tiny_person), "--audio",
                               str(speech), "--out", str(tmp_path / f"{k}.mp4"), "--device", "cpu"], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]


# --- person models from someone else ------------------------------------------------------------------------

def _copy(tiny_person: Path, dest: Path) -> Path:

    shutil.copytree(tiny_person, dest, ignore=shutil.ignore_patterns("data"))
    return dest


@pytest.mark.parametrize("key, value", [("motion", "../../etc"), ("motion", "/etc"), ("render", "../render"),
                                        ("render", "x\x00y"), ("motion", 3)])
def test_person_json_cannot_point_outside(tiny_person, tmp_path, key, value):
    root = _copy(tiny_person, tmp_path / "p")
    meta = json.loads((root / "person.json").read_text())
    meta[key] = value
    write_json(root / "person.json", meta)
    with pytest.raises(InputError, match="must be a folder name inside the person model"):
        PersonModel.load(root, "cpu")


def test_symlinks_leaving_the_person_folder_are_refused(tiny_person, tmp_path):
    root = _copy(tiny_person, tmp_path / "p")
    (root / "render" / "model.safetensors").unlink()
    (root / "render" / "model.safetensors").symlink_to("/etc/passwd")
    with pytest.raises(InputError, match="links outside the person model"):
        PersonModel.load(root, "cpu")
    root2 = _copy(tiny_person, tmp_path / "q")

    shutil.move(str(root2 / "motion"), str(tmp_path / "elsewhere"))
    (root2 / "motion").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="links outside the person model"):
        Person(root2)


def test_oversized_or_malformed_track_arrays_are_refused(tiny_person, tmp_path):
    import zipfile

    root = _copy(tiny_person, tmp_path / "p")
    track = dict(np.load(root / "track.npz"))
    with zipfile.ZipFile(root / "track.npz", "w") as z:  # a header that claims 4 GB, and no data
        for key, value in track.items():
            with z.open(f"{key}.npy", "w") as f:
                if key == "pca_basis":
                    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                             "shape": (1 << 22, 204)})
                else:
                    np.lib.format.write_array(f, value)
    with pytest.raises(InputError, match="more than the 256 MB"):
        Person(root)
    write_npz(root / "track.npz", **{**track, "c2w": np.zeros((5, 3, 3), np.float32)})
    with pytest.raises(InputError, match="'c2w' must be finite floats of shape"):
        Person(root)
    write_npz(root / "track.npz", **{**track, "iod": np.array(np.nan, np.float32)})
    with pytest.raises(InputError, match="'iod'"):
        Person(root)


def test_a_feature_model_outside_the_folder_is_not_followed(tiny_person, tmp_path):
    root = _copy(tiny_person, tmp_path / "p")
    meta = json.loads((root / "person.json").read_text())
    write_json(root / "person.json", {**meta, "features": "hubert", "feature_model": "/tmp/someone/hubert"})
    person = Person(root)
    assert person.feature_model is None and person.named_feature_model == Path("/tmp/someone/hubert")
    with pytest.raises(InputError, match="names a feature model outside its folder.*--feature-model"):
        person.feature_model_for(None)
    assert person.feature_model_for("/my/hubert") == Path("/my/hubert")  # the user's own choice is used
    (root / "hubert").mkdir()
    write_json(root / "person.json", {**meta, "features": "hubert", "feature_model": "hubert"})
    assert Person(root).feature_model == root / "hubert"


def test_hubert_weights_load_from_safetensors_only(tmp_path, monkeypatch):
    """A local HuBERT folder with only a pickled checkpoint is refused before transformers would load it."""
    import types

    from geneface.errors import MissingModelError
    from geneface.features import get_extractor

    loads = []
    fake = types.ModuleType("transformers")
    fake.HubertModel = types.SimpleNamespace(from_pretrained=lambda *a, **k: loads.append(a))
    monkeypatch.setitem(sys.modules, "transformers", fake)  # the real package is an optional extra
    folder = tmp_path / "hubert"
    folder.mkdir()
    write_json(folder / "config.json", {"model_type": "hubert"})
    (folder / "pytorch_model.bin").write_bytes(b"a pickle")
    with pytest.raises(MissingModelError, match="safetensors only"):
        get_extractor("hubert", folder)
    assert not loads
