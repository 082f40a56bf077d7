"""Long audio in overlapping windows whose kept frames tile the utterance exactly."""

from __future__ import annotations

from dataclasses import dataclass

FRAME_SAMPLES = 320  # the feature encoder's stride: one frame per 20 ms at 16 kHz


@dataclass(frozen=True)
class Window:
    start: int  # first sample of the audio the encoder sees
    end: int  # one past its last sample
    keep_from: int  # first frame (counted within the window) whose output is kept
    keep: int  # frames kept; they are frames [start // 320 + keep_from, ... + keep) of the whole


def windows(num_samples: int, total_frames: int, chunk_samples: int, context_samples: int) -> list[Window]:
    """Windows of at most ``chunk_samples``: a core plus ``context_samples`` on each side.

    Cores start on frame boundaries and follow each other, so the kept frames cover
    0..total_frames once each: nothing is dropped or doubled at the seams.
    """
    context = context_samples // FRAME_SAMPLES * FRAME_SAMPLES
    core = (chunk_samples - 2 * context) // FRAME_SAMPLES * FRAME_SAMPLES
    if core < FRAME_SAMPLES:
        raise ValueError("chunk must be longer than twice its context plus one frame")
    if num_samples <= chunk_samples:
        return [Window(0, num_samples, 0, total_frames)]
    out = []
    for start in range(0, num_samples, core):
        keep = min(core // FRAME_SAMPLES, total_frames - start // FRAME_SAMPLES)
        if keep <= 0:
            break
        left = max(0, start - context)
        out.append(Window(left, min(num_samples, start + core + context), (start - left) // FRAME_SAMPLES, keep))
    return out
