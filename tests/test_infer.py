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
from geneface.infer.pipeline import InferConfig, PersonModel, infer
from geneface.render.model import RenderModel
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
    # a real rendering: not blank; the head moves with the training clip's poses (--pose loop, the default).
    # That the mouth moves with the speech is checked on the trained demo person below: this tiny renderer
    # (40 steps) has not learnt yet to use its landmark condition.
    stack = np.stack(frames).astype(np.float32)
    assert stack.std() > 10
    assert np.abs(np.diff(stack, axis=0)).mean() > 0.1
    _, (fx0, fy0, fx1, fy1) = _face_boxes(tiny_person, 64)
    outside = np.ones((64, 64), bool)
    outside[fy0:fy1, fx0:fx1] = False
    # (pixels away from the face change too: the head turns and the torso follows; measured 0.48 grey levels
    # per frame, against under 0.05 with --pose still in test_infer_cli)
    assert np.abs(np.diff(stack, axis=0))[:, outside].mean() > 0.25


def _face_boxes(person_dir: Path, size: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(mouth box, face box) (x0, y0, x1, y1) in a ``size`` px frame rendered with the person's first pose (the
    still pose): the 20 mouth points and all 68 points of the mean face, widened by 4 and 12 px."""
    from geneface.constants import MOUTH_68
    from geneface.infer.person import Person, project_landmarks

    person = Person(person_dir)
    pts = project_landmarks(np.zeros((1, 68, 3), np.float32), person.c2w[:1], person.intrinsics, person.stats)[0]
    pts = pts * size / person.size

    def box(p: np.ndarray, pad: int) -> tuple[int, int, int, int]:
        (x0, y0), (x1, y1) = np.floor(p.min(0)).astype(int) - pad, np.ceil(p.max(0)).astype(int) + pad
        return max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)

    return box(pts[MOUTH_68], 4), box(pts, 12)


def test_the_mouth_moves_with_the_speech_and_nothing_else_with_a_still_pose(tmp_path):
    """The trained demo person, --pose still, no blinks: the mouth region changes with the loudness of the
    speech and is still in a silent second; pixels away from the face (background, torso) never change.
    The pose loop cannot pass this: it moves the whole head, in silence too."""
    from geneface.evaluate.metrics import frame_loudness
    from geneface.infer.cli_demo import bundled_person

    person = bundled_person()
    audio = default_speech()[: int(5.3 * media.AUDIO_RATE)].copy()
    silence = (2.0, 3.2)  # seconds
    audio[int(silence[0] * media.AUDIO_RATE): int(silence[1] * media.AUDIO_RATE)] = 0
    media.write_audio(tmp_path / "gap.flac", audio)
    out = infer(person, tmp_path / "gap.flac", tmp_path / "still.mp4",
                InferConfig(pose="still", blink="off", temperature=0.0, device="cpu", batch=8))
    frames = np.stack(_frames(out)).astype(np.float32)
    t, size = len(frames), frames.shape[1]
    (mx0, my0, mx1, my1), (fx0, fy0, fx1, fy1) = _face_boxes(person, size)
    mouth = frames[:, my0:my1, mx0:mx1]
    inside = slice(int((silence[0] + 0.2) * FPS), int((silence[1] - 0.2) * FPS))  # clear of smoothing windows
    # in silence the mouth is still (H.264 reproduces an unchanged frame exactly; measured 0.0)
    still_mouth = np.abs(np.diff(mouth[inside], axis=0)).mean((1, 2, 3))
    assert still_mouth.max() < 0.3, still_mouth
    # while speaking it moves (measured 2.4 grey levels per frame on average)
    speaking = slice(0, int(silence[0] * FPS) - 3)
    assert np.abs(np.diff(mouth[speaking], axis=0)).mean() > 1.0
    # and its distance from the closed mouth of the silence follows the loudness (measured r = 0.78)
    closed = mouth[inside].mean(0)
    away = np.abs(mouth - closed).mean((1, 2, 3))
    loudness = frame_loudness(audio, t, FPS)
    assert np.corrcoef(away, loudness)[0, 1] > 0.5
    # nothing moves away from the face: background and torso pixels are constant up to the codec's noise
    # (measured: 0.17 grey levels from the first, intra-coded frame to the next, then 0.00-0.05)
    outside = np.ones((size, size), bool)
    outside[fy0:fy1, fx0:fx1] = False
    change = np.abs(np.diff(frames, axis=0))[:, outside].mean(axis=(1, 2))
    assert change[1:].max() < 0.15 and change.max() < 0.5, change
    assert (np.abs(frames - frames[0])[:, outside].max(axis=-1) > 20).mean() < 0.002


def _landmark_predictor(person_dir: Path):
    """``(audio, config) -> stabilised offsets [T, 68, 3]`` of the person: `PersonModel.landmarks`."""
    model = PersonModel.load(person_dir, "cpu")
    return model.landmarks


def _shifted_poses(person_dir: Path, size: int, pixels: float) -> np.ndarray:
    """Cameras c2w [3, 4, 4]: the person's first training pose, and that camera moved sideways so that the head
    moves by ``pixels`` px in a ``size`` px frame, one way and the other."""
    from geneface.infer.person import Person

    person = Person(person_dir)
    c2w = person.c2w[0].astype(np.float64)
    depth = np.linalg.inv(c2w)[2, 3]  # the head's origin in front of the camera
    focal = person.intrinsics[0, 0] * size / person.size
    side = c2w[:3, 0] * pixels * depth / focal  # along the camera's x axis
    poses = np.repeat(c2w[None], 3, 0)
    poses[1, :3, 3] += side
    poses[2, :3, 3] -= side
    return poses.astype(np.float32)


OPTIONS = dict(blink="off", temperature=0.0, smoothing=0.0, mouth_scale=1.5, side_by_side=True, device="cpu",
               batch=16)


@pytest.fixture(scope="module")
def options_video(tiny_person, speech, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """`infer` with every option set and a pose file of three cameras: (mp4, the file's c2w [3, 4, 4])."""
    tmp = tmp_path_factory.mktemp("options")
    poses = _shifted_poses(tiny_person, 64, 4.0)
    write_npz(tmp / "pose.npz", c2w=poses)
    out = infer(tiny_person, speech[0], tmp / "sbs.mp4", InferConfig(pose=str(tmp / "pose.npz"), **OPTIONS))
    return out, poses


def test_infer_options_and_side_by_side(tiny_person, speech, options_video):
    import torch

    from geneface.constants import EYES_68, MOUTH_68
    from geneface.infer.person import Person
    from geneface.render import PersonRenderer

    path, audio = speech
    out, poses = options_video
    info = media.probe(out)
    assert (info.width, info.height) == (128, 64)  # frame | landmark panel
    frames = np.stack(_frames(out)).astype(np.float32)
    panel = frames[10, :, 64:]
    assert (panel.max(axis=2) > 200).sum() > 20  # the drawn landmarks

    # the pose file's cameras are used, looped forward and back (0 1 2 1 0 1 2 ...): each frame is the
    # renderer's image at its camera (and clearly not at the other two)
    person = Person(tiny_person)
    predict_landmarks = _landmark_predictor(tiny_person)
    offsets = predict_landmarks(audio, InferConfig(pose="still", **OPTIONS))
    windows = PersonRenderer.windows(torch.from_numpy(offsets))
    renderer = PersonRenderer.load(person.render_dir)
    n = 8
    renders = [renderer.render(torch.from_numpy(np.repeat(poses[k:k + 1], n, 0)), windows[:n]).rgb.numpy() * 255
               for k in range(3)]
    for t, k in enumerate([0, 1, 2, 1, 0, 1, 2, 1]):
        err = [np.abs(frames[t, :, :64] - r[t]).mean() for r in renders]
        assert err[k] < 4.0 and err[k] < 0.6 * min(e for j, e in enumerate(err) if j != k), (t, err)

    # mouth_scale 1.5: the mouth moves 1.5 times as far as with 1 (about its mean; the rest of the face is
    # projected onto the person's landmark subspace with it, so not exactly). On the trained demo person,
    # whose mouth moves visibly (the tiny person's barely does at temperature 0).
    from geneface.infer.cli_demo import bundled_person

    demo = _landmark_predictor(bundled_person())
    d1, d15 = (x[:, MOUTH_68] - x[:, MOUTH_68].mean(0)
               for x in (demo(audio, InferConfig(**{**OPTIONS, "mouth_scale": m})) for m in (1.0, 1.5)))
    assert (d15 * d1).sum() / (d1 * d1).sum() == pytest.approx(1.5, abs=0.1)  # measured 1.45
    assert np.abs(d1).mean() > 0.005  # inter-ocular distances: the mouth does move (measured 0.013)

    # temperature 0 is the generator's mean: the seed changes nothing (with blinks off); at 0.5 it does, and
    # with blinks on it moves only the blinks
    for other_seed in (1, 7):
        assert np.array_equal(predict_landmarks(audio, InferConfig(**{**OPTIONS, "seed": other_seed})),
                              offsets)
    warm = [predict_landmarks(audio, InferConfig(**{**OPTIONS, "temperature": 0.5, "seed": s}))
            for s in (0, 1)]
    assert not np.allclose(warm[0], warm[1])
    blinks = [predict_landmarks(audio, InferConfig(**{**OPTIONS, "blink": "auto", "seed": s}))
              for s in (0, 1)]
    not_eyes = np.setdiff1d(np.arange(68), EYES_68)
    assert np.array_equal(blinks[0][:, not_eyes], blinks[1][:, not_eyes])
    assert not np.array_equal(blinks[0][:, EYES_68], blinks[1][:, EYES_68])


def test_side_by_side_panel_draws_the_landmarks_on_the_face(tiny_person, speech, options_video):
    from geneface.infer.person import Person, project_landmarks
    from geneface.infer.stabilise import pose_track

    out, poses = options_video
    person = Person(tiny_person)
    offsets = _landmark_predictor(tiny_person)(speech[1], InferConfig(pose="still", **OPTIONS))
    t = 10
    c2w = pose_track(poses, t + 1, "loop")[t:t + 1]
    points = project_landmarks(offsets[t:t + 1], c2w, person.intrinsics, person.stats)[0] * 64 / person.size
    panel = _frames(out)[t][:, 64:].max(axis=2)
    ys, xs = np.nonzero(panel > 150)
    assert len(xs) > 20
    assert abs(xs.min() - points[:, 0].min()) < 3 and abs(xs.max() - points[:, 0].max()) < 3
    assert abs(ys.min() - points[:, 1].min()) < 3 and abs(ys.max() - points[:, 1].max()) < 3


def test_infer_cli(tiny_person, speech, tmp_path, capsys):
    path = tmp_path / "speech.wav"  # 2 s: --pose still needs no loop over the training poses
    media.write_audio(path, speech[1][: 2 * media.AUDIO_RATE])
    assert main(["infer", "--person", str(tiny_person), "--audio", str(path), "--out", str(tmp_path / "a.mp4"),
                 "--pose", "still", "--device", "cpu"]) == 0
    assert (tmp_path / "a.mp4").exists() and "wrote" in capsys.readouterr().out
    # --pose still: the head does not move; away from the face (background, torso) no pixel changes
    frames = np.stack(_frames(tmp_path / "a.mp4")).astype(np.float32)
    size = frames.shape[1]
    _, (fx0, fy0, fx1, fy1) = _face_boxes(tiny_person, size)
    outside = np.ones((size, size), bool)
    outside[fy0:fy1, fx0:fx1] = False
    assert 0.2 < outside.mean() < 0.8
    change = np.abs(np.diff(frames, axis=0))[:, outside].mean(axis=(1, 2))
    assert change[1:].max() < 0.15 and change.max() < 0.5, change


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
    assert frames[0].shape == (512, 512, 3)  # 128 px rendered, brought to 512 by its super-resolution network
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


@pytest.mark.slow(reason="a rerun with the same settings training nothing is also test_api.py::"
                          "test_finished_stages_with_other_settings_are_refused_then_forced (train_person, which "
                          "`train all` calls), and the rerun's skip message test_faults.py's kill test")
def test_train_all_then_rerun_skips_finished_stages(synthetic_clip, tmp_path, capsys):
    person = tmp_path / "person"
    argv = ["train", "all", str(synthetic_clip[0]), "--out", str(person), "--size", "64", "--motion-steps", "4",
            "--render-steps", "4", "--device", "cpu"]
    assert main(argv) == 0
    assert "person model written" in capsys.readouterr().err
    weights = {p: p.stat().st_mtime_ns for p in person.rglob("*.safetensors")}
    assert len(weights) >= 3  # syncnet, generator, renderer
    assert main(argv) == 0
    out = capsys.readouterr().err
    assert out.count("is already trained; skipping") == 2
    assert weights == {p: p.stat().st_mtime_ns for p in person.rglob("*.safetensors")}


def test_person_records_its_feature_model(tiny_person, tmp_path):
    from geneface.dataset import PersonDataset
    from geneface.infer.person import Person

    assert Person(tiny_person).feature_model is None
    root = tmp_path / "p"
    root.mkdir()
    Person.write(root, PersonDataset(tiny_person / "data"), feature_kind="hubert", feature_model=tmp_path / "hubert")
    person = Person(root)
    assert person.named_feature_model == (tmp_path / "hubert").resolve()  # recorded ...
    assert person.feature_model is None  # ... but outside the person folder, so only used when named again
    assert person.feature_model_for(tmp_path / "hubert") == tmp_path / "hubert"


# --- training errors -------------------------------------------------------------------------------------
def _render_model_class():
    """The renderer's trainable model class."""
    return RenderModel


TORCH_OOM = "torch.cuda.OutOfMemoryError"


@pytest.mark.parametrize("error", [
    TORCH_OOM,
    "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "RuntimeError: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory",
])
def test_render_training_out_of_memory_is_a_one_line_error(error, tiny_dataset, tmp_path, monkeypatch, capsys):
    import torch

    def exhausted(self, *args, **kwargs):
        if error == TORCH_OOM:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        raise RuntimeError(error.split(": ", 1)[1])

    monkeypatch.setattr(_render_model_class(), "head_loss_dict", exhausted)
    run = tmp_path / "run"
    code = main(["train", "render", "--data", str(tiny_dataset), "--out", str(run), "--size", "64", "--steps", "4",
                 "--rays", "256", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == ("error: out of memory on cpu in head training; use a smaller --size (now 64) or --rays "
                       "(now 256)"), err[-3:]
    assert not any("Traceback" in line for line in err)
    assert not (run / "model.safetensors").exists()  # no finished-looking run


def test_other_runtime_errors_are_not_reported_as_out_of_memory(tiny_dataset, tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(_render_model_class(), "head_loss_dict", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["train", "render", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), "--size", "64",
              "--steps", "4", "--device", "cpu"])
