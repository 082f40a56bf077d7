"""Audio in: decode a path, bytes or array; mono; 16 kHz; float32; validated.

``load_audio`` is the one entry point the CLI, training and the server use. Errors
are typed and their messages are meant for the person who sent the audio.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
MIN_SAMPLES = 400  # one receptive field of the conv feature encoder (25 ms)

AudioSource = Union[str, os.PathLike, bytes, bytearray, np.ndarray, "torch.Tensor"]  # noqa: F821


class AudioError(ValueError):
    """Audio that cannot be used; the message says why."""


class AudioDecodeError(AudioError):
    """Undecodable or empty data."""


class AudioTooShortError(AudioError):
    pass


class AudioInvalidError(AudioError):
    """NaN or infinite samples."""


class AudioTooLongError(AudioError):
    pass


def load_audio(source: AudioSource, sample_rate: int | None = None, *, max_seconds: float | None = None) -> np.ndarray:
    """Decode ``source`` to a 1-D float32 waveform at 16 kHz.

    ``source`` is a path, the bytes of an audio file, or an array (1-D, or 2-D with
    channels on the shorter axis) whose ``sample_rate`` must then be given.
    """
    if isinstance(source, (str, os.PathLike)):
        wave, rate = _decode_path(Path(source))
    elif isinstance(source, (bytes, bytearray, memoryview)):
        wave, rate = _decode_bytes(bytes(source))
    else:
        if sample_rate is None:
            raise ValueError("sample_rate is required when audio is given as an array")
        wave, rate = _from_array(source), int(sample_rate)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if wave.size == 0:
        raise AudioDecodeError("audio is empty: it holds no samples")
    if not np.isfinite(wave).all():
        raise AudioInvalidError("audio contains NaN or infinite samples")
    if max_seconds is not None and wave.shape[0] / rate > max_seconds:
        raise AudioTooLongError(
            f"audio is too long: {wave.shape[0] / rate:.1f} s; the limit is {max_seconds:g} s"
        )
    if rate != SAMPLE_RATE:
        wave = soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ")
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if wave.shape[0] < MIN_SAMPLES:
        raise AudioTooShortError(
            f"audio is too short: {wave.shape[0]} samples at 16 kHz; need at least {MIN_SAMPLES} (25 ms)"
        )
    return wave


def audio_duration(path: str | os.PathLike) -> float:
    """Seconds of audio in a file, from its header when the format has one."""
    try:
        return float(sf.info(str(path)).duration)
    except (sf.LibsndfileError, RuntimeError):
        return load_audio(path).shape[0] / SAMPLE_RATE


def _from_array(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor
        array = array.detach().cpu().numpy()
    wave = np.asarray(array)
    if wave.ndim == 2 and wave.shape[0] < wave.shape[1]:
        wave = wave.T  # (channels, samples) -> (samples, channels)
    if wave.ndim not in (1, 2):
        raise AudioDecodeError(f"audio array must be 1-D or 2-D, got shape {wave.shape}")
    if np.issubdtype(wave.dtype, np.integer):
        info = np.iinfo(wave.dtype)
        wave = (wave.astype(np.float32) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    return wave.astype(np.float32, copy=False)


def _decode_path(path: Path) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise AudioDecodeError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"audio is empty: {path} has 0 bytes")
    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=False)
        return wave, rate
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return _decode_with_librosa(path)


def _decode_bytes(data: bytes) -> tuple[np.ndarray, int]:
    if not data:
        raise AudioDecodeError("audio is empty: 0 bytes received")
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
        return wave, rate
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass
    # mp3, m4a and friends: librosa's fallback decoders want a file.
    fd, tmp = tempfile.mkstemp(prefix="speechssl-", suffix=".audio")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return _decode_with_librosa(Path(tmp))
    finally:
        os.unlink(tmp)


def _decode_with_librosa(path: Path) -> tuple[np.ndarray, int]:
    import warnings

    import librosa

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns before trying audioread; we report once below
            wave, rate = librosa.load(str(path), sr=None, mono=False)
    except Exception as exc:  # librosa/audioread raise many types for junk input
        raise AudioDecodeError(
            f"could not decode audio: not a supported format or the data is corrupt ({type(exc).__name__})"
        ) from None
    wave = np.asarray(wave, dtype=np.float32)
    return (wave.T if wave.ndim == 2 else wave), int(rate)
