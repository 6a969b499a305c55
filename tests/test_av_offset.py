"""Audio/video offset: `read_audio` honours the container's timing, `process` measures the offset from the lips
and corrects it (`--av-offset`)."""

from __future__ import annotations

import json
import logging
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from geneface import face, media
from geneface.cli import main
from geneface.errors import InputError
from geneface.fileio import read_npz
from geneface.process import ProcessConfig, avsync, process
from geneface.process.pipeline import clip_audio

TOLERANCE_MS = 20
"""Largest error of an estimated offset."""
CLICK = 16000
"""Sample (1 s at 16 kHz) of the click in the test files."""


# --- read_audio and the container's timing ---------------------------------------------------------------

def _click_file(path: Path, fmt: str = "mp4", codec: str = "aac", rate: int = 16000, audio_start: float = 0.0,
                video_start: float = 0.0, options: dict | None = None, packet_shift: int = 0) -> Path:
    """2 s of black 64 px video and audio silent but for a 10 ms click at 1 s of the audio, written by PyAV:
    the audio's frames stamped from ``audio_start`` s, the video's from ``video_start`` s; ``packet_shift``
    samples added to every encoded audio packet's timestamps (1024: AAC's priming samples at pts 0)."""
    audio = np.zeros(2 * rate, np.float32)
    audio[rate : rate + rate // 100] = 0.8
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        video = out.add_stream("libx264", rate=25)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        sound = out.add_stream(codec, rate=rate, layout="mono")
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i + round(video_start * 25), Fraction(1, 25)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        size = sound.codec_context.frame_size or 1024
        packets = []
        for start in range(0, len(audio), size):
            frame = av.AudioFrame.from_ndarray(audio[None, start : start + size], format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, start + round(audio_start * rate)
            frame.time_base = Fraction(1, rate)
            packets += sound.encode(frame)
        packets += sound.encode(None)
        for packet in packets:
            packet.pts += packet_shift
            packet.dts += packet_shift
            out.mux(packet)
    return path


def _onset(audio: np.ndarray) -> int:
    return int(np.argmax(np.abs(audio) > 0.2))


@pytest.mark.parametrize("case, kwargs, expected", [
    ("AAC priming in the mp4 edit list", {}, CLICK),
    ("AAC priming at pts 0 (64 ms late)", {"packet_shift": 1024}, CLICK + 1024),
    ("mp4 without an edit list", {"options": {"use_editlist": "0"}}, CLICK),
    ("audio starts 120 ms after the video", {"audio_start": 0.12}, CLICK + 1920),
    ("video starts 120 ms after the audio", {"video_start": 0.12}, CLICK - 1920),
    ("Matroska, 48 kHz Opus (codec delay)", {"fmt": "matroska", "codec": "libopus", "rate": 48000}, CLICK),
])
def test_read_audio_honours_container_timing(tmp_path, case, kwargs, expected):
    """Sample 0 is at the first video frame: what the container declares (edit lists, start times, codec
    delay) is applied; priming stamped at pts 0 is audio like any other, so it comes out 64 ms late."""
    path = _click_file(tmp_path / f"clip.{'mkv' if kwargs.get('fmt') == 'matroska' else 'mp4'}", **kwargs)
    audio = media.read_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.abs(audio).max() <= 1.0
    assert abs(_onset(audio) - expected) <= 16, case  # 1 ms


def _remux(src: Path, dst: Path, audio_delay: int) -> Path:
    """``src`` with its audio packets' timestamps moved by ``audio_delay`` samples (no re-encoding)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for packet in inp.demux():
            if packet.dts is None or packet.stream.index not in streams:
                continue
            if packet.stream.type == "audio":
                packet.pts += audio_delay
                packet.dts += audio_delay
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dst


# --- the estimate ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mouth(tiny_dataset) -> np.ndarray:
    """[T] mouth opening of the synthetic clip, as `process` tracked it."""
    return face.mouth_opening(read_npz(tiny_dataset / "landmarks.npz")["mesh"])


@pytest.mark.parametrize("true_ms", [120, -120, 40, -40, 0])
def test_offset_is_recovered(synthetic_clip, mouth, true_ms):
    """The synthetic clip's audio moved ``true_ms`` ahead of its lips (negative: behind) is measured within
    `TOLERANCE_MS`."""
    audio = avsync.shift_audio(media.read_audio(synthetic_clip[0]), -true_ms)
    est = avsync.estimate_offset(mouth, audio)
    assert est.reliable and est.confidence >= avsync.MIN_CONFIDENCE, est
    assert abs(est.offset_ms - true_ms) <= TOLERANCE_MS, est


def test_priming_at_pts0_is_measured(tmp_path, synthetic_clip, mouth):
    """An mp4 whose AAC priming sits at pts 0 (no edit list to skip it) decodes 64 ms late, and the offset is
    measured as such."""
    late = _remux(synthetic_clip[0], tmp_path / "late.mp4", 1024)
    audio = media.read_audio(synthetic_clip[0])
    assert np.array_equal(media.read_audio(late)[1024 : 1024 + len(audio)], audio)
    est = avsync.estimate_offset(mouth, media.read_audio(late))
    assert est.reliable and abs(est.offset_ms - -64) <= TOLERANCE_MS, est


@pytest.mark.parametrize("audio, problem", [
    (np.zeros(4 * 16000, np.float32), "the audio is silent"),
    (np.random.default_rng(0).normal(0, 0.1, 4 * 16000).astype(np.float32), "low confidence"),
])
def test_no_speech_applies_nothing(mouth, audio, problem, caplog):
    est = avsync.estimate_offset(mouth, audio)
    assert not est.reliable and problem in est.problem, est
    sync = avsync.align(est, "auto")
    assert sync.applied_ms == 0 and sync.warn
    assert sync.message.startswith("the audio/video offset could not be measured (") and problem in sync.message
    assert "the audio is used as it is" in sync.message


def test_still_mouth_or_short_clip_applies_nothing(synthetic_clip, mouth):
    audio = media.read_audio(synthetic_clip[0])
    still = avsync.estimate_offset(np.full_like(mouth, 0.2), audio)
    short = avsync.estimate_offset(mouth[:40], audio)
    assert still.problem == "the mouth hardly moves" and still.offset_ms is None
    assert short.problem == "the clip is shorter than 2 s"
    assert avsync.align(short, "auto").applied_ms == 0


def test_messages():
    sure = lambda ms: avsync.OffsetEstimate(ms, 6.0)  # noqa: E731
    assert avsync.align(sure(120.4)).message == ("audio leads the video by 120 ms (confidence 6.0); delaying the "
                                                 "audio by 120 ms")
    assert avsync.align(sure(-64.2)).message.startswith("audio lags the video by 64 ms")
    assert avsync.align(sure(-64.2)).applied_ms == -64
    assert avsync.align(sure(7.0)).message == "audio and video in sync (7 ms) (confidence 6.0); no shift"
    assert avsync.align(sure(7.0)).applied_ms == 0
    assert avsync.align(sure(120.0), "0").message.endswith("no shift (--av-offset 0)")
    assert avsync.align(sure(120.0), "-64").applied_ms == -64
    assert avsync.align(sure(120.0), "-64").as_dict() == {"estimated_ms": 120.0, "applied_ms": -64.0,
                                                          "confidence": 6.0, "setting": "-64"}


# --- the correction in process ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def leading_clip(tmp_path_factory, synthetic_clip) -> Path:
    """The synthetic clip re-encoded with its audio 120 ms ahead of the lips."""
    path = tmp_path_factory.mktemp("offset") / "leading.mp4"
    frames = list(media.read_video(synthetic_clip[0]))
    media.write_video(path, frames, audio=avsync.shift_audio(media.read_audio(synthetic_clip[0]), -120))
    return path


def test_process_corrects_the_offset(tmp_path, leading_clip, caplog):
    """auto measures the offset, delays the audio by it, stores it in meta.json; a changed setting is not
    resumed from the old folder."""
    out = tmp_path / "ds"
    with caplog.at_level(logging.INFO, logger="geneface.process"):
        process(leading_clip, out, ProcessConfig(size=128))
    sync = json.loads((out / "meta.json").read_text())["av_offset"]
    assert set(sync) == {"estimated_ms", "applied_ms", "confidence", "setting"} and sync["setting"] == "auto"
    assert abs(sync["estimated_ms"] - 120) <= TOLERANCE_MS and sync["applied_ms"] == round(sync["estimated_ms"])
    assert sync["confidence"] >= avsync.MIN_CONFIDENCE
    assert f"audio leads the video by {sync['applied_ms']:.0f} ms" in caplog.text
    stored = media.read_audio(out / "audio.wav")
    expected = avsync.shift_audio(media.read_audio(leading_clip), sync["applied_ms"])[: len(stored)]
    assert np.abs(stored - expected).max() < 2 / 32767  # 16-bit PCM
    with pytest.raises(InputError, match="other settings"):
        process(leading_clip, out, ProcessConfig(size=128, av_offset="0"))


@pytest.mark.parametrize("setting", ["0", "-64", "50"])
def test_setting_applies_that_shift(leading_clip, tiny_dataset, setting):
    """0 leaves the audio as decoded; a number of ms shifts it by exactly that many samples."""
    mesh = read_npz(tiny_dataset / "landmarks.npz")["mesh"]
    audio, sync = clip_audio(leading_clip, mesh, setting)
    raw = media.read_audio(leading_clip)
    n = round(len(mesh) / 25 * 16000)
    assert len(audio) == n and sync.applied_ms == float(setting) and sync.setting == setting
    assert abs(sync.estimated_ms - 120) <= TOLERANCE_MS  # measured whatever the setting
    shift = round(float(setting) * 16)  # samples at 16 kHz
    expected = np.concatenate([np.zeros(max(shift, 0), np.float32), raw[max(-shift, 0):], np.zeros(n, np.float32)])
    assert np.array_equal(audio, expected[:n])


def test_setting_is_checked(tmp_path, leading_clip, capsys):
    assert ProcessConfig(av_offset=-64).av_offset == "-64" == ProcessConfig(av_offset=" -64.0").av_offset
    assert ProcessConfig(av_offset="AUTO").av_offset == "auto" and ProcessConfig(av_offset="-0").av_offset == "0"
    for bad in ("abc", "1500", "nan", "inf", ""):
        code = main(["process", str(leading_clip), "--out", str(tmp_path / "o"), "--av-offset", bad])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0 and err.startswith("error: --av-offset must be auto or"), err
    assert not (tmp_path / "o").exists()


def test_a_dataset_processed_before_offsets_were_measured_is_used_as_it_is(tmp_path, tiny_dataset, synthetic_clip,
                                                                           caplog):
    """A finished dataset whose resume key predates ``av_offset`` (every dataset made before it existed) is reused
    with a warning, so `train all` reruns on existing person folders; one still being processed is not."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    progress = json.loads((data / "progress.json").read_text())
    del progress["key"]["av_offset"]
    (data / "progress.json").write_text(json.dumps(progress))
    meta = (data / "meta.json").read_text()
    with caplog.at_level(logging.WARNING):
        process(synthetic_clip[0], data, ProcessConfig(size=128))
    assert "processed before audio/video offsets were measured" in caplog.text
    assert (data / "meta.json").read_text() == meta  # nothing redone
    (data / "meta.json").unlink()  # unfinished: its remaining steps would mix two settings
    with pytest.raises(InputError, match="another video or other settings"):
        process(synthetic_clip[0], data, ProcessConfig(size=128))
