"""Degraded variants of a synthetic clip (`geneface.synth.degrade`): each transform does what it says, and the
ground truth follows it."""

from __future__ import annotations

import av
import numpy as np
import pytest

from geneface.cli import main
from geneface.constants import AUDIO_RATE, FPS
from geneface.errors import InputError
from geneface.face import LANDMARKS_68, FaceMesh, interocular
from geneface.fileio import read_npz
from geneface.media import probe, read_audio, read_video
from geneface.process.avsync import IN_SYNC_MS, MIN_CONFIDENCE
from geneface.synth import SynthConfig, synthesize
from geneface.synth.degrade import DegradeConfig, degrade, offset_samples, shift_audio, truth_at


@pytest.fixture(scope="module")
def clip30(tmp_path_factory):
    """A 2 s, 128 px clip at 30 fps: (mp4 path, truth)."""
    out = tmp_path_factory.mktemp("clip30") / "clip.mp4"
    truth = synthesize(out, config=SynthConfig(size=128, seconds=2.0, fps=30.0, progress=False))
    return out, read_npz(truth)


def _pts(path) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return np.array([float(f.pts * stream.time_base) for f in container.decode(stream)])


def _frame(path, k: int) -> np.ndarray:
    for i, frame in enumerate(read_video(path)):
        if i == k:
            return frame
    raise AssertionError(f"{path} has fewer than {k + 1} frames")


def test_shift_audio_exact():
    audio = np.arange(10, dtype=np.float32) + 1
    assert shift_audio(audio, 3).tolist() == [4, 5, 6, 7, 8, 9, 10, 0, 0, 0]
    assert shift_audio(audio, -3).tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert shift_audio(audio, 0).tolist() == audio.tolist()
    assert offset_samples(120) == 1920 and offset_samples(-40) == -640


@pytest.mark.parametrize("ms", [120.0, -40.0])
def test_av_offset_shifts_the_audio_by_whole_samples(synthetic_clip, tmp_path, ms):
    """Positive: the audio leads (every sound comes earlier): the new track is the old one moved N samples
    earlier, N = ms * 16 kHz exactly; the video is untouched."""
    src, _ = synthetic_clip
    truth = read_npz(degrade(src, tmp_path / "shifted.mp4", DegradeConfig(av_offset_ms=ms)))
    n = offset_samples(ms)
    assert int(truth["av_offset_samples"]) == n and float(truth["av_offset_ms"]) == pytest.approx(ms)
    a, b = read_audio(src)[: 3 * AUDIO_RATE], read_audio(tmp_path / "shifted.mp4")[: 3 * AUDIO_RATE]
    lags = np.arange(-4000, 4001)
    window = slice(8000, 40000)  # b[i] == a[i + n]: the best lag of b against a is n
    score = [np.dot(b[window], a[window.start + lag : window.stop + lag]) for lag in lags]
    assert lags[int(np.argmax(score))] == n
    assert np.array_equal(_pts(src), _pts(tmp_path / "shifted.mp4"))


def test_portrait_30fps_becomes_25fps_in_process(clip30, tmp_path):
    from geneface.dataset import PersonDataset
    from geneface.process.pipeline import ProcessConfig, process

    src, _ = clip30
    out = tmp_path / "portrait.mp4"
    truth = read_npz(degrade(src, out, DegradeConfig(canvas=(1080, 1920))))
    info = probe(out)
    assert (info.width, info.height) == (1080, 1920) and info.fps == pytest.approx(30.0)
    assert (int(truth["width"]), int(truth["height"])) == (1080, 1920)
    # the square frame fills the width, centred: the mesh scaled by 1080 / 128 and moved down
    scale = 1080 / 128
    np.testing.assert_allclose(truth["mesh"][:, :, 0], clip30[1]["mesh"][:, :, 0] * scale, atol=1e-2)
    np.testing.assert_allclose(truth["mesh"][:, :, 1], clip30[1]["mesh"][:, :, 1] * scale + (1920 - 1080) / 2,
                               atol=1e-2)
    process(out, tmp_path / "data", ProcessConfig(size=64, background_frames=5))
    ds = PersonDataset(tmp_path / "data")
    assert ds.fps == FPS and ds.num_frames == 2.0 * FPS
    assert len(ds.audio()) / AUDIO_RATE == pytest.approx(2.0, abs=0.05)
    # and in sync: the 30 -> 25 fps resampling moves neither against the other, so nothing is shifted (2 s is too
    # short for a confident estimate; the 12 s portrait clip of benchmarks/robustness.py measures it)
    offset = ds.meta["av_offset"]
    assert offset["applied_ms"] == 0, offset
    assert offset["confidence"] < MIN_CONFIDENCE or abs(offset["estimated_ms"]) <= IN_SYNC_MS, offset
    # its landmarks are those of the truth at the dataset's 25 fps times
    gt = truth_at(truth, np.arange(ds.num_frames) / FPS)["mesh"]
    x0, y0, side = ds.meta["crop"]
    gt = (gt[:, :, :2] - [x0, y0]) * (ds.size / side)
    err = np.linalg.norm(ds.landmarks["mesh"][:, :, :2] - gt, axis=-1).mean(-1) / interocular(gt)
    assert err.mean() < 0.08


def test_variable_frame_rate_has_irregular_pts(clip30, tmp_path):
    src, source_truth = clip30
    out = tmp_path / "vfr.mp4"
    truth = read_npz(degrade(src, out, DegradeConfig(drop_frames=0.3, seed=3)))
    pts = _pts(out)
    gaps = np.round(np.diff(pts) * 30).astype(int)  # in 30 fps frame intervals
    assert len(pts) == len(truth["times"]) == round(0.7 * (len(source_truth["times"] if "times" in source_truth
                                                                 else source_truth["mouth_open"]) - 1)) + 1
    assert set(gaps.tolist()) > {1, 2} and gaps.min() >= 1
    np.testing.assert_allclose(pts - pts[0], truth["times"], atol=1e-4)
    # each kept frame's truth is the source's frame at that time
    kept = np.round(truth["times"] * 30).astype(int)
    np.testing.assert_array_equal(truth["mouth_open"], source_truth["mouth_open"][kept])
    # a 25 fps reading shows the frame nearest each time (times off the midpoints between frames: no ties)
    at = truth_at(truth, np.array([0.0, 0.51, 1.01]))["mouth_open"]
    for t, value in zip((0.0, 0.51, 1.01), at):
        assert value == truth["mouth_open"][np.argmin(np.abs(truth["times"] - t))]


def _tracked_error(frame: np.ndarray, mesh: np.ndarray) -> float:
    """Mean distance (in inter-ocular distances) of the 68 tracked points of ``frame`` from ``mesh``."""
    with FaceMesh(video=False) as tracker:
        faces = tracker(frame)
    assert faces, "no face tracked"
    d = np.linalg.norm(faces[0][LANDMARKS_68, :2] - mesh[LANDMARKS_68, :2], axis=-1)
    return float(d.mean() / interocular(mesh[:, :2]))


@pytest.mark.parametrize("config", [DegradeConfig(shake_shift=0.06, shake_deg=6.0, shake_hz=1.0, seed=2),
                                    DegradeConfig(crop=(0.2, 0.2, 0.6, 0.6), canvas=(256, 256)),
                                    DegradeConfig(canvas=(224, 224))],
                         ids=["shake", "head_cut", "source_224"])
def test_truth_landmarks_follow_the_image(synthetic_clip, tmp_path, config):
    src, clean = synthetic_clip
    truth = read_npz(degrade(src, tmp_path / "moved.mp4", config))
    k = int(np.argmax(np.abs(truth["frame_affine"][:, :, 2] - truth["frame_affine"][:, :, 2].mean(0)).sum(1)))
    frame = _frame(tmp_path / "moved.mp4", k)
    assert frame.shape[:2] == (int(truth["height"]), int(truth["width"]))
    moved = truth["mesh"][k]
    assert _tracked_error(frame, moved) < 0.05  # the tracker finds the face where the truth says
    if config.shake_shift > 0:
        # the shake moved it by more than that, and turned the head's roll by the image's rotation
        assert _tracked_error(frame, clean["mesh"][k]) > 0.06
        a = truth["frame_affine"]
        angle = np.rad2deg(np.arctan2(a[:, 1, 0], a[:, 0, 0]))
        roll = truth["euler"][:, 2] - clean["euler"][:, 2]
        np.testing.assert_allclose(roll, angle, atol=0.3)
        assert np.abs(angle).max() > 3


def test_brightness_noise_and_bitrate(synthetic_clip, tmp_path):
    src, _ = synthetic_clip
    base = _frame(src, 12).astype(np.float32)
    degrade(src, tmp_path / "bright.mp4", DegradeConfig(brightness_drift=0.3, drift_seconds=2.0))
    # t = 0.48 s: gain 1 + 0.3 sin(2 pi 0.24) ~ 1.299; the mid-grey pixels scale with it
    bright = _frame(tmp_path / "bright.mp4", 12).astype(np.float32)
    mid = (base > 40) & (base < 180)
    assert np.median(bright[mid] / base[mid]) == pytest.approx(1 + 0.3 * np.sin(2 * np.pi * 12 / 25 / 2), abs=0.03)
    degrade(src, tmp_path / "noisy.mp4", DegradeConfig(noise=10.0, crf=0))
    residual = _frame(tmp_path / "noisy.mp4", 12).astype(np.float32) - base
    assert 6 < residual.std() < 12
    degrade(src, tmp_path / "low.mp4", DegradeConfig(bitrate_kbps=60.0))
    kbps = (tmp_path / "low.mp4").stat().st_size * 8 / 1000 / 4.0
    assert kbps < 150  # video at ~60 kbit/s plus the AAC track


def test_refuses_bad_input(synthetic_clip, tmp_path):
    src, _ = synthetic_clip
    with pytest.raises(InputError, match="crop"):
        DegradeConfig(crop=(0, 0, 0, 1))
    with pytest.raises(InputError, match="--noise"):
        DegradeConfig(noise=-1)
    with pytest.raises(InputError, match="overwrite"):
        degrade(src, src)
    (tmp_path / "plain.mp4").write_bytes(src.read_bytes())
    with pytest.raises(InputError, match="ground truth"):
        degrade(tmp_path / "plain.mp4", tmp_path / "out.mp4")


def test_synth_command_applies_artefacts(tmp_path):
    out = tmp_path / "real.mp4"
    assert main(["synth", "--out", str(out), "--size", "64", "--seconds", "1", "--quiet", "--av-offset-ms", "40",
                 "--canvas", "96", "64", "--drop-frames", "0.2"]) == 0
    truth = read_npz(out.with_name("real.truth.npz"))
    assert int(truth["av_offset_samples"]) == 640 and probe(out).width == 96
    assert len(truth["times"]) == 25 - round(0.2 * 24) and sorted(p.name for p in tmp_path.iterdir()) == ["real.mp4", "real.truth.npz"]
