"""Long audio in overlapping windows whose kept frames tile the utterance exactly."""

from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class Window:
    start: int  # first sample of the audio the encoder sees
    end: int  # one past its last sample
    keep_from: int  # first frame (counted within the window) whose output is kept
    keep: int  # frames kept; they are frames [start // frame_samples + keep_from, ... + keep) of the whole


def windows(num_samples: int, total_frames: int, chunk_samples: int, context_samples: int,
            frame_samples: int) -> list[Window]:
    """Windows of at most ``chunk_samples``: a core plus ``context_samples`` on each side;
    ``frame_samples`` is the encoder's stride (ModelConfig.frame_stride).

    Cores start on frame boundaries and follow each other, so the kept frames cover
    0..total_frames once each: nothing is dropped or doubled at the seams.
    """
    context = context_samples // frame_samples * frame_samples
    core = (chunk_samples - 2 * context) // frame_samples * frame_samples
    if core < frame_samples:
        raise ValueError("chunk must be longer than twice its context plus one frame")
    if num_samples <= chunk_samples:
        return [Window(0, num_samples, 0, total_frames)]
    out = []
    for start in range(0, num_samples, core):
        keep = min(core // frame_samples, total_frames - start // frame_samples)
        if keep <= 0:
            break
        left = max(0, start - context)
        out.append(Window(left, min(num_samples, start + core + context), (start - left) // frame_samples, keep))
    return out
