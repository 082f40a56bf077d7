"""Voice activity: where in a recording someone speaks.

Two detectors behind one call, ``speech_segments(wave, settings)``:
- ``silero``: Silero VAD (the ``silero-vad`` package, MIT, ships its 2 MB model), a
  per-32 ms speech probability from a small recurrent network;
- ``energy``: frame log-energy against the recording's own noise floor and peak, numpy only.
``docs/results/vad.md`` measures both on synthetic speech with inserted silences
(``experiments/vad.py``); the better one is the default. The settings follow OpenAI's
``server_vad`` (``threshold``, ``prefix_padding_ms``, ``silence_duration_ms``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np

from speechssl.audio import MIN_SAMPLES, SAMPLE_RATE
from speechssl.errors import SpeechSSLError

Backend = Literal["silero", "energy"]
BACKENDS = ("silero", "energy")
HOP = 160  # 10 ms frames for the energy detector
WINDOW = 400  # 25 ms


class VadError(SpeechSSLError, ValueError):
    """Settings a detector cannot use."""


@dataclass(frozen=True)
class VadSettings:
    threshold: float = 0.5  # speech probability (silero) or position between floor and peak (energy)
    prefix_padding_ms: int = 0  # audio kept before each segment (OpenAI's server_vad default is 300)
    silence_duration_ms: int = 200  # a pause shorter than this does not end a segment
    min_speech_ms: int = 250  # shorter bursts are dropped
    backend: Backend = "silero"

    def validate(self) -> "VadSettings":
        if not 0.0 < self.threshold < 1.0:
            raise VadError(f"threshold must be between 0 and 1, got {self.threshold}")
        for name in ("prefix_padding_ms", "silence_duration_ms", "min_speech_ms"):
            if not 0 <= getattr(self, name) <= 10_000:
                raise VadError(f"{name} must be 0..10000 ms, got {getattr(self, name)}")
        if self.backend not in BACKENDS:
            raise VadError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        return self


@dataclass(frozen=True)
class SpeechSegment:
    start: float  # seconds
    end: float


def speech_segments(wave: np.ndarray, settings: VadSettings | None = None) -> list[SpeechSegment]:
    """The voiced stretches of 16 kHz ``wave``, in order, not overlapping."""
    settings = (settings or VadSettings()).validate()
    spans = _silero(wave, settings) if settings.backend == "silero" else _energy(wave, settings)
    pad = settings.prefix_padding_ms * SAMPLE_RATE // 1000
    out: list[SpeechSegment] = []
    for start, end in spans:
        start = max(0, start - pad, int(out[-1].end * SAMPLE_RATE) if out else 0)
        out.append(SpeechSegment(round(start / SAMPLE_RATE, 3), round(min(end, len(wave)) / SAMPLE_RATE, 3)))
    return out


def voiced_pieces(wave: np.ndarray, segments: list[SpeechSegment]) -> list[tuple[int, np.ndarray]]:
    """(first sample, audio) of each segment long enough to encode: what a VAD-chunked
    transcription reads. The pauses between segments are never encoded."""
    cuts = [(int(seg.start * SAMPLE_RATE), int(seg.end * SAMPLE_RATE)) for seg in segments]
    return [(start, wave[start:end]) for start, end in cuts if end - start >= MIN_SAMPLES]


def merge_spans(spans: list[tuple[int, int]], min_gap: int, min_length: int) -> list[tuple[int, int]]:
    """Join spans (samples) closer than ``min_gap``; then drop those shorter than ``min_length``."""
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start - merged[-1][1] < min_gap:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged if e - s >= min_length]


def _energy(wave: np.ndarray, settings: VadSettings) -> list[tuple[int, int]]:
    if len(wave) < WINDOW:
        return []
    frames = np.lib.stride_tricks.sliding_window_view(wave.astype(np.float64), WINDOW)[::HOP]
    db = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
    floor, peak = np.percentile(db, 5), np.percentile(db, 99)
    if peak - floor < 10.0 or peak < -60.0:  # no contrast, or nothing above near-silence
        return []
    voiced = db > floor + settings.threshold * (peak - floor)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]])))
    # Frame i covers samples [i*HOP, i*HOP + WINDOW): a run's audio ends where its last frame ends.
    spans = [(int(a) * HOP + (WINDOW - HOP) // 2, int(b - 1) * HOP + (WINDOW + HOP) // 2) for a, b in edges.reshape(-1, 2)]
    ms = SAMPLE_RATE // 1000
    return merge_spans(spans, settings.silence_duration_ms * ms, settings.min_speech_ms * ms)


SILERO_PAD_MS = 30  # its own default: the probability falls before a word's last sound has faded
_SILERO = None
_SILERO_LOCK = threading.Lock()  # the model keeps recurrent state between its 32 ms steps


def _silero(wave: np.ndarray, settings: VadSettings) -> list[tuple[int, int]]:
    global _SILERO
    import torch

    with _SILERO_LOCK:
        if _SILERO is None:
            import warnings

            from silero_vad import load_silero_vad

            with warnings.catch_warnings():  # its TorchScript file: torch.jit.load is deprecated, still works
                warnings.simplefilter("ignore", FutureWarning)
                _SILERO = load_silero_vad()
        from silero_vad import get_speech_timestamps

        with torch.inference_mode():
            found = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), _SILERO,
                                          threshold=settings.threshold, sampling_rate=SAMPLE_RATE,
                                          min_speech_duration_ms=settings.min_speech_ms,
                                          min_silence_duration_ms=settings.silence_duration_ms,
                                          speech_pad_ms=SILERO_PAD_MS)
    return [(int(s["start"]), int(s["end"])) for s in found]
