"""Time and peak memory of one long embedding (issue 16: linear in length, memory bounded by the chunk).

    .venv/bin/python benchmarks/long_embed.py 150   # then 600, each in its own process (peak RSS is per process)
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import speechssl

SPEECH = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "speech.wav"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    seconds = float(sys.argv[1])
    torch.set_num_threads(1)
    model = speechssl.load(sys.argv[2] if len(sys.argv) > 2 else None, device="cpu")
    clip, _ = sf.read(SPEECH, dtype="float32")
    wave = np.resize(clip, int(seconds * 16000))  # a real clip tiled to length
    model.embed(wave[:16000], sample_rate=16000)  # warm-up
    loaded = peak_mb()
    started = time.monotonic()
    vector = model.embed(wave, sample_rate=16000)
    took = time.monotonic() - started
    print(f"{seconds:.0f} s of audio: {took:.1f} s, peak RSS {peak_mb():.0f} MB (after load {loaded:.0f} MB), "
          f"finite: {bool(np.isfinite(vector).all())}")


if __name__ == "__main__":
    main()
