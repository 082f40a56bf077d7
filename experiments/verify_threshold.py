"""Where should verify's threshold sit? Misses and false alarms on every trial set, at the EER
point of each validation set and at the checkpoint's stored threshold, scored the way verify
scores (the checkpoint's cohort normalisation, or cosines without one).

    python experiments/verify_threshold.py --run runs/v8 > docs/results/verify-threshold-v8.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import speechssl
from speechssl.data.manifest import read_manifest
from speechssl.data.selection import per_speaker_subset
from speechssl.metrics import cosine_scores
from speechssl.verification import cohort_vectors, error_figures, make_trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/v8", help="a recipe out_dir after its data stage")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped model")
    args = parser.parse_args()
    run = Path(args.run)
    model = speechssl.load(args.checkpoint)
    sets = {"an4_valid": run / "real" / "an4-valid.jsonl", "synthetic_valid": run / "corpus" / "valid.jsonl",
            "an4_test": run / "real" / "an4-test.jsonl", "synthetic_test": run / "corpus" / "test.jsonl"}
    scored = {}
    for name, path in sets.items():
        utts = per_speaker_subset(read_manifest(path), 40, seed=0)  # as the evaluate stage draws them
        trials = make_trials([u.speaker for u in utts], seed=0)
        vectors = cohort_vectors(model, utts)
        norm = model.score_norm
        scores = cosine_scores(vectors, trials) if norm is None else norm.trial_scores(vectors, trials)
        scored[name] = (scores, trials[:, 2])
    thresholds = {f"EER point of {name}": error_figures(*scored[name])["eer_threshold"]
                  for name in ("an4_valid", "synthetic_valid")}
    thresholds["stored"] = model.verify_threshold
    for label, threshold in thresholds.items():
        print(f"{label}: threshold {threshold:.4f}")
        for name, (scores, labels) in scored.items():
            miss, false_alarm = np.mean(scores[labels == 1] < threshold), np.mean(scores[labels == 0] >= threshold)
            print(f"    {name:16} miss {miss:.3f}  false alarm {false_alarm:.3f}")


if __name__ == "__main__":
    main()
