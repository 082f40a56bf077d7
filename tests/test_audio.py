"""Audio decoding on real recorded speech, in every format we accept, and every way it can be bad."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from speechssl.audio import (
    MIN_SAMPLES, SAMPLE_RATE, AudioDecodeError, AudioInvalidError, AudioTooLongError, AudioTooShortError,
    audio_duration, load_audio,
)
from tests.conftest import require_fsdd


@pytest.fixture(scope="module")
def speech():
    """A real 8 kHz spoken digit and its duration."""
    path = sorted(require_fsdd().glob("3_jackson_*.wav"))[0]
    wave, rate = sf.read(path, dtype="float32")
    return path, wave, rate


@pytest.mark.parametrize("fmt, subtype, ext", [
    ("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3"),
    ("WAV", "PCM_U8", "wav"), ("WAV", "FLOAT", "wav"),
])
def test_each_format_decodes_to_16k_mono_float32(tmp_path, speech, fmt, subtype, ext):
    _, wave, rate = speech
    path = tmp_path / f"clip.{ext}"
    sf.write(path, wave, rate, format=fmt, subtype=subtype)
    for source in (path, str(path), path.read_bytes()):
        out = load_audio(source)
        assert out.dtype == np.float32 and out.ndim == 1
        # Lossy codecs may pad a frame; durations agree within 1 % or one codec frame.
        assert abs(len(out) / SAMPLE_RATE - len(wave) / rate) < max(0.01 * len(wave) / rate, 0.06)
        assert 0.01 < np.abs(out).max() <= 1.5


def test_stereo_48k_is_mixed_and_resampled(tmp_path):
    t = np.arange(48000) / 48000
    left, right = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], 1).astype(np.float32), 48000)
    out = load_audio(path)
    assert out.shape == (16000,)
    assert np.abs(out).max() == pytest.approx(0.75, abs=0.02)  # the mean of the channels


def test_resampling_keeps_the_pitch():
    t = np.arange(8000) / 8000
    out = load_audio(np.sin(2 * np.pi * 440 * t).astype(np.float32), sample_rate=8000)
    assert len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) * SAMPLE_RATE / len(out) == pytest.approx(440, abs=2)


def test_arrays_tensors_and_integer_pcm():
    wave = (np.sin(np.linspace(0, 300, 16000)) * 0.5).astype(np.float32)
    np.testing.assert_allclose(load_audio(torch.from_numpy(wave), 16000), wave, atol=1e-6)
    pcm = (wave * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(pcm, 16000), wave, atol=1e-4)
    channels_first = np.stack([wave, wave])  # (2, samples)
    np.testing.assert_allclose(load_audio(channels_first, 16000), wave, atol=1e-6)
    with pytest.raises(ValueError, match="sample_rate is required"):
        load_audio(wave)


def test_duration_from_header(speech):
    path, wave, rate = speech
    assert audio_duration(path) == pytest.approx(len(wave) / rate)


@pytest.mark.parametrize("source, error, message", [
    (b"", AudioDecodeError, "audio is empty: 0 bytes received"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 40, AudioDecodeError, "could not decode audio: not a supported format or the data is corrupt"),
    (bytes(range(256)) * 64, AudioDecodeError, "could not decode audio"),
])
def test_undecodable_bytes(source, error, message):
    with pytest.raises(error, match=message):
        load_audio(source)


def test_truncated_file_and_empty_file(tmp_path, speech):
    path, _, _ = speech
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="has 0 bytes"):
        load_audio(empty)
    header_only = tmp_path / "header.wav"
    header_only.write_bytes(path.read_bytes()[:44])
    with pytest.raises(AudioDecodeError, match="audio is empty|could not decode"):
        load_audio(header_only)
    with pytest.raises(AudioDecodeError, match="audio file not found"):
        load_audio(tmp_path / "missing.wav")


def wav(wave: np.ndarray, rate: int = 16000, subtype: str = "FLOAT") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def test_one_sample_and_just_too_short():
    with pytest.raises(AudioTooShortError, match="audio is too short: 1 samples at 16 kHz; need at least 400"):
        load_audio(wav(np.zeros(1, np.float32)))
    with pytest.raises(AudioTooShortError, match="399 samples"):
        load_audio(np.zeros(MIN_SAMPLES - 1, np.float32), 16000)
    assert load_audio(np.zeros(MIN_SAMPLES, np.float32), 16000).shape == (MIN_SAMPLES,)


def test_nan_and_inf_samples():
    bad = np.zeros(16000, np.float32)
    bad[100] = np.nan
    with pytest.raises(AudioInvalidError, match="NaN or infinite"):
        load_audio(wav(bad))
    bad[100] = np.inf
    with pytest.raises(AudioInvalidError, match="NaN or infinite"):
        load_audio(bad, 16000)


def test_too_long_for_the_callers_limit():
    with pytest.raises(AudioTooLongError, match="audio is too long: 3.0 s; the limit is 2 s"):
        load_audio(wav(np.zeros(48000, np.float32)), max_seconds=2)
    assert len(load_audio(np.zeros(32000, np.float32), 16000, max_seconds=2)) == 32000


def test_silence_is_valid_audio():
    assert not load_audio(wav(np.zeros(16000, np.float32))).any()
