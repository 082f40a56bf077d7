"""Where a speaker checkpoint's verification errors are, on the same trials `evaluate speaker` uses.

    python experiments/speaker_errors.py --checkpoint speechssl/assets/default.safetensors \
        --manifest runs/default/corpus/test.jsonl --per-speaker 40

At the EER threshold it counts the misses per speaker and the false alarms per speaker
pair, and gives the EER again without the different-speaker trials between two settings
of one synthetic voice (the same `engine-voice` at another `-pNN` pitch or `-sNNN` rate).
That second figure locates the errors; it is not the result, which counts every trial.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np

import speechssl
from speechssl.data.manifest import read_manifest
from speechssl.metrics import eer
from speechssl.data.selection import per_speaker_subset
from speechssl.verification import cosine_scores, make_trials


def voice(speaker: str) -> str:
    """'espeak-en-029+m7-p35-s165' -> 'espeak-en-029+m7': the voice without its pitch and rate."""
    return speaker.rsplit("-p", 1)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="speaker checkpoint (default: the shipped model)")
    parser.add_argument("--manifest", required=True, help="manifest with speaker labels, e.g. the test split")
    parser.add_argument("--per-speaker", type=int, default=40, help="utterances per speaker (as evaluate speaker)")
    parser.add_argument("--top", type=int, default=8, help="speaker pairs to list")
    args = parser.parse_args()

    utts = per_speaker_subset(read_manifest(args.manifest), args.per_speaker, seed=0)
    speakers = [u.speaker for u in utts]
    model = speechssl.load(args.checkpoint, device="cpu")
    vectors = np.stack(model.speaker_vector([u.path for u in utts]))
    trials = make_trials(speakers, seed=0)
    scores = cosine_scores(vectors, trials)
    rate, threshold = eer(scores, trials[:, 2])
    same = trials[:, 2] == 1
    misses = np.flatnonzero(same & (scores < threshold))
    false_alarms = np.flatnonzero(~same & (scores >= threshold))
    sibling = np.array([voice(speakers[a]) == voice(speakers[b]) for a, b, _ in trials]) & ~same
    report = {
        "eer": round(rate, 5), "threshold": round(threshold, 4), "trials": len(trials),
        "misses_by_speaker": Counter(speakers[trials[i, 0]] for i in misses).most_common(),
        "false_alarms_by_pair": [[*pair, n] for pair, n in Counter(
            tuple(sorted((speakers[trials[i, 0]], speakers[trials[i, 1]]))) for i in false_alarms).most_common(args.top)],
        "sibling_trials": int(sibling.sum()),
        "false_alarms_between_siblings": int(sibling[false_alarms].sum()),
        "false_alarms": len(false_alarms),
        "eer_without_sibling_trials": round(eer(scores[~sibling], trials[~sibling, 2])[0], 5),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
