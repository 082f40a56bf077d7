"""Audio in: decode a path, bytes or array; mono; 16 kHz; float32; validated.

``load_audio`` is the one entry point the CLI, training and the server use. Errors
are typed and their messages are meant for the person who sent the audio.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import soxr

from speechssl.config import SAMPLE_RATE
from speechssl.errors import SpeechSSLError

MIN_SAMPLES = 400  # one receptive field of the conv feature encoder (25 ms)
# Limits on what a header may declare, checked before anything is decoded or resampled:
# resampling from 1 Hz to 16 kHz cost 96 s of CPU and 4.8 GB for a 1.2 kB upload.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000
MAX_CHANNELS = 16
# Float audio has full scale 1.0; samples beyond this are not audio and overflow the model
# (samples near 1e38 gave NaN embeddings): 60 dB over full scale.
MAX_ABS_SAMPLE = 1000.0

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, "torch.Tensor"]  # noqa: F821


class AudioError(SpeechSSLError, ValueError):
    """Audio that cannot be used; the message says why."""


class AudioDecodeError(AudioError):
    """Undecodable or empty data."""


class AudioTooShortError(AudioError):
    """Fewer than ``MIN_SAMPLES`` samples at 16 kHz: shorter than the model's first frame."""


class AudioInvalidError(AudioError):
    """NaN or infinite samples."""


class AudioTooLongError(AudioError):
    """Longer than the ``max_seconds`` the caller allows."""


def load_audio(source: AudioSource, sample_rate: int | None = None, *, max_seconds: float | None = None) -> np.ndarray:
    """Decode ``source`` to a 1-D float32 waveform at 16 kHz.

    ``source`` is a path, the bytes of an audio file, or an array (1-D, or 2-D with
    channels on the shorter axis) whose ``sample_rate`` must then be given. Integer
    arrays are PCM and are scaled to [-1, 1]; float arrays are taken as they are.
    """
    if isinstance(source, (str, os.PathLike)):
        wave, rate = _decode_path(Path(source), max_seconds)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        wave, rate = _decode_bytes(bytes(source), max_seconds)
    else:
        if sample_rate is None:
            raise ValueError("sample_rate is required when audio is given as an array")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        wave, rate = _from_array(source), int(sample_rate)
    if wave.size == 0:
        raise AudioDecodeError("audio is empty: it holds no samples")
    _check_header(wave.shape[0], rate, 1 if wave.ndim == 1 else wave.shape[1], max_seconds)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)  # (samples, channels) -> (samples,)
    if not np.isfinite(wave).all():
        raise AudioInvalidError("audio contains NaN or infinite samples")
    peak = float(np.abs(wave).max())
    if peak > MAX_ABS_SAMPLE:
        raise AudioInvalidError(f"audio samples reach {peak:.3g}; float audio has full scale 1.0 and "
                                f"samples beyond {MAX_ABS_SAMPLE:g} are refused")
    _check_length(wave.shape[0], rate, max_seconds)
    if rate != SAMPLE_RATE:
        wave = soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ")
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if wave.shape[0] < MIN_SAMPLES:
        raise AudioTooShortError(
            f"audio is too short: {wave.shape[0]} samples at 16 kHz; need at least {MIN_SAMPLES} (25 ms)"
        )
    return wave


def audio_duration(path: str | os.PathLike) -> float:
    """Seconds of audio in a file, from its header when soundfile can read it, else by decoding."""
    try:
        return float(sf.info(str(path)).duration)
    except (sf.LibsndfileError, RuntimeError):
        wave, rate = _decode_path(Path(path), None)
        return wave.shape[0] / rate


def _check_header(frames: int, rate: int, channels: int, max_seconds: float | None) -> None:
    """What a header declares, refused before the audio is decoded or resampled."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioInvalidError(f"sample rate {rate} Hz is outside the supported {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioInvalidError(f"audio has {channels} channels; at most {MAX_CHANNELS} are supported")
    _check_length(frames, rate, max_seconds)


def _check_length(frames: int, rate: int, max_seconds: float | None) -> None:
    if max_seconds is not None and frames / rate > max_seconds:
        raise AudioTooLongError(f"audio is too long: {frames / rate:.1f} s; the limit is {max_seconds:g} s")


def _from_array(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor; numpy has no bfloat16, so widen floats first
        array = array.detach().cpu()
        array = (array.float() if array.is_floating_point() else array).numpy()
    wave = np.asarray(array)
    if wave.ndim not in (1, 2):
        raise AudioDecodeError(f"audio array must be 1-D or 2-D, got shape {wave.shape}")
    if wave.ndim == 2 and wave.shape[0] < wave.shape[1]:
        wave = wave.T  # (channels, samples) -> (samples, channels)
    if np.issubdtype(wave.dtype, np.integer):
        # Signed and unsigned PCM alike: centre on the type's midpoint, scale by half its range.
        info = np.iinfo(wave.dtype)
        half = (int(info.max) - int(info.min) + 1) / 2
        wave = (wave.astype(np.float64) - (int(info.min) + half)) / half
    elif not np.issubdtype(wave.dtype, np.floating):
        raise AudioDecodeError(f"audio array must hold numbers, got dtype {wave.dtype}")
    return wave.astype(np.float32, copy=False)


def _decode_path(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise AudioDecodeError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"audio is empty: {path} has 0 bytes")
    try:
        return _read_soundfile(str(path), max_seconds)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass  # not a libsndfile format (m4a, ...): try the system decoders below
    try:
        return _read_audioread(path, max_seconds)
    except AudioDecodeError:
        raise AudioDecodeError(f"could not decode audio: {path} is not a supported format or is corrupt") from None


def _decode_bytes(data: bytes, max_seconds: float | None) -> tuple[np.ndarray, int]:
    if not data:
        raise AudioDecodeError("audio is empty: 0 bytes received")
    try:
        return _read_soundfile(io.BytesIO(data), max_seconds)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass
    # audioread's decoders (ffmpeg, gstreamer, ...) read files, not memory.
    fd, tmp = tempfile.mkstemp(prefix="speechssl-", suffix=".audio")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return _read_audioread(Path(tmp), max_seconds)
    finally:
        os.unlink(tmp)


def _read_soundfile(file, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """wav, flac, ogg/vorbis/opus, mp3 and the rest of libsndfile's formats."""
    with sf.SoundFile(file) as f:
        # Refuse from the header, before a long upload is decoded into memory.
        _check_header(f.frames, f.samplerate, f.channels, max_seconds)
        wave = f.read(dtype="float32", always_2d=False)
        return wave, int(f.samplerate)


def _read_audioread(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """The fallback librosa itself uses (audioread: ffmpeg, gstreamer, ...), without librosa's
    multi-second import; the decoders available depend on what is installed on the machine."""
    import audioread

    try:
        with audioread.audio_open(str(path)) as f:
            rate, channels = int(f.samplerate), int(f.channels)
            _check_header(0, rate, channels, None)
            limit = math.inf if max_seconds is None else (max_seconds * rate + 1) * channels * 2
            chunks, size = [], 0
            for chunk in f:  # 16-bit little-endian interleaved PCM
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    break
    except AudioError:
        raise
    except Exception:  # audioread raises many types (NoBackendError, DecodeError, EOFError, ...) for junk
        raise AudioDecodeError("could not decode audio: not a supported format or the data is corrupt") from None
    pcm = b"".join(chunks)
    pcm = pcm[: len(pcm) - len(pcm) % (2 * channels)]  # whole frames only
    wave = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    return wave.reshape(-1, channels) if channels > 1 else wave, rate
