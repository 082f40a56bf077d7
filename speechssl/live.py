"""Live transcription: text previews of audio that is still arriving, then the full transcript.

One protocol for the Python API (``SpeechModel.transcribe_live``), the WebSocket route
(``/v1/audio/transcriptions/live``) and its client (``speechssl.client.live_transcribe``):
``{"type": "transcript.text.delta", "delta": ...}`` for words that are settled, then
``{"type": "transcript.text.done", "text": ..., "duration": ...}``. A preview decodes each
new ``CORE_SECONDS`` of audio greedily, with ``CONTEXT_SECONDS`` of audio on each side for
the encoder; the done text is the offline transcript of the whole recording, so the previews
may differ from it (beam search, whole-utterance context) and the done text is the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from speechssl.audio import MIN_SAMPLES, SAMPLE_RATE
from speechssl.decode.ctc import GreedyTextStream

CORE_SECONDS = 2.0
CONTEXT_SECONDS = 1.0


@dataclass(frozen=True)
class PreviewWindow:
    start: int  # first sample the encoder reads
    end: int  # one past the last
    keep_from: int  # first frame (within the window) of its core
    keep: int  # the core's frames


class PreviewWindows:
    """Where the previews of a growing recording are cut: cores of ``CORE_SECONDS`` that tile
    it, each read with ``CONTEXT_SECONDS`` either side once that audio has arrived."""

    def __init__(self, frame_stride: int, core_seconds: float = CORE_SECONDS, context_seconds: float = CONTEXT_SECONDS):
        self.stride = frame_stride
        self.core = max(frame_stride, int(core_seconds * SAMPLE_RATE) // frame_stride * frame_stride)
        self.context = int(context_seconds * SAMPLE_RATE) // frame_stride * frame_stride
        self.next = 0  # first sample of the next core

    def ready(self, received: int, final: bool = False) -> list[PreviewWindow]:
        """The windows whose audio is in, given ``received`` samples so far (``final``: all of it)."""
        out = []
        while self.next < received and (final or received >= self.next + self.core + self.context):
            start = max(0, self.next - self.context)
            core_end = min(received, self.next + self.core)
            end = min(received, core_end + self.context)
            window = PreviewWindow(start, end, (self.next - start) // self.stride, max(1, (core_end - self.next) // self.stride))
            self.next = core_end
            if end - start >= MIN_SAMPLES:  # a shorter tail holds no frame
                out.append(window)
        return out


class LivePreviews:
    """The preview side of a live session: 16-bit PCM in (any rate), the pieces to encode
    out, their CTC emissions in (in order), word deltas out. The caller runs the encoder
    (directly, or through the server's batcher) and keeps the PCM for the final pass.

    Only the audio the next windows still need is held, so a long session costs memory
    for a few seconds of audio, not all of it.
    """

    def __init__(self, model, sample_rate: int = SAMPLE_RATE):
        self.windows = PreviewWindows(model.encoder.config.frame_stride)
        self.text = GreedyTextStream(model.vocab, model.info.blank_id, model.info.silent_ids())
        self.resampler = None if sample_rate == SAMPLE_RATE else soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1,
                                                                                      dtype="float32")
        self.audio = np.zeros(0, np.float32)  # 16 kHz samples from `base` on
        self.base = 0
        self.received = 0  # 16 kHz samples so far

    def push(self, pcm: np.ndarray, final: bool = False) -> list[tuple[PreviewWindow, np.ndarray]]:
        """Add int16 samples; the windows now ready, each with its audio."""
        floats = pcm.astype(np.float32) / 32768.0
        if self.resampler is not None:
            floats = self.resampler.resample_chunk(floats, last=final)
        self.audio = np.concatenate([self.audio, floats])
        self.received += len(floats)
        ready = [(w, self.audio[w.start - self.base: w.end - self.base]) for w in self.windows.ready(self.received, final)]
        keep_from = max(self.base, self.windows.next - self.windows.context)
        self.audio, self.base = self.audio[keep_from - self.base:], keep_from
        return ready

    def feed(self, window: PreviewWindow, emissions) -> str:
        """The words this window's core settles (windows must come in order)."""
        return self.text.feed(emissions[window.keep_from: window.keep_from + window.keep])

    def finish(self) -> str:
        return self.text.finish()


def delta_event(delta: str) -> dict:
    return {"type": "transcript.text.delta", "delta": delta}


def done_event(text: str, duration: float) -> dict:
    return {"type": "transcript.text.done", "text": text, "duration": duration}
