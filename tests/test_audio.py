"""Audio decoding on the committed fixtures (tests/fixtures/make_fixtures.py), in every format
we accept, and every way audio can be bad."""

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechssl import audio
from speechssl.audio import (
    MIN_SAMPLES, SAMPLE_RATE, AudioDecodeError, AudioError, AudioInvalidError, AudioTooLongError,
    AudioTooShortError, audio_duration, load_audio,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The 1 s 16 kHz PCM clip every other fixture was made from."""
    wave, rate = sf.read(FIXTURES / "speech.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    return wave


def wav_bytes(wave: np.ndarray, rate: int = 16000, subtype: str = "FLOAT") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two waves, after trimming to the shorter (codecs may pad)."""
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# Lossy codecs change samples but keep the waveform: vorbis and mp3 still correlate > 0.9.
@pytest.mark.parametrize("name, seconds, min_similarity", [
    ("speech.wav", 1.0, 0.9999), ("speech.flac", 1.0, 0.9999), ("speech.ogg", 1.0, 0.9),
    ("speech.mp3", 1.0, 0.9), ("speech_u8.wav", 1.0, 0.99), ("speech_8k.wav", 1.0, 0.9),
    ("stereo_48k.wav", 0.5, 0.999),
])
def test_each_fixture_decodes_to_16k_mono_float32(name, seconds, min_similarity, reference):
    path = FIXTURES / name
    for source in (path, str(path), path.read_bytes()):
        out = load_audio(source)
        assert out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous
        assert len(out) / SAMPLE_RATE == pytest.approx(seconds, rel=0.01)
        assert 0.1 < np.abs(out).max() <= 1.0
        assert similarity(out, reference) > min_similarity


def test_stereo_is_the_mean_of_its_channels(reference):
    out = load_audio(FIXTURES / "stereo_48k.wav")  # left = speech, right = speech / 2
    assert out.shape == (SAMPLE_RATE // 2,)
    expected = 0.75 * reference[: len(out)]
    assert np.linalg.norm(out - expected) / np.linalg.norm(expected) < 0.01


def test_8bit_pcm_keeps_its_level(reference):
    out = load_audio(FIXTURES / "speech_u8.wav")
    assert np.abs(out).max() == pytest.approx(np.abs(reference).max(), abs=0.01)
    assert abs(float(out.mean())) < 0.01  # unsigned PCM centred on 0, not on 0.5


def test_resampling_keeps_the_pitch():
    out = load_audio(FIXTURES / "sine440_8k.wav")
    assert len(out) == SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(out)
    assert peak_hz == pytest.approx(440, abs=1)
    assert np.abs(out).max() == pytest.approx(0.5, abs=0.01)  # soxr keeps the level too


def test_arrays_tensors_and_integer_pcm(reference):
    np.testing.assert_allclose(load_audio(torch.from_numpy(reference), 16000), reference, atol=1e-6)
    np.testing.assert_allclose(load_audio(torch.from_numpy(reference).bfloat16(), 16000), reference, atol=1e-2)
    np.testing.assert_allclose(load_audio(reference.astype(np.float64), 16000), reference, atol=1e-6)
    pcm16 = np.round(reference * 32768).astype(np.int16)
    np.testing.assert_allclose(load_audio(pcm16, 16000), reference, atol=1e-4)
    pcm_u8 = np.round(reference * 128 + 128).astype(np.uint8)
    np.testing.assert_allclose(load_audio(pcm_u8, 16000), reference, atol=1 / 128)
    pcm32 = (reference.astype(np.float64) * 2**31).astype(np.int32)
    np.testing.assert_allclose(load_audio(torch.from_numpy(pcm32), 16000), reference, atol=1e-6)


def test_two_dimensional_arrays_take_the_shorter_axis_as_channels(reference):
    for channels in (np.stack([reference, reference]), np.stack([reference, reference], axis=1)):
        np.testing.assert_allclose(load_audio(channels, 16000), reference, atol=1e-6)
    assert load_audio(reference[None, :], 16000).shape == reference.shape  # (1, samples)
    with pytest.raises(AudioDecodeError, match="1-D or 2-D"):
        load_audio(np.zeros((2, 2, 16000), np.float32), 16000)


def test_arrays_need_a_sample_rate(reference):
    with pytest.raises(ValueError, match="sample_rate is required"):
        load_audio(reference)


def test_duration_from_the_header():
    for name, seconds in [("speech.wav", 1.0), ("speech.flac", 1.0), ("speech.ogg", 1.0), ("speech.mp3", 1.0),
                          ("stereo_48k.wav", 0.5), ("speech_8k.wav", 1.0)]:
        assert audio_duration(FIXTURES / name) == pytest.approx(seconds, rel=0.01)


def test_duration_falls_back_to_decoding(monkeypatch):
    def no_header(path):
        raise sf.LibsndfileError(0, "no header")

    monkeypatch.setattr(audio.sf, "info", no_header)
    assert audio_duration(FIXTURES / "speech_8k.wav") == pytest.approx(1.0)


def test_the_audioread_fallback_decodes_what_soundfile_cannot(monkeypatch, reference):
    """m4a and friends go to audioread; here soundfile is made to refuse a wav so that the
    fallback (which can always read wav) is exercised on both paths and bytes."""
    def refuse(*args, **kwargs):
        raise sf.LibsndfileError(0, "format not recognised")

    monkeypatch.setattr(audio.sf, "SoundFile", refuse)
    path = FIXTURES / "speech_8k.wav"
    for source in (path, path.read_bytes()):
        out = load_audio(source)
        assert len(out) == SAMPLE_RATE and similarity(out, reference) > 0.9
    stereo = load_audio(FIXTURES / "stereo_48k.wav")  # interleaved channels come apart and are averaged
    expected = 0.75 * reference[: len(stereo)]
    assert np.linalg.norm(stereo - expected) / np.linalg.norm(expected) < 0.01


@pytest.mark.parametrize("source, message", [
    (b"", "audio is empty: 0 bytes received"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 40, "could not decode audio: not a supported format or the data is corrupt"),
    (bytes(range(256)) * 64, "could not decode audio: not a supported format or the data is corrupt"),
    (b"ID3\x03\x00\x00\x00" + b"\x00" * 2000, "could not decode audio"),  # an mp3 tag and no frames
])
def test_undecodable_or_empty_bytes(source, message):
    with pytest.raises(AudioDecodeError, match=message):
        load_audio(source)


def test_bad_files_are_named(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="audio is empty: .*empty.wav has 0 bytes"):
        load_audio(empty)
    corrupt = tmp_path / "corrupt.m4a"
    corrupt.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(AudioDecodeError, match="could not decode audio: .*corrupt.m4a is not a supported format"):
        load_audio(corrupt)
    with pytest.raises(AudioDecodeError, match="audio file not found: .*missing.wav"):
        load_audio(tmp_path / "missing.wav")


def test_truncated_file(tmp_path):
    header_only = tmp_path / "header.wav"
    header_only.write_bytes((FIXTURES / "speech.wav").read_bytes()[:44])
    with pytest.raises(AudioDecodeError, match="audio is empty: it holds no samples"):
        load_audio(header_only)
    # libsndfile reads a cut wav up to the cut, but its flac decoder loses sync and gives up.
    cut_wav = (FIXTURES / "speech.wav").read_bytes()[:8044]
    assert len(load_audio(cut_wav)) == 4000
    cut_flac = tmp_path / "cut.flac"
    cut_flac.write_bytes((FIXTURES / "speech.flac").read_bytes()[:8000])
    with pytest.raises(AudioDecodeError, match="could not decode audio: .*cut.flac is not a supported format or is corrupt"):
        load_audio(cut_flac)


def test_empty_arrays():
    for empty in (np.zeros(0, np.float32), np.zeros((0, 2), np.float32), torch.zeros(2, 0)):
        with pytest.raises(AudioDecodeError, match="audio is empty: it holds no samples"):
            load_audio(empty, 16000)


def test_one_sample_and_just_too_short():
    with pytest.raises(AudioTooShortError,
                       match=r"audio is too short: 1 samples at 16 kHz; need at least 400 \(25 ms\)"):
        load_audio(wav_bytes(np.zeros(1, np.float32)))
    with pytest.raises(AudioTooShortError, match="audio is too short: 399 samples"):
        load_audio(np.zeros(MIN_SAMPLES - 1, np.float32), 16000)
    with pytest.raises(AudioTooShortError, match="audio is too short: 200 samples"):  # counted after resampling
        load_audio(np.zeros(100, np.float32), 8000)
    assert load_audio(np.zeros(MIN_SAMPLES, np.float32), 16000).shape == (MIN_SAMPLES,)


def test_nan_and_inf_samples():
    bad = np.zeros(16000, np.float32)
    bad[100] = np.nan
    with pytest.raises(AudioInvalidError, match="audio contains NaN or infinite samples"):
        load_audio(wav_bytes(bad))
    bad[100] = -np.inf
    with pytest.raises(AudioInvalidError, match="audio contains NaN or infinite samples"):
        load_audio(bad, 16000)


def test_too_long_for_the_callers_limit():
    with pytest.raises(AudioTooLongError, match=r"audio is too long: 3\.0 s; the limit is 2 s"):
        load_audio(wav_bytes(np.zeros(48000, np.float32)), max_seconds=2)
    with pytest.raises(AudioTooLongError, match=r"audio is too long: 1\.0 s; the limit is 0\.5 s"):
        load_audio(FIXTURES / "speech.mp3", max_seconds=0.5)
    with pytest.raises(AudioTooLongError, match=r"audio is too long: 1\.0 s; the limit is 0\.5 s"):
        load_audio(np.zeros(8000, np.int16), 8000, max_seconds=0.5)
    assert len(load_audio(FIXTURES / "speech_8k.wav", max_seconds=1)) == SAMPLE_RATE  # the limit itself is fine


def test_every_error_is_an_audio_error_and_a_value_error():
    for error in (AudioDecodeError, AudioTooShortError, AudioInvalidError, AudioTooLongError):
        assert issubclass(error, AudioError) and issubclass(error, ValueError)


def test_silence_is_valid_audio():
    assert not load_audio(wav_bytes(np.zeros(16000, np.float32))).any()
