"""Diarization error rate on generated conversations of held-out voices.

A conversation has 2-4 speakers taking 6-12 turns of 1-8 s (a turn is one speaker's
utterances back to back), with pauses of 0.2-1.0 s and, one turn in ten, 0.2-0.6 s of
overlap with the previous speaker. Synthetic: voices of the corpus's test split; real: the
held-out AN4 test speakers and LJ Speech's test sentences (one more speaker), each clip cut
to its voiced part (Silero VAD) so the reference marks speech only. The clustering margin
(``speechssl.diarize.CLUSTER_MARGIN``) is chosen on conversations of the *validation*
voices and speakers, then the test conversations are scored once with it. DER from
pyannote.metrics (collar 0.25 s, overlap scored).

    python experiments/diarization.py --model speechssl/assets/default.safetensors --out docs/results/diarization.json
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import warnings
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from pyannote.core import Annotation, Segment
from pyannote.metrics.diarization import DiarizationErrorRate

import speechssl
from speechssl import diarize
from speechssl.audio import SAMPLE_RATE, load_audio
from speechssl.data.manifest import read_manifest
from speechssl.vad import speech_segments

MARGINS = (-0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2, 0.25)


def voiced(wave: np.ndarray, trim: bool) -> np.ndarray:
    if not trim:
        return wave
    found = speech_segments(wave)
    return wave[int(found[0].start * SAMPLE_RATE): int(found[-1].end * SAMPLE_RATE)] if found else wave[:0]


def conversation(by_speaker: dict[str, list], rng: random.Random, trim: bool):
    speakers = rng.sample(sorted(by_speaker), rng.randint(2, min(4, len(by_speaker))))
    audio = np.zeros(int(0.5 * SAMPLE_RATE), np.float32)
    reference, previous, cursor = Annotation(), None, 0.5
    for _ in range(rng.randint(6, 12)):
        speaker = rng.choice([s for s in speakers if s != previous])
        target, parts = rng.uniform(1.0, 8.0), []
        while sum(len(p) for p in parts) < target * SAMPLE_RATE:
            clip = voiced(load_audio(rng.choice(by_speaker[speaker]).path), trim)
            if len(clip) < 0.3 * SAMPLE_RATE:
                continue
            clip = clip / max(float(np.abs(clip).max()), 1e-6) * rng.uniform(0.3, 0.9)
            parts.append(clip[: int(8.0 * SAMPLE_RATE) - sum(len(p) for p in parts)])
        turn = np.concatenate(parts)
        if previous is not None and rng.random() < 0.1:
            start = cursor - rng.uniform(0.2, 0.6)  # overlap: talk over the end of the last turn
        else:
            start = cursor + rng.uniform(0.2, 1.0)
        begin = int(start * SAMPLE_RATE)
        end = begin + len(turn)
        if end > len(audio):
            audio = np.concatenate([audio, np.zeros(end - len(audio), np.float32)])
        audio[begin:end] += turn
        reference[Segment(start, start + len(turn) / SAMPLE_RATE)] = speaker
        cursor, previous = max(cursor, start + len(turn) / SAMPLE_RATE), speaker
    audio = np.concatenate([audio, np.zeros(int(0.5 * SAMPLE_RATE), np.float32)])
    audio += np.random.default_rng(rng.randrange(1 << 30)).standard_normal(len(audio)).astype(np.float32) * 1e-3
    return np.clip(audio, -1, 1), reference, len(speakers)


def prepared(model, audio):
    """The model-dependent part, once per conversation: voiced segments, windows, vectors."""
    segments = speech_segments(audio)
    spans = diarize.windows(segments)
    vectors = np.stack(model.speaker_vector([audio[int(a * SAMPLE_RATE): int(b * SAMPLE_RATE)] for a, b in spans],
                                            sample_rate=SAMPLE_RATE))
    return segments, spans, vectors


def score(model, items, margin: float) -> dict:
    metric = DiarizationErrorRate(collar=0.25, skip_overlap=False)
    right = 0
    for (segments, spans, vectors), reference, count in items:
        saved, diarize.CLUSTER_MARGIN = diarize.CLUSTER_MARGIN, margin
        try:
            turns = diarize.assign(segments, spans, vectors, model.speaker_threshold, None, None)
        finally:
            diarize.CLUSTER_MARGIN = saved
        hypothesis = Annotation()
        for turn in turns:
            hypothesis[Segment(turn.start, turn.end)] = turn.speaker
        metric(reference, hypothesis)
        right += len({t.speaker for t in turns}) == count
    return {"der": round(abs(metric), 4), "speaker_count_right": round(right / len(items), 3)}


def speakers_of(manifests: list[str], min_utterances: int = 4) -> dict[str, list]:
    by_speaker = defaultdict(list)
    for path in manifests:
        for utt in read_manifest(path):
            if utt.speaker and 0.8 <= utt.duration <= 10.0:
                by_speaker[utt.speaker].append(utt)
    return {s: u for s, u in by_speaker.items() if len(u) >= min_utterances}


def main() -> None:
    warnings.filterwarnings("ignore", module="pyannote")  # its per-call notes on annotation URIs
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint with a speaker head (default: the shipped model)")
    parser.add_argument("--corpus", default="runs/corpus", help="a `speechssl data synth` corpus")
    parser.add_argument("--real", default="runs/real", help="speechssl.data.real's splits")
    parser.add_argument("--conversations", type=int, default=30, help="per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results/diarization.json"))
    parser.add_argument("--cache", type=Path, default=Path("runs/diarization-cache"),
                        help="keeps each set's speaker vectors, so a change to clustering re-scores in seconds")
    args = parser.parse_args()
    model = speechssl.load(args.model)
    sets = {"synthetic": {"valid": [f"{args.corpus}/valid.jsonl"], "test": [f"{args.corpus}/test.jsonl"]},
            "real": {"valid": [f"{args.real}/an4-valid.jsonl", f"{args.real}/lj-valid.jsonl"],
                     "test": [f"{args.real}/an4-test.jsonl", f"{args.real}/lj-test.jsonl"]}}
    results: dict = {"margin_sweep": {}, "test": {}}
    start, built = time.perf_counter(), {}
    for name, splits in sets.items():
        rng = random.Random(f"{args.seed}-{name}")
        for split, manifests in splits.items():
            by_speaker = speakers_of(manifests)
            cache = args.cache / f"{name}-{split}-{args.conversations}-{args.seed}.pkl" if args.cache else None
            if cache is not None and cache.is_file():  # the vectors of an earlier run: re-score only
                built[name, split], minutes = pickle.loads(cache.read_bytes())
            else:
                convs = [conversation(by_speaker, rng, trim=name == "real") for _ in range(args.conversations)]
                built[name, split] = [(prepared(model, audio), ref, count) for audio, ref, count in convs]
                minutes = round(sum(len(a) for a, _, _ in convs) / SAMPLE_RATE / 60, 1)
                if cache is not None:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    cache.write_bytes(pickle.dumps((built[name, split], minutes)))
            results.setdefault("sets", {})[f"{name} {split}"] = {
                "conversations": len(built[name, split]), "speakers": len(by_speaker), "minutes": minutes}
            print(name, split, results["sets"][f"{name} {split}"], flush=True)
        results["margin_sweep"][name] = {str(m): score(model, built[name, "valid"], m) for m in MARGINS}
        print(name, "valid", results["margin_sweep"][name], flush=True)
    # One margin for every kind of speech: the best mean validation DER over both sets.
    best = min(MARGINS, key=lambda m: np.mean([results["margin_sweep"][n][str(m)]["der"] for n in sets]))
    results["margin"] = best
    for name in sets:
        results["test"][name] = score(model, built[name, "test"], best)
        print(name, "test", results["test"][name], flush=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["command"] = ("python experiments/diarization.py " +
                          " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
