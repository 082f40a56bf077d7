"""Which voice-activity detector finds the inserted silences: silero vs energy.

Clips of 3-5 held-out synthetic test utterances (trimmed by the synthesizer step) joined
by 0.4-2.0 s of silence, with a noise floor (clean: -60 dBFS; noisy: 20 dB SNR white
noise). The truth is where each utterance lies; a detector is scored on frame F1 (10 ms),
on how far each true start/end is from the nearest detected one, on how many clips get
exactly the right number of segments, and on speed.

    python experiments/vad.py --manifest runs/corpus/test.jsonl --clips 60 --out docs/results/vad.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from speechssl.audio import SAMPLE_RATE, load_audio
from speechssl.data.manifest import read_manifest
from speechssl.vad import BACKENDS, VadSettings, speech_segments


def make_clip(utterances, rng: random.Random, noise_db: float | None, snr_db: float | None):
    parts, truth, pos = [], [], 0
    lead = int(rng.uniform(0.3, 1.0) * SAMPLE_RATE)
    parts.append(np.zeros(lead, np.float32))
    pos += lead
    for i, utt in enumerate(utterances):
        wave = load_audio(utt.path)
        wave = wave / max(float(np.abs(wave).max()), 1e-6) * rng.uniform(0.3, 0.9)
        parts.append(wave)
        truth.append((pos, pos + len(wave)))
        pos += len(wave)
        gap = int(rng.uniform(0.4, 2.0) * SAMPLE_RATE) if i < len(utterances) - 1 else int(0.5 * SAMPLE_RATE)
        parts.append(np.zeros(gap, np.float32))
        pos += gap
    clip = np.concatenate(parts)
    noise = np.random.default_rng(rng.randrange(1 << 30)).standard_normal(len(clip)).astype(np.float32)
    if snr_db is not None:
        speech_power = np.mean(np.concatenate([clip[s:e] for s, e in truth]) ** 2)
        clip = clip + noise * np.sqrt(speech_power / 10 ** (snr_db / 10))
    else:
        clip = clip + noise * 10 ** (noise_db / 20)
    return clip, truth


def score(truth, found, length: int) -> dict:
    hop = SAMPLE_RATE // 100
    frames = length // hop
    t, f = np.zeros(frames, bool), np.zeros(frames, bool)
    for s, e in truth:
        t[s // hop: e // hop] = True
    for seg in found:
        f[int(seg.start * 100): int(seg.end * 100)] = True
    tp, fp, fn = np.sum(t & f), np.sum(~t & f), np.sum(t & ~f)
    starts = [seg.start for seg in found] or [float("inf")]
    ends = [seg.end for seg in found] or [float("inf")]
    errors = [min(abs(s / SAMPLE_RATE - x) for x in starts) for s, _ in truth] + \
             [min(abs(e / SAMPLE_RATE - x) for x in ends) for _, e in truth]
    return {"f1": 2 * tp / max(1, 2 * tp + fp + fn), "errors": errors, "count_right": len(found) == len(truth)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default="runs/corpus/test.jsonl", help="held-out utterances to join")
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results/vad.json"))
    args = parser.parse_args()
    pool = [u for u in read_manifest(args.manifest) if 1.0 <= u.duration <= 8.0]
    rng = random.Random(args.seed)
    conditions = {"clean (-60 dBFS floor)": (-60.0, None), "noisy (20 dB SNR)": (None, 20.0)}
    results = {}
    for name, (noise_db, snr_db) in conditions.items():
        clips = [make_clip(rng.sample(pool, rng.randint(3, 5)), rng, noise_db, snr_db) for _ in range(args.clips)]
        for backend in BACKENDS:
            settings = VadSettings(backend=backend)
            speech_segments(clips[0][0], settings)  # load the model outside the timing
            start, scores = time.perf_counter(), []
            for clip, truth in clips:
                scores.append(score(truth, speech_segments(clip, settings), len(clip)))
            seconds = time.perf_counter() - start
            errors = np.array([e for s in scores for e in s["errors"]])
            results[f"{name} / {backend}"] = {
                "frame_f1": round(float(np.mean([s["f1"] for s in scores])), 4),
                "boundary_error_median_s": round(float(np.median(errors)), 3),
                "boundaries_within_0.1s": round(float(np.mean(errors <= 0.1)), 4),
                "clips_with_right_segment_count": round(float(np.mean([s["count_right"] for s in scores])), 4),
                "audio_seconds_per_second": round(sum(len(c) for c, _ in clips) / SAMPLE_RATE / seconds, 1),
            }
            print(f"{name:24s} {backend:7s} {results[f'{name} / {backend}']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python experiments/vad.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()), "clips": args.clips, "results": results},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
