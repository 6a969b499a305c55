"""The synthetic talking-head generator: video, audio, and the exactness of its ground truth."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geneface.cli import main
from geneface.errors import InputError, MissingModelError
from geneface.face import FaceMesh, interocular, mouth_opening
from geneface.media import AUDIO_RATE, read_audio, read_video, write_audio
from geneface.synth import SynthConfig, default_face, default_speech, load_face, prepare, synthesize
from geneface.synth.motion import blinks, head_motion
from geneface.synth.speech import fit_length, mouth_track, speak

SIZE = 128
SECONDS = 3.0
AMPLITUDE = (5.0, 4.0, 3.0)
SILENCE = (1.0, 2.0)  # seconds of the test audio zeroed out
needs_espeak = pytest.mark.espeak  # skipped where espeak-ng is absent (conftest.py)


def _test_audio() -> np.ndarray:
    audio = default_speech()[: int(SECONDS * AUDIO_RATE)].copy()
    audio[int(SILENCE[0] * AUDIO_RATE) : int(SILENCE[1] * AUDIO_RATE)] = 0
    return audio


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """One 3 s, 128 px clip with a silent second in the middle: (Clip, mp4 path, truth dict)."""
    out = tmp_path_factory.mktemp("synth") / "talk é.mp4"
    config = SynthConfig(size=SIZE, seed=1, head_amplitude=AMPLITUDE, progress=False)
    c = prepare(audio=_test_audio(), config=config)
    truth_path = c.write(out)
    assert truth_path.name == "talk é.truth.npz"
    with np.load(truth_path, allow_pickle=False) as data:
        truth = {key: data[key] for key in data.files}
    return c, out, truth


@pytest.fixture(scope="module")
def decoded(clip):
    return list(read_video(clip[1]))


def test_video_and_audio_lengths(clip, decoded):
    _, out, _ = clip
    frames = round(SECONDS * 25)
    assert abs(len(decoded) - frames) <= 1
    assert decoded[0].shape == (SIZE, SIZE, 3)
    audio = read_audio(out)
    assert abs(len(audio) / AUDIO_RATE - SECONDS) < 0.05


def test_truth_shapes(clip):
    _, _, t = clip
    n = round(SECONDS * 25)
    expected = {"mesh": (n, 478, 3), "mesh_head": (n, 478, 3), "neutral": (478, 3), "rotation": (n, 3, 3),
                "translation": (n, 3), "euler": (n, 3), "mouth_open": (n,), "blink": (n,),
                "intrinsics": (3, 3), "static_mask": (SIZE, SIZE), "photo": (SIZE, SIZE, 3)}
    for key, shape in expected.items():
        assert t[key].shape == shape, key
    assert t["static_mask"].dtype == bool and t["photo"].dtype == np.uint8
    assert float(t["fps"]) == 25.0 and int(t["size"]) == SIZE
    assert ((t["blink"] >= 0) & (t["blink"] <= 1)).all()
    np.testing.assert_allclose(t["intrinsics"], [[1.5 * SIZE, 0, SIZE / 2], [0, 1.5 * SIZE, SIZE / 2], [0, 0, 1]])


def test_mouth_follows_audio(clip):
    c, _, t = clip
    mo = t["mouth_open"]
    np.testing.assert_allclose(mo, mouth_opening(t["mesh_head"]), atol=1e-5)
    frame = AUDIO_RATE // 25
    rms = np.sqrt([np.mean(c.audio[k * frame : (k + 1) * frame] ** 2) for k in range(len(mo))])
    # Well inside the silent second (coarticulation smoothing spans ~0.1 s), the lips are closed.
    silent = slice(int((SILENCE[0] + 0.15) * 25), int((SILENCE[1] - 0.15) * 25))
    assert mo[silent].max() < 0.02
    speaking = rms > 0.3 * rms.max()
    assert mo[speaking].mean() > 0.08
    # The opening follows the loudness envelope (measured 0.79 on this clip).
    assert np.corrcoef(mo, rms)[0, 1] > 0.6


def test_static_mask_is_exact(clip, decoded):
    c, _, t = clip
    mask, photo = t["static_mask"], t["photo"]
    assert 0.1 < mask.mean() < 0.9
    centre = t["mesh"][0, 1, :2].astype(int)  # the nose tip moves, so it is never static
    assert not mask[centre[1], centre[0]]
    for image, _, _, _ in c.frames():
        assert np.array_equal(image[mask], photo[mask])
    # After H.264 the static pixels stay close to the photo.
    diff = np.abs(np.stack(decoded).astype(np.int16) - photo.astype(np.int16))[:, mask]
    assert diff.mean() < 3.0


def test_head_pose_within_amplitude(clip):
    _, _, t = clip
    euler, R = t["euler"].astype(np.float64), t["rotation"].astype(np.float64)
    assert (np.abs(euler) <= np.array(AMPLITUDE) + 1e-4).all()
    assert np.abs(euler).max() > 0.5  # it does move
    np.testing.assert_allclose(Rotation.from_matrix(R).as_euler("YXZ", degrees=True), euler, atol=1e-3)
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
    assert np.abs(np.diff(euler, axis=0)).max() < 0.5  # smooth: under half a degree per frame


def test_projection_matches_mesh(clip):
    _, _, t = clip
    K, R, tr = (t[k].astype(np.float64) for k in ("intrinsics", "rotation", "translation"))
    cam = np.einsum("tij,tnj->tni", R, t["mesh_head"].astype(np.float64)) + tr[:, None]
    xy = cam[..., :2] / cam[..., 2:3] * K[0, 0] + K[:2, 2]
    np.testing.assert_allclose(xy, t["mesh"][..., :2], atol=1e-2)
    z = (cam[..., 2] - tr[:, None, 2]) * K[0, 0] / tr[:, None, 2]
    np.testing.assert_allclose(z, t["mesh"][..., 2], atol=1e-2)
    neutral = t["neutral"].astype(np.float64)
    assert interocular(neutral) == pytest.approx(0.3, abs=1e-5)
    np.testing.assert_allclose(neutral.mean(0), 0, atol=1e-5)
    # Head space is the photo's camera frame: the neutral face at the mean translation re-projects
    # onto the photo's face (the photo's own mesh, re-tracked, agrees to a pixel).
    with FaceMesh(video=False) as fm:
        photo_mesh = fm(t["photo"])[0]
    cam0 = neutral + tr.mean(0)
    xy0 = cam0[:, :2] / cam0[:, 2:3] * K[0, 0] + K[:2, 2]
    assert np.abs(xy0 - photo_mesh[:, :2]).mean() < 1.0


def test_mediapipe_retracks_rendered_frames(clip, decoded):
    _, _, t = clip
    with FaceMesh(video=False) as fm:
        for k in range(0, len(decoded), 12):
            faces = fm(decoded[k])
            assert len(faces) == 1, f"no face re-tracked in frame {k}"
            err = np.abs(faces[0][:, :2] - t["mesh"][k, :, :2]).mean()
            assert err < 1.5, f"frame {k}: tracked mesh {err:.2f} px from the ground truth"


def test_longer_than_audio_repeats_speech(tmp_path):
    audio = default_speech()[: AUDIO_RATE]  # 1 s of speech for a 1.6 s clip
    out = tmp_path / "long.mp4"
    truth = synthesize(out, audio=audio, config=SynthConfig(size=SIZE, seconds=1.6, progress=False))
    with np.load(truth) as t:
        assert len(t["mouth_open"]) == 40
    assert abs(len(read_audio(out)) / AUDIO_RATE - 1.6) < 0.05
    filled = fit_length(audio, 2.5, pause=0.5)
    assert len(filled) == int(2.5 * AUDIO_RATE)
    np.testing.assert_array_equal(filled[AUDIO_RATE : int(1.5 * AUDIO_RATE)], 0)  # the pause
    np.testing.assert_array_equal(filled[int(1.5 * AUDIO_RATE) :], audio[: AUDIO_RATE])  # the repeat
    np.testing.assert_array_equal(fit_length(audio, 0.5), audio[: AUDIO_RATE // 2])


def test_spectral_fallback_closes_in_silence():
    audio = _test_audio()
    track = mouth_track(audio, use_phones=False)
    assert track.phones is None
    step = 100  # track values per second
    silent = track.open[int((SILENCE[0] + 0.15) * step) : int((SILENCE[1] - 0.15) * step)]
    assert silent.max() < 0.02
    assert track.open[: int(SILENCE[0] * step)].max() > 0.3
    assert np.abs(track.width).max() <= 1


def test_blinks_and_head_motion_are_seeded():
    b = blinks(25 * 60, 25.0, (2.0, 6.0), 0.2, seed=3)
    starts = np.flatnonzero((b[1:] > 0) & (b[:-1] == 0)) + 1
    assert 9 <= len(starts) <= 30  # one every 2-6 s over a minute
    assert np.diff(starts).min() >= 2 * 25 - 1 and np.diff(starts).max() <= 6 * 25 + 1
    closed = np.diff(np.r_[0, (b > 0).astype(int), 0])
    lengths = np.flatnonzero(closed == -1) - np.flatnonzero(closed == 1)
    assert ((lengths >= 4) & (lengths <= 6)).all()
    assert b.max() == 1.0
    e1, _ = head_motion(500, 25.0, AMPLITUDE, 0.25, 0.01, seed=3)
    e2, _ = head_motion(500, 25.0, AMPLITUDE, 0.25, 0.01, seed=3)
    np.testing.assert_array_equal(e1, e2)
    assert (np.abs(e1) <= AMPLITUDE).all()


def test_bad_inputs(tmp_path, caplog):
    with pytest.raises(InputError, match="no such file"):
        load_face(tmp_path / "missing.png")
    (tmp_path / "not an image.png").write_text("hello")
    with pytest.raises(InputError, match="not a readable image"):
        load_face(tmp_path / "not an image.png")
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="no face"):
        prepare(face=noise, config=SynthConfig(size=SIZE, progress=False))
    with pytest.raises(InputError):
        SynthConfig(size=127)
    with pytest.raises(InputError, match=".mp4"):
        synthesize(tmp_path / "out.avi", config=SynthConfig(size=SIZE, progress=False))
    # Silent audio: a warning, and the lips stay closed.
    with caplog.at_level("WARNING", logger="geneface"):
        clip = prepare(audio=np.zeros(AUDIO_RATE, np.float32), config=SynthConfig(size=SIZE, progress=False))
    assert "the audio is silent" in caplog.text
    assert clip.jaw_open.max() == 0


def test_cli(tmp_path, monkeypatch, capsys):
    assert main(["synth", "--face", str(tmp_path / "missing.png"), "--out", str(tmp_path / "a.mp4")]) == 2
    assert "no such file" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(MissingModelError, match="espeak-ng"):
        speak("hello")


def test_cli_audio_file(tmp_path, capsys):
    wav = tmp_path / "speech.flac"
    write_audio(wav, default_speech()[: AUDIO_RATE])
    out = tmp_path / "cli.mp4"
    code = main(["synth", "--audio", str(wav), "--out", str(out), "--size", str(SIZE), "--quiet"])
    assert code == 0
    printed = capsys.readouterr()
    assert "warning" not in printed.err  # a speaking clip gets no warning
    assert out.exists() and (tmp_path / "cli.truth.npz").exists()
    assert "25 frames" in printed.out


@needs_espeak
def test_speak_text():
    audio = speak("Hello there.")
    assert audio.dtype == np.float32 and 0.5 < len(audio) / AUDIO_RATE < 3
    assert np.abs(audio).max() > 0.05


def test_default_face_and_speech():
    face = default_face()
    assert face.shape == (512, 512, 3) and face.dtype == np.uint8
    speech = default_speech()
    assert speech.dtype == np.float32 and speech.ndim == 1
    assert 8 <= len(speech) / AUDIO_RATE <= 12


def _truth(video) -> dict:
    with np.load(video.with_name(video.stem + ".truth.npz"), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@needs_espeak
def test_cli_text(tmp_path, capsys):
    out = tmp_path / "text.mp4"
    text = "Who would have thought it? We see the moon."
    assert main(["synth", "--text", text, "--out", str(out), "--size", str(SIZE), "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    spoken = speak(text)  # the CLI's voice and speed
    truth = _truth(out)
    seconds = len(spoken) / AUDIO_RATE
    assert abs(len(truth["mouth_open"]) / 25 - seconds) <= 1 / 25
    audio = read_audio(out)
    assert abs(len(audio) / AUDIO_RATE - seconds) < 0.05
    # the mouth opens while the text is spoken and is closed in the silence espeak-ng leaves around it
    frame = AUDIO_RATE // 25
    rms = np.sqrt([np.mean(spoken[k * frame:(k + 1) * frame] ** 2) for k in range(len(truth["mouth_open"]))])
    assert truth["mouth_open"].max() > 0.1
    assert np.corrcoef(truth["mouth_open"], rms)[0, 1] > 0.5


def test_cli_head_amplitude_and_seed(tmp_path):
    wav = tmp_path / "speech.flac"
    write_audio(wav, default_speech()[: 2 * AUDIO_RATE])
    small = (2.0, 1.0, 0.5)
    base = ["synth", "--audio", str(wav), "--size", "96", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "a.mp4"), "--head-amplitude", *map(str, small)]) == 0
    assert main(base + ["--out", str(tmp_path / "b.mp4"), "--head-amplitude", "12", "8", "6"]) == 0
    assert main(base + ["--out", str(tmp_path / "c.mp4"), "--head-amplitude", *map(str, small), "--seed", "5"]) == 0
    a, b, c = (_truth(tmp_path / f"{k}.mp4")["euler"] for k in "abc")
    for euler, amplitude in ((a, small), (b, (12, 8, 6)), (c, small)):
        assert (np.abs(euler) <= np.array(amplitude) + 1e-4).all()
        assert (np.abs(euler).max(0) > 0.2 * np.array(amplitude)).all()  # each axis moves
    assert np.abs(b).max(0)[0] > 2 * small[0]
    assert not np.allclose(a, c)  # another seed, another motion


def test_cli_no_phones_drives_the_lips_spectrally(tmp_path, monkeypatch):
    from geneface.synth import speech

    audio = default_speech()[: AUDIO_RATE]
    wav = tmp_path / "speech.flac"
    write_audio(wav, audio)
    calls = []
    real = speech.recognize_phones
    monkeypatch.setattr(speech, "recognize_phones", lambda a: calls.append(len(a)) or real(a))
    base = ["synth", "--audio", str(wav), "--size", "96", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "spectral.mp4"), "--no-phones"]) == 0
    assert calls == []  # the phone recogniser is not even asked
    spectral = _truth(tmp_path / "spectral.mp4")
    assert main(base + ["--out", str(tmp_path / "phones.mp4")]) == 0
    assert len(calls) == 1
    phones = _truth(tmp_path / "phones.mp4")
    # the CLI's clip is the library's spectral one, which differs from the phone-driven one where pocketsphinx
    # is installed (without it, both are spectral)
    expected = prepare(audio=read_audio(wav), config=SynthConfig(size=96, use_phones=False, progress=False))
    np.testing.assert_allclose(spectral["jaw_open"], expected.jaw_open, atol=1e-6)
    np.testing.assert_allclose(spectral["lip_width"], expected.lip_width, atol=1e-6)
    if real(read_audio(wav)) is not None:
        assert not np.allclose(spectral["lip_width"], phones["lip_width"], atol=1e-2)
    assert spectral["mouth_open"].max() > 0.1
