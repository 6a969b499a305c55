"""Streaming inference (geneface.infer.stream): frame accounting for any chunk size, the streamed landmarks
against offline inference, no seams at chunk joins, silence, flush and interrupt, bounded memory, bad input.

The bundled demo person (mel features) renders at 32 px here: landmarks do not depend on the frame size."""

from __future__ import annotations

import copy
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from geneface import InferConfig, PersonModel, media
from geneface.constants import EYE_LOWER_68, EYE_UPPER_68
from geneface.errors import InputError
from geneface.infer.cli_demo import bundled_person, bundled_speech
from geneface.infer.stabilise import BlinkSchedule, blink_track, pose_at, pose_track
from geneface.infer.stream import FRAME_SAMPLES, SpeechStream, StreamConfig, StreamFrame

SIZE = 32
CHUNKS_MS = (20, 100, 1000)
TOLERANCE_IOD = 0.02
"""Streamed vs offline landmarks at the default look-ahead: mean absolute difference, in % of the inter-ocular
distance (measured: 0.005 %, the worst frame 0.04 %; a frame's own motion is 0.2 %, the mouth's 0.4 %)."""


@pytest.fixture(scope="module")
def demo() -> PersonModel:
    return PersonModel.load(bundled_person(), "cpu")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """4.3 s of the bundled speech: 107 frames, the last one partial."""
    return media.read_audio(bundled_speech())[: 106 * FRAME_SAMPLES + 123]


def run(stream: SpeechStream, audio: np.ndarray, chunk: int, flush: bool = True) -> tuple[list[StreamFrame], list[int]]:
    """Push ``audio`` in chunks of ``chunk`` samples (then flush): the frames, and which push gave each."""
    frames, push_of = [], []
    pushed = 0
    with torch.inference_mode():
        for k, start in enumerate(range(0, len(audio), chunk)):
            out = stream.push(audio[start:start + chunk])
            pushed += len(audio[start:start + chunk])
            assert len(frames) + len(out) == max(0, pushed // FRAME_SAMPLES - stream.delay_frames)
            frames += out
            push_of += [k] * len(out)
        if flush:
            out = stream.flush()
            frames += out
            push_of += [-1] * len(out)
    return frames, push_of


@pytest.fixture(scope="module")
def streamed(demo, speech) -> dict[int, tuple[list[StreamFrame], list[int]]]:
    """The speech streamed at temperature 0 in chunks of 20 ms, 100 ms and 1 s."""
    return {ms: run(SpeechStream(demo, StreamConfig(temperature=0.0, size=SIZE)), speech, ms * 16) for ms in CHUNKS_MS}


def landmarks(frames: list[StreamFrame]) -> np.ndarray:
    return np.stack([f.landmarks for f in frames])


def padded(audio: np.ndarray) -> np.ndarray:
    return np.pad(audio, (0, -len(audio) % FRAME_SAMPLES))


@pytest.mark.parametrize("ms", CHUNKS_MS)
def test_frames_count_order_audio_and_size(streamed, speech, ms):
    frames, _ = streamed[ms]
    assert len(frames) == -(-len(speech) // FRAME_SAMPLES) == 107  # run() checked the count after every push
    assert [f.index for f in frames] == list(range(107))
    assert all(f.rgb.shape == (SIZE, SIZE, 3) and f.rgb.dtype == np.uint8 for f in frames)
    assert all(f.audio.shape == (FRAME_SAMPLES,) and f.audio.dtype == np.float32 for f in frames)
    np.testing.assert_array_equal(np.concatenate([f.audio for f in frames]), padded(speech))  # zeros padded


def test_streamed_landmarks_match_offline_inference(demo, streamed, speech):
    offline = demo.landmarks(padded(speech), InferConfig(temperature=0.0))
    for ms in CHUNKS_MS:
        diff = np.abs(landmarks(streamed[ms][0]) - offline)  # [T, 68, 3] in units of the inter-ocular distance
        assert 100 * diff.mean() < TOLERANCE_IOD, ms
        assert 100 * diff.mean((1, 2)).max() < 5 * TOLERANCE_IOD, ms
        # a frame does not depend on the chunking
        np.testing.assert_allclose(landmarks(streamed[ms][0]), landmarks(streamed[20][0]), atol=1e-5)
    assert 100 * np.abs(offline).mean() > 10 * TOLERANCE_IOD  # the landmarks move far more than that


def test_no_seams_at_chunk_joins(demo, streamed, speech):
    """The frame-to-frame change across two pushes is the offline track's change there (within a small excess,
    on average no more than elsewhere in the track), and no larger than the largest change offline."""
    offline = demo.landmarks(padded(speech), InferConfig(temperature=0.0))
    change_offline = np.abs(np.diff(offline, axis=0)).mean((1, 2))  # [T - 1]
    for ms in CHUNKS_MS:
        frames, push_of = streamed[ms]
        change = np.abs(np.diff(landmarks(frames), axis=0)).mean((1, 2))
        excess = 100 * np.abs(change - change_offline)  # % of the inter-ocular distance
        joins = np.flatnonzero(np.diff(push_of) != 0)
        assert len(joins) >= 4
        assert excess[joins].max() < 2.5 * TOLERANCE_IOD, ms
        assert excess[joins].mean() <= 2 * excess.mean() + 1e-6, ms
        assert change[joins].max() <= 1.01 * change_offline.max(), ms


def test_frames_left_unrendered_render_elsewhere_to_the_same_image(demo, streamed, speech):
    """``render=False`` (a server's stream): the same frames without ``rgb``; `PersonModel.render` of each frame's
    window and camera gives its image."""
    frames, _ = run(SpeechStream(demo, StreamConfig(temperature=0.0, size=SIZE), render=False), speech, 320)
    rendered = streamed[20][0]
    assert [f.index for f in frames] == [f.index for f in rendered] and all(f.rgb is None for f in frames)
    np.testing.assert_array_equal(landmarks(frames), landmarks(rendered))
    for f in frames[::20]:
        assert f.window.shape == (5, 68, 3) and f.c2w.shape == (4, 4)
        np.testing.assert_array_equal(f.window[2], f.landmarks)
        with torch.inference_mode():
            np.testing.assert_array_equal(demo.render(f.window[None], f.c2w[None], SIZE)[0], rendered[f.index].rgb)


def test_temperature_and_seed_match_offline_too(demo, speech):
    config = StreamConfig(temperature=0.8, seed=3, size=SIZE)
    frames, _ = run(SpeechStream(demo, config), speech[:50 * FRAME_SAMPLES], 1600)
    offline = demo.landmarks(speech[:50 * FRAME_SAMPLES], InferConfig(temperature=0.8, seed=3))
    assert 100 * np.abs(landmarks(frames) - offline).mean() < TOLERANCE_IOD
    other, _ = run(SpeechStream(demo, StreamConfig(temperature=0.8, seed=4, size=SIZE)), speech[:50 * FRAME_SAMPLES],
                   1600)
    assert np.abs(landmarks(other) - landmarks(frames)).mean() > 1e-4  # the seed matters


def test_a_window_of_the_motion_draws_the_whole_sequences_noise(demo, speech):
    """What lets the stream sample motion window by window: latent step l's noise comes from (seed, l) alone, so a
    window placed at its ``first_frame`` gives the whole sequence's offsets away from its edges (at any
    temperature; the demo person's motion hardly depends on the noise, so the test turns it up)."""
    feats, _ = demo.motion.features_for_audio(speech[:80 * FRAME_SAMPLES])
    whole = demo.motion.predict(feats, temperature=10.0, seed=1)
    s, e, c = 20, 72, demo.motion.context_frames
    window = demo.motion.predict(feats[2 * s:2 * e], temperature=10.0, seed=1, first_frame=s)
    np.testing.assert_allclose(window[c:-c], whole[s + c:e - c], atol=1e-6)
    misplaced = demo.motion.predict(feats[2 * s:2 * e], temperature=10.0, seed=1, first_frame=0)
    assert np.abs(misplaced[c:-c] - whole[s + c:e - c]).max() > 1e-3
    with pytest.raises(ValueError, match="multiple of"):
        demo.motion.predict(feats, first_frame=3)


def test_blinks_and_poses_of_any_frame_match_the_whole_track():
    """The stream asks for blinks and poses a few frames at a time, forever: the same as the offline tracks."""
    whole = blink_track(3000, 25.0, seed=5)
    schedule = BlinkSchedule(25.0, seed=5)
    windows = np.stack([schedule.closure(i, i + 5) for i in range(0, 2990)])
    np.testing.assert_array_equal(windows[:, 0], whole[:2990])
    assert len(schedule._starts) <= 2  # noqa: SLF001  (forgotten once over)
    c2w = np.arange(7, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32)
    frames = np.array([3, 500, 12, 0])
    for mode in ("loop", "still"):
        np.testing.assert_array_equal(pose_at(c2w, frames, mode), pose_track(c2w, 501, mode)[frames])


def lip_gap(demo, lm: np.ndarray) -> np.ndarray:
    """Inner-lip opening [T] (upper to lower inner lip, middle points) in inter-ocular distances."""
    stats = demo.person.stats
    points = stats.mean68 + lm * stats.iod
    return np.linalg.norm(points[:, 66] - points[:, 62], axis=-1) / stats.iod


def eye_gap(demo, lm: np.ndarray) -> np.ndarray:
    stats = demo.person.stats
    points = stats.mean68 + lm * stats.iod
    return np.linalg.norm(points[:, EYE_UPPER_68] - points[:, EYE_LOWER_68], axis=-1).mean(1) / stats.iod


def test_silence_closes_the_mouth_and_keeps_it_still_while_idle_motion_goes_on(demo, speech):
    """1.5 s of speech, then 4 s of silence without a flush: the mouth closes and stays still; the head keeps
    moving (pose loop) and the eyes blink."""
    audio = np.concatenate([speech[:int(1.5 * 16000)], np.zeros(4 * 16000, np.float32)])
    frames, _ = run(SpeechStream(demo, StreamConfig(temperature=0.5, size=SIZE)), audio, 1600, flush=False)
    lm = landmarks(frames)
    gap = lip_gap(demo, lm)
    talking, quiet = gap[5:35], gap[50:]  # speech frames; silence from 0.5 s after the speech
    assert talking.max() > 0.1 and quiet.max() < 0.5 * talking.mean()
    mouth = lm[50:, 48:68]
    assert np.abs(np.diff(mouth, axis=0)).max() < 1e-3  # still: under 0.1 % of the inter-ocular distance a frame
    assert (eye_gap(demo, lm) < 0.5 * eye_gap(demo, np.zeros((1, 68, 3)))[0]).any()  # a blink
    images = np.stack([f.rgb for f in frames[50:]]).astype(np.float32)
    assert np.abs(images[-1] - images[0]).mean() > 0.5  # the head moved


def test_flush_ends_an_utterance_and_the_stream_goes_on(demo, speech):
    stream = SpeechStream(demo, StreamConfig(size=SIZE))
    d = stream.delay_frames
    assert d == 5
    with torch.inference_mode():
        assert stream.flush() == []
        first = stream.push(speech[:10 * FRAME_SAMPLES + 100])
        assert len(first) == 10 - d
        rest = stream.flush()
        assert [f.index for f in first + rest] == list(range(11))
        np.testing.assert_array_equal(rest[-1].audio[100:], 0)
        assert stream.flush() == [] and stream.held == 0
        second = stream.push(speech[:3 * FRAME_SAMPLES]) + stream.flush()
    assert [f.index for f in second] == [11, 12, 13]
    np.testing.assert_array_equal(np.concatenate([f.audio for f in second]), speech[:3 * FRAME_SAMPLES])


def test_interrupt_drops_the_audio_not_yet_in_frames(demo, speech):
    stream = SpeechStream(demo, StreamConfig(size=SIZE))
    with torch.inference_mode():
        sent = stream.push(speech[:25 * FRAME_SAMPLES + 300])
        assert len(sent) == 25 - stream.delay_frames
        assert stream.held == (stream.delay_frames * FRAME_SAMPLES + 300)
        assert stream.interrupt() is None
        assert stream.held == 0 and stream.flush() == []
        new = speech[40 * FRAME_SAMPLES:48 * FRAME_SAMPLES]
        after = stream.push(new)
        assert len(after) == 8 - stream.delay_frames  # counted from the interrupt
        after += stream.flush()
    assert [f.index for f in sent + after] == list(range(len(sent) + 8))  # indices go on without a gap
    np.testing.assert_array_equal(np.concatenate([f.audio for f in after]), new)


def test_memory_stays_bounded_on_a_long_stream(demo, speech):
    """A stream's buffers stop growing: 24 s of speech and silence in 20 ms chunks."""
    stream = SpeechStream(demo, StreamConfig(size=8, lookahead=2))
    audio = np.concatenate([speech[:4 * 16000], np.zeros(2 * 16000, np.float32)] * 4)
    sizes = []
    with torch.inference_mode():
        for start in range(0, len(audio), 320):
            stream.push(audio[start:start + 320])
            blinks = len(stream._blinks._starts)  # noqa: SLF001
            sizes.append((len(stream._audio), len(stream._features), blinks))  # noqa: SLF001
            if start % 64000 == 0:
                stream.flush()
    sizes = np.array(sizes)
    half = len(sizes) // 2
    assert (sizes[half:].max(0) <= sizes[:half].max(0)).all()  # no growth over time
    assert sizes[:, 0].max() <= (stream.delay_frames + 2) * FRAME_SAMPLES + 320
    assert sizes[:, 2].max() <= 2


def test_streams_share_a_person_model_across_threads(demo, speech):
    audio = speech[:30 * FRAME_SAMPLES]
    alone = {seed: landmarks(run(SpeechStream(demo, StreamConfig(seed=seed, size=SIZE)), audio, 640)[0])
             for seed in (1, 2)}
    together: dict[int, np.ndarray] = {}

    def work(seed: int) -> None:
        together[seed] = landmarks(run(SpeechStream(demo, StreamConfig(seed=seed, size=SIZE)), audio, 640)[0])

    threads = [threading.Thread(target=work, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in (1, 2):
        np.testing.assert_allclose(together[seed], alone[seed], atol=1e-5)


def test_bad_input_is_refused_clearly(demo):
    stream = SpeechStream(demo, StreamConfig(size=SIZE))
    with pytest.raises(InputError, match="mono"):
        stream.push(np.zeros((2, 320), np.float32))
    with pytest.raises(InputError, match="NaN"):
        stream.push(np.full(320, np.nan, np.float32))
    with pytest.raises(InputError, match="NaN or infinite"):
        stream.push(np.array([0.0, np.inf], np.float32))
    with pytest.raises(InputError, match="32768"):
        stream.push(np.zeros(320, np.int16))
    with pytest.raises(InputError, match="numpy array"):
        stream.push([0.0] * 320)  # type: ignore[arg-type]
    assert stream.push(np.zeros(0, np.float32)) == [] and stream.held == 0  # nothing fed: nothing held
    for bad in ({"pose": "poses.npz"}, {"temperature": -1.0}, {"blink": "often"}, {"lookahead": 100}):
        with pytest.raises(InputError):
            StreamConfig(**bad)
    whisper = copy.copy(demo)
    whisper.person = SimpleNamespace(feature_kind="whisper", fps=25.0)
    with pytest.raises(InputError, match="mel features"):
        SpeechStream(whisper)
