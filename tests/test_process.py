"""`geneface process` against the synthetic generator's ground truth, resume, and bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from geneface import face, media
from geneface.cli import main
from geneface.dataset import PersonDataset
from geneface.errors import InputError
from geneface.features.mel import f0_hz
from geneface.fileio import read_npz, write_npz
from geneface.process import ProcessConfig, process, split_frame, track_clip
from geneface.process import pipeline
from geneface.process import pose as pose_mod

POSE_TOLERANCE_DEG = 2.0
"""Largest RMS error of yaw, pitch and roll against the generator's truth, after removing the constant
offset between the photo's own pose and the clip's mean pose."""
MOUTH_CORRELATION = 0.9
"""Smallest correlation of the canonical inner-lip gap with the generator's mouth opening."""


def _to_dataset(points: np.ndarray, crop) -> np.ndarray:
    """Source-pixel points [..., 2] -> dataset-frame pixels, for crop (x0, y0, side) and the dataset size."""
    (x0, y0, side), size = crop
    return (points - np.array([x0, y0])) * (size / side)


def test_dataset_layout(tiny_dataset: Path, synthetic_clip):
    ds = PersonDataset(tiny_dataset)
    truth = synthetic_clip[1]
    t = len(truth["euler"])
    assert abs(ds.num_frames - t) <= 1
    assert ds.size == 128 and ds.fps == 25
    assert ds.frame(0).shape == (128, 128, 3) and ds.parsing(0).shape == (128, 128)
    assert ds.background().shape == (128, 128, 3)
    assert ds.landmarks["mesh"].shape == (ds.num_frames, 478, 3)
    assert ds.pose["c2w"].shape == (ds.num_frames, 4, 4)
    assert ds.motion["offsets"].shape == (ds.num_frames, 68, 3)
    assert ds.features("mel").shape[0] == 2 * ds.num_frames
    assert len(ds.audio()) == round(ds.num_frames / 25 * 16000)
    train, val = ds.split("train"), ds.split("val")
    assert len(train) + len(val) == ds.num_frames and val[0] == train[-1] + 1
    # c2w inverts the head-to-camera pose.
    rt = np.eye(4)
    rt[:3, :3], rt[:3, 3] = ds.pose["rotation"][0], ds.pose["translation"][0]
    np.testing.assert_allclose(ds.pose["c2w"][0] @ rt, np.eye(4), atol=1e-4)
    # The canonical shape has the documented scale.
    assert abs(face.interocular(ds.pose["mean_shape"]) - pose_mod.HEAD_IOD) < 1e-3
    meta = json.loads((tiny_dataset / "meta.json").read_text())
    assert meta["version"] == 1 and meta["summary"]["face_found_rate"] > 0.95


def test_pose_matches_truth(tiny_dataset: Path, synthetic_clip):
    truth = synthetic_clip[1]
    est = PersonDataset(tiny_dataset).pose["euler"]
    n = min(len(est), len(truth["euler"]))
    err = (est[:n] - est[:n].mean(0)) - (truth["euler"][:n] - truth["euler"][:n].mean(0))
    rms = np.sqrt((err ** 2).mean(0))
    assert np.all(rms < POSE_TOLERANCE_DEG), f"pose RMS error (yaw, pitch, roll) {rms} deg"
    assert truth["euler"][:n].std(0).max() > 1.0  # the clip does move its head


def test_mouth_tracks_truth(tiny_dataset: Path, synthetic_clip):
    truth = synthetic_clip[1]
    offsets = PersonDataset(tiny_dataset).motion["offsets"]
    gap = offsets[:, 66, 1] - offsets[:, 62, 1]  # inner lower lip minus inner upper lip, vertical
    n = min(len(gap), len(truth["mouth_open"]))
    r = np.corrcoef(gap[:n], truth["mouth_open"][:n])[0, 1]
    assert r > MOUTH_CORRELATION, f"correlation {r:.3f}"


def test_masks_cover_face(tiny_dataset: Path, synthetic_clip):
    truth = synthetic_clip[1]
    ds = PersonDataset(tiny_dataset)
    crop = (ds.meta["crop"], ds.size)
    for i in range(0, ds.num_frames, 10):
        hull = np.zeros((ds.size, ds.size), np.uint8)
        oval = _to_dataset(truth["mesh"][i, face.FACE_OVAL, :2], crop)
        cv2.fillPoly(hull, [np.round(oval).astype(np.int32)], 1)
        hull = cv2.erode(hull, np.ones((3, 3), np.uint8)) > 0
        labels = ds.parsing(i)
        assert (labels[hull] == 1).mean() > 0.97, f"frame {i}"
        # The head does not spill far below the chin.
        chin_y = _to_dataset(truth["mesh"][i, face.CHIN, :2], crop)[1]
        assert (labels[int(chin_y) + ds.size // 8:] == 1).mean() < 0.02
        assert (labels == 2).any()  # some torso


def test_background_matches_photo(tiny_dataset: Path, synthetic_clip):
    truth = synthetic_clip[1]
    ds = PersonDataset(tiny_dataset)
    x0, y0, side = ds.meta["crop"]
    photo = cv2.resize(truth["photo"][y0:y0 + side, x0:x0 + side], (ds.size, ds.size), interpolation=cv2.INTER_AREA)
    static = truth["static_mask"][y0:y0 + side, x0:x0 + side].astype(np.uint8)
    static = cv2.erode(cv2.resize(static, (ds.size, ds.size), interpolation=cv2.INTER_NEAREST), np.ones((5, 5), np.uint8)) > 0
    person = np.zeros_like(static)
    for i in range(ds.num_frames):
        person |= ds.parsing(i) > 0
    person = cv2.dilate(person.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    region = static & ~person
    assert region.mean() > 0.05, "the test needs some visible background"
    diff = np.abs(ds.background().astype(float) - photo.astype(float))[region]
    assert diff.mean() < 4.0, f"mean abs difference {diff.mean():.2f}"


def test_resume_after_deleted_output(tmp_path: Path, synthetic_clip, caplog):
    caplog.set_level(logging.INFO, logger="geneface")
    out = tmp_path / "ds"
    clip = _short_clip(synthetic_clip[0], tmp_path, frames=30)
    config = ProcessConfig(size=96)
    process(clip, out, config)
    before = read_npz(out / "motion.npz")["offsets"]
    meta_before = json.loads((out / "meta.json").read_text())
    (out / "pose.npz").unlink()
    caplog.clear()
    process(clip, out, config)
    log = "\n".join(caplog.messages)
    assert "[pose]" in log and "[masks]" in log and "[detect]" not in log and "[track]" not in log
    np.testing.assert_allclose(read_npz(out / "motion.npz")["offsets"], before, atol=1e-6)
    # Nothing left to do: nothing runs, meta stays.
    caplog.clear()
    process(clip, out, config)
    assert not [m for m in caplog.messages if m.startswith("[")] and "30 frames (1.2 s)" in caplog.messages[0]
    assert json.loads((out / "meta.json").read_text())["num_frames"] == meta_before["num_frames"]


def test_uncovered_median_is_nanmedian_of_the_uncovered_frames():
    """The background's per-pixel median over the frames that show each pixel: odd and even counts (the mean of
    the middle two), a single frame, and pixels no frame shows (NaN), exactly as `np.nanmedian` gives it."""
    from geneface.process.masks import uncovered_median

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 40):
        frames = rng.integers(0, 256, (n, 9, 11, 3), dtype=np.uint8)
        covered = rng.random((n, 9, 11)) < 0.5
        covered[:, 0, :3] = True  # never shown
        covered[-1, 1:] = False  # the last frame shows every pixel below the first row
        masked = np.where(covered[..., None], np.nan, frames.astype(np.float32))
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):  # its all-NaN pixels
            expected = np.nanmedian(masked, axis=0)
        got = uncovered_median(frames, covered)
        assert got.dtype == np.float32 and np.array_equal(got, expected, equal_nan=True)
        assert np.isnan(got[0, :3]).all() and not np.isnan(got[1:]).any()


def test_background_comes_from_training_frames_only(tmp_path: Path):
    """A spot the person covers in every training frame but not in the validation frame is inpainted from its
    surroundings; copying it from the validation frame would leak validation pixels into training."""
    t, size = 11, 64
    config = ProcessConfig(size=size)
    split = split_frame(t, config.val_fraction)
    assert split == 10
    out = tmp_path / "ds"
    (out / "frames").mkdir(parents=True)
    (out / "parsing").mkdir()
    write_npz(out / "detect.npz", num_frames=np.array(t), crop=np.array([0, 0, size]),
              source_shape=np.array([size, size]))  # a crop inside a square frame: no padding
    spot = (slice(24, 40), slice(24, 40))
    for i in range(t):
        frame = np.full((size, size, 3), 100, np.uint8)
        labels = np.zeros((size, size), np.uint8)
        if i < split:
            labels[spot] = 1  # the head covers the spot
        else:
            frame[spot] = 250  # the validation frame shows something else there
        cv2.imwrite(str(out / "frames" / f"{i:06d}.jpg"), frame)
        cv2.imwrite(str(out / "parsing" / f"{i:06d}.png"), labels)
    ctx = pipeline.Context(tmp_path / "clip.mp4", out, config)
    pipeline.step_background(ctx)
    background = cv2.imread(str(out / "background.png")).astype(int)
    assert np.abs(background - 100).max() < 10, f"spot {background[32, 32]}"  # copied from validation: 250
    assert ctx.info["background_inpainted"] > 0


def test_masks_step_rewrites_the_same_masks_and_a_failed_write_keeps_them(tiny_dataset: Path, tmp_path: Path,
                                                                          monkeypatch):
    """The masks step (segmenting on this thread, splitting and writing on another) remakes the dataset's own
    label maps; a mask that cannot be written is an error naming the folder, and the finished masks stay."""
    import shutil

    out = tmp_path / "ds"
    shutil.copytree(tiny_dataset, out)
    ctx = pipeline.Context(tmp_path / "clip.mp4", out, ProcessConfig(size=128))
    shutil.rmtree(out / "parsing")
    pipeline.step_masks(ctx)
    names = sorted(p.name for p in (tiny_dataset / "parsing").iterdir())
    assert sorted(p.name for p in (out / "parsing").iterdir()) == names
    for name in names:
        assert np.array_equal(cv2.imread(str(out / "parsing" / name), cv2.IMREAD_UNCHANGED),
                              cv2.imread(str(tiny_dataset / "parsing" / name), cv2.IMREAD_UNCHANGED))

    write = cv2.imwrite
    monkeypatch.setattr(pipeline.cv2, "imwrite", lambda path, *a: "000040" not in path and write(path, *a))
    with pytest.raises(InputError, match="cannot write masks into"):
        pipeline.step_masks(ctx)
    assert sorted(p.name for p in (out / "parsing").iterdir()) == names  # the earlier masks, untouched


def test_dataset_split_is_the_last_eleventh(tiny_dataset: Path):
    ds = PersonDataset(tiny_dataset)
    s = split_frame(ds.num_frames, 1 / 11)
    assert ds.meta["split"] == {"train": [0, s], "val": [s, ds.num_frames]}
    assert split_frame(22, 1 / 11) == 20 and split_frame(2, 1 / 11) == 1 and split_frame(1, 1 / 11) == 1


def test_track_clip_equals_process(tmp_path: Path, synthetic_clip):
    """`track_clip` (what corpus preparation keeps of a clip) gives exactly the arrays `process` writes."""
    blank = lambda i, f: np.full_like(f, 90) if i == 7 else f
    clip = _short_clip(synthetic_clip[0], tmp_path, frames=20, transform=blank)
    config = ProcessConfig(size=96)
    process(clip, tmp_path / "ds", config)
    ds = PersonDataset(tmp_path / "ds")
    track = track_clip(clip, config)
    assert track.num_frames == ds.num_frames == 20
    assert np.array_equal(track.crop, ds.meta["crop"])
    assert np.array_equal(track.mesh, ds.landmarks["mesh"]) and np.array_equal(track.found, ds.landmarks["found"])
    for key, value in {**track.motion.pose_arrays(), **track.motion.motion_arrays()}.items():
        saved = ds.pose[key] if key in ds.pose else ds.motion[key]
        assert value.dtype == saved.dtype and np.array_equal(value, saved), key
    assert track.offsets is track.motion.offsets and track.offsets.shape == (20, 68, 3)
    assert np.array_equal(track.audio, ds.audio())
    assert list(track.features) == ["mel"] and np.array_equal(track.features["mel"], ds.features("mel"))
    assert np.array_equal(track.pitch, f0_hz(ds.features("mel")).astype(np.float32)) and track.pitch.shape == (40,)
    assert not track.found[7] and track.notes == ["note: no face in 1 frames (frames 7); interpolated"]


# --- bad input ---------------------------------------------------------------------------------------

def _frames(clip: Path, n: int | None = None) -> list[np.ndarray]:
    frames = []
    for f in media.read_video(clip):
        frames.append(f)
        if n and len(frames) == n:
            break
    return frames


def _short_clip(clip: Path, tmp: Path, frames: int = 25, transform=None, name="clip.mp4", fps=25.0,
                audio: np.ndarray | None | bool = True) -> Path:
    src = _frames(clip, frames)
    if transform is not None:
        src = [transform(i, f) for i, f in enumerate(src)]
    if audio is True:
        audio = media.read_audio(clip)[: int(len(src) / fps * 16000)]
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    media.write_video(path, src, fps=fps, audio=audio if audio is not False else None)
    return path


def _cli(capsys, *args) -> tuple[int, str]:
    code = main(["process", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_missing_path(tmp_path, capsys):
    code, text = _cli(capsys, tmp_path / "nope.mp4", "--out", tmp_path / "o")
    assert code == 2 and "no such file" in text
    assert not (tmp_path / "o").exists()


def test_not_a_video(tmp_path, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("these are not frames\n" * 50)
    code, text = _cli(capsys, bad, "--out", tmp_path / "o")
    assert code == 2 and "not a readable media file" in text


def test_corrupt_stream(tmp_path, synthetic_clip, capsys):
    data = synthetic_clip[0].read_bytes()
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(data[: len(data) // 2])
    code, text = _cli(capsys, bad, "--out", tmp_path / "o")
    assert code == 2 and ("corrupt" in text or "not a readable" in text)
    assert not (tmp_path / "o" / "meta.json").exists()


def test_no_audio_track(tmp_path, synthetic_clip, capsys):
    clip = _short_clip(synthetic_clip[0], tmp_path, audio=False)
    code, text = _cli(capsys, clip, "--out", tmp_path / "o")
    assert code == 2 and "no audio track" in text and "--audio" in text
    # --audio supplies it.
    wav = tmp_path / "speech.wav"
    media.write_audio(wav, media.read_audio(synthetic_clip[0]))
    code, text = _cli(capsys, clip, "--out", tmp_path / "o", "--size", 96, "--audio", wav)
    assert code == 0, text
    assert PersonDataset(tmp_path / "o").num_frames == 25


def test_silent_audio_warns(tmp_path, synthetic_clip, capsys):
    clip = _short_clip(synthetic_clip[0], tmp_path, audio=np.zeros(16000, np.float32))
    code, text = _cli(capsys, clip, "--out", tmp_path / "o", "--size", 96)
    assert code == 0 and "silent" in text


def test_no_face_in_most_frames(tmp_path, synthetic_clip, capsys):
    blank = lambda i, f: f if i < 5 else np.full_like(f, 90)
    clip = _short_clip(synthetic_clip[0], tmp_path, frames=25, transform=blank)
    code, text = _cli(capsys, clip, "--out", tmp_path / "o", "--size", 96)
    assert code == 2 and "no face found in 20 of 25 frames" in text and "5-24" in text
    assert not (tmp_path / "o" / "meta.json").exists()


def test_few_frames_without_face_are_interpolated(tmp_path, synthetic_clip, capsys):
    blank = lambda i, f: np.full_like(f, 90) if i in (10, 11, 12) else f
    clip = _short_clip(synthetic_clip[0], tmp_path, frames=25, transform=blank)
    code, text = _cli(capsys, clip, "--out", tmp_path / "o", "--size", 96)
    assert code == 0 and "no face in 3 frames (frames 10-12); interpolated" in text
    lm = read_npz(tmp_path / "o" / "landmarks.npz")
    assert lm["found"].sum() == 22 and not lm["found"][10:13].any()
    mesh = lm["mesh"]  # interpolated frames lie between their neighbours
    assert np.abs(mesh[11] - (mesh[9] + mesh[13]) / 2).max() < 3


def test_several_faces_follow_largest(tmp_path, synthetic_clip, capsys):
    def add_small_face(i, f):
        out = f.copy()
        small = cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2))
        out[-small.shape[0]:, -small.shape[1]:] = small
        return out

    clip = _short_clip(synthetic_clip[0], tmp_path, transform=add_small_face)
    code, text = _cli(capsys, clip, "--out", tmp_path / "o", "--size", 96)
    assert code == 0 and "several faces" in text
    x0, y0, side = json.loads((tmp_path / "o" / "meta.json").read_text())["crop"]
    nose = synthetic_clip[1]["mesh"][0, face.NOSE_TIP, :2]
    assert x0 < nose[0] < x0 + side and y0 < nose[1] < y0 + side


def test_tiny_resolution(tmp_path, synthetic_clip, capsys):
    clip = _short_clip(synthetic_clip[0], tmp_path, frames=5, transform=lambda i, f: cv2.resize(f, (64, 64)))
    code, text = _cli(capsys, clip, "--out", tmp_path / "o")
    assert code == 2 and "64x64" in text and "96 px" in text


@pytest.mark.parametrize("shape", [(1080, 1920), (640, 360)], ids=["huge-landscape", "portrait"])
def test_large_and_portrait_frames(tmp_path, synthetic_clip, capsys, shape):
    h, w = shape

    def place(i, f):
        canvas = np.full((h, w, 3), 200, np.uint8)
        side = min(h, w, f.shape[0] * 2)
        big = cv2.resize(f, (side, side))
        y, x = (h - side) // 2, (w - side) // 2
        canvas[y:y + side, x:x + side] = big
        return canvas

    clip = _short_clip(synthetic_clip[0], tmp_path, frames=15, transform=place)
    code, text = _cli(capsys, clip, "--out", tmp_path / "o", "--size", 96)
    assert code == 0, text
    ds = PersonDataset(tmp_path / "o")
    assert ds.num_frames == 15 and ds.landmarks["found"].all()
    x0, y0, side = ds.meta["crop"]
    assert side <= max(h, w) and ds.valid_mask().any()  # the crop may reach past the edges: test_framing.py


def test_fps_other_than_25_is_refused(tmp_path, synthetic_clip, capsys):
    code = main(["process", str(synthetic_clip[0]), "--out", str(tmp_path / "o"), "--fps", "30"])
    err = capsys.readouterr().err
    assert code == 2 and "--fps must be 25, got 30: datasets are always 25 fps" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_other_frame_rate_is_resampled(tmp_path, synthetic_clip, capsys):
    clip = _short_clip(synthetic_clip[0], tmp_path, frames=30, fps=30.0)  # 1 s at 30 fps
    code, text = _cli(capsys, clip, "--out", tmp_path / "o", "--size", 96)
    assert code == 0, text
    assert PersonDataset(tmp_path / "o").num_frames == 25


def test_unicode_paths_with_spaces(tmp_path, synthetic_clip, capsys):
    folder = tmp_path / "my vidéos ü"
    clip = _short_clip(synthetic_clip[0], folder, frames=10, name="talk ß 1.mp4")
    code, text = _cli(capsys, clip, "--out", folder / "dätaset out", "--size", 96)
    assert code == 0, text
    assert PersonDataset(folder / "dätaset out").frame(3).shape == (96, 96, 3)


def test_incompatible_output_folder(tmp_path, synthetic_clip, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"format": "geneface-dataset", "version": 0}))
    (out / "keep.txt").write_text("precious")
    code, text = _cli(capsys, synthetic_clip[0], "--out", out)
    assert code == 2 and "version" in text
    assert (out / "keep.txt").read_text() == "precious" and len(list(out.iterdir())) == 2
    from geneface.errors import InputError

    with pytest.raises(InputError, match=r"has dataset format version 0, this geneface reads version 1; process "
                                         r"the video again"):
        PersonDataset(out)


def test_unrelated_nonempty_output_folder(tmp_path, synthetic_clip, capsys):
    out = tmp_path / "stuff"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    code, text = _cli(capsys, synthetic_clip[0], "--out", out)
    assert code == 2 and "not empty" in text
