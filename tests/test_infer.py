"""End to end: a person model + speech -> mp4 (geneface infer), the bundled demo, and infer's bad inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from geneface import media
from geneface.cli import main
from geneface.errors import InputError
from geneface.fileio import write_json, write_npz
from geneface.infer.pipeline import InferConfig, infer
from geneface.synth import default_speech

FPS = 25.0


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """5.3 s of the bundled speech as FLAC: longer than the tiny person's training clip, so the pose loops."""
    audio = default_speech()[: int(5.3 * media.AUDIO_RATE)]
    path = tmp_path_factory.mktemp("speech") / "speech.flac"
    media.write_audio(path, audio)
    return path, media.read_audio(path)


def _frames(path: Path) -> list[np.ndarray]:
    return list(media.read_video(path, fps=FPS))


def _best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 800) -> float:
    """Highest Pearson correlation of a and b over shifts up to ``max_lag`` samples (codec delay)."""
    n = min(len(a), len(b)) - max_lag
    best = -1.0
    for lag in range(-max_lag, max_lag + 1, 4):
        x = a[max(lag, 0): max(lag, 0) + n]
        y = b[max(-lag, 0): max(-lag, 0) + n]
        best = max(best, float(np.corrcoef(x, y)[0, 1]))
    return best


def test_infer_writes_a_synced_playable_mp4(tiny_person, speech, tmp_path):
    path, audio = speech
    out = infer(tiny_person, path, tmp_path / "out.mp4", InferConfig(device="cpu", batch=8))
    info = media.probe(out)
    frames = _frames(out)
    seconds = len(audio) / media.AUDIO_RATE
    assert info.has_audio and info.fps == pytest.approx(FPS)
    assert (info.width, info.height) == (64, 64)  # the size the renderer was trained at
    assert abs(len(frames) / FPS - seconds) <= 1 / FPS
    assert abs(info.duration - seconds) <= 1 / FPS
    decoded = media.read_audio(out)
    assert abs(len(decoded) - len(audio)) / media.AUDIO_RATE <= 1 / FPS
    assert _best_correlation(decoded, audio) > 0.95
    # a real rendering: not blank, and the face moves with the speech
    stack = np.stack(frames).astype(np.float32)
    assert stack.std() > 10
    assert np.abs(np.diff(stack, axis=0)).mean() > 0.1


def test_infer_options_and_side_by_side(tiny_person, speech, tmp_path):
    path, _ = speech
    poses = np.repeat(np.eye(4, dtype=np.float32)[None], 3, 0)
    poses[:] = np.load(tiny_person / "track.npz")["c2w"][:3]
    write_npz(tmp_path / "pose.npz", c2w=poses)
    config = InferConfig(pose=str(tmp_path / "pose.npz"), blink="off", temperature=0.0, smoothing=0.0,
                         mouth_scale=1.5, side_by_side=True, device="cpu", batch=16)
    out = infer(tiny_person, path, tmp_path / "sbs.mp4", config)
    info = media.probe(out)
    assert (info.width, info.height) == (128, 64)  # frame | landmark panel
    frame = _frames(out)[10]
    panel = frame[:, 64:]
    assert (panel.max(axis=2) > 200).sum() > 20  # the drawn landmarks


def test_infer_cli(tiny_person, speech, tmp_path, capsys):
    path, _ = speech
    assert main(["infer", "--person", str(tiny_person), "--audio", str(path), "--out", str(tmp_path / "a.mp4"),
                 "--pose", "still", "--device", "cpu"]) == 0
    assert (tmp_path / "a.mp4").exists() and "wrote" in capsys.readouterr().out


# --- bad input ---------------------------------------------------------------------------------------------
def _expect(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_bad_inputs(tiny_person, speech, tmp_path, capsys):
    path, audio = speech
    base = ["infer", "--person", str(tiny_person), "--device", "cpu"]
    out = ["--out", str(tmp_path / "x.mp4")]
    # audio too short, silent, missing or not audio
    media.write_audio(tmp_path / "short.wav", audio[:1000])
    _expect(capsys, base + ["--audio", str(tmp_path / "short.wav")] + out, "too short")
    media.write_audio(tmp_path / "silent.wav", np.zeros(2 * media.AUDIO_RATE, np.float32))
    _expect(capsys, base + ["--audio", str(tmp_path / "silent.wav")] + out, "silent")
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wave file" * 10)
    _expect(capsys, base + ["--audio", str(tmp_path / "junk.wav")] + out, "not a readable media file")
    # an output path in a missing folder
    _expect(capsys, base + ["--audio", str(path), "--out", str(tmp_path / "nope" / "x.mp4")],
            "output folder does not exist")
    # a pose file of the wrong shape, and one that is not an npz
    write_npz(tmp_path / "pose.npz", c2w=np.zeros((5, 3, 4), np.float32))
    _expect(capsys, base + ["--audio", str(path), "--pose", str(tmp_path / "pose.npz")] + out, "expected [N, 4, 4]")
    (tmp_path / "pose2.npz").write_text("hello")
    _expect(capsys, base + ["--audio", str(path), "--pose", str(tmp_path / "pose2.npz")] + out, "must be an .npz")
    _expect(capsys, base + ["--audio", str(path), "--pose", "wobble"] + out, "--pose must be loop, still")
    assert not (tmp_path / "x.mp4").exists()


def test_unreadable_person_folders(tiny_person, speech, tmp_path, capsys):
    path, _ = speech
    args = ["--audio", str(path), "--out", str(tmp_path / "x.mp4")]
    _expect(capsys, ["infer", "--person", str(tmp_path)] + args, "is not a person model")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_person, broken, ignore=shutil.ignore_patterns("data"))
    (broken / "track.npz").write_bytes(b"garbage")
    _expect(capsys, ["infer", "--person", str(broken)] + args, "track.npz is missing or corrupt")
    (broken / "person.json").write_text("{ not json")
    _expect(capsys, ["infer", "--person", str(broken)] + args, "person.json is corrupt")
    write_json(broken / "person.json", {"format": "geneface-person", "version": 99})
    _expect(capsys, ["infer", "--person", str(broken)] + args, "another format version")


def test_feature_kind_mismatch(tiny_person, speech, tmp_path):
    from geneface.fileio import read_json

    person = tmp_path / "person"
    shutil.copytree(tiny_person, person, ignore=shutil.ignore_patterns("data"))
    meta = read_json(person / "person.json")
    write_json(person / "person.json", {**meta, "features": "whisper"})
    with pytest.raises(InputError, match="uses 'mel' features but the person model says 'whisper'"):
        infer(person, speech[0], tmp_path / "x.mp4", InferConfig(device="cpu"))


# --- the bundled demo ------------------------------------------------------------------------------------
def test_bundled_demo_model_renders(tmp_path, capsys):
    """`geneface demo` with the model kept in the repository and the current code."""
    from geneface.infer.cli_demo import bundled_person, bundled_speech

    person = bundled_person()
    assert sum(f.stat().st_size for f in person.rglob("*") if f.is_file()) < 10e6  # a few MB
    out = tmp_path / "demo" / "output.mp4"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    frames = _frames(out)
    seconds = len(media.read_audio(bundled_speech())) / media.AUDIO_RATE
    assert abs(len(frames) / FPS - seconds) <= 1 / FPS
    # a face is found in the frames, and its mouth opens with the loudness of the speech
    from geneface.face import FaceMesh, mouth_opening

    with FaceMesh() as mesh:
        found = [mesh(frame) for frame in frames]
    assert sum(len(f) > 0 for f in found) >= 0.9 * len(frames)
    opening = np.array([mouth_opening(f[0]) if f else np.nan for f in found])
    audio = media.read_audio(bundled_speech())
    hop = int(media.AUDIO_RATE / FPS)
    loudness = np.array([np.sqrt(np.mean(audio[i * hop:(i + 1) * hop] ** 2)) for i in range(len(frames))])
    ok = np.isfinite(opening)
    assert np.corrcoef(opening[ok], loudness[ok])[0, 1] > 0.3


def test_demo_export_needs_retrain(capsys, tmp_path):
    _expect(capsys, ["demo", "--export", str(tmp_path / "m"), "--out", str(tmp_path / "o.mp4")], "add --retrain")


def test_train_all_then_rerun_skips_finished_stages(synthetic_clip, tmp_path, capsys):
    person = tmp_path / "person"
    argv = ["train", "all", str(synthetic_clip[0]), "--out", str(person), "--size", "64", "--motion-steps", "4",
            "--render-steps", "4", "--device", "cpu"]
    assert main(argv) == 0
    assert "person model written" in capsys.readouterr().out
    weights = {p: p.stat().st_mtime_ns for p in person.rglob("*.safetensors")}
    assert len(weights) >= 3  # syncnet, generator, renderer
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("is already trained; skipping") == 2
    assert weights == {p: p.stat().st_mtime_ns for p in person.rglob("*.safetensors")}


def test_person_records_its_feature_model(tiny_person, tmp_path):
    from geneface.dataset import PersonDataset
    from geneface.infer.person import Person

    assert Person(tiny_person).feature_model is None
    root = tmp_path / "p"
    root.mkdir()
    Person.write(root, PersonDataset(tiny_person / "data"), feature_kind="hubert", feature_model=tmp_path / "hubert")
    assert Person(root).feature_model == (tmp_path / "hubert").resolve()
