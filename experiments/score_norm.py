"""Speaker-score normalisation against a cohort of training speakers: does it lower the EER?

Scores the evaluate stage's trials (synthetic test voices, held-out AN4 speakers) and the
validation trials (synthetic + AN4 validation speakers) with the checkpoint's speaker head:
raw cosine, centred on the cohort mean, and adaptive s-norm (AS-norm: each side's score
standardised by its top-k cohort scores) for four cohorts and four k; writes the EERs as
JSON (docs/results/score-norm.md reads them).

    python experiments/score_norm.py --run runs/v8 --out docs/results/score-norm.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import speechssl
from speechssl.data.manifest import read_manifest
from speechssl.data.selection import per_speaker_subset, with_speakers
from speechssl.metrics import ScoreNorm, cosine_scores
from speechssl.verification import cohort_vectors as vectors, error_figures, make_trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/v8", help="a recipe out_dir after its data stage")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped model")
    parser.add_argument("--cohort-per-speaker", type=int, default=4, help="utterances per speaker in the small cohorts")
    parser.add_argument("--out", default="docs/results/score-norm.json")
    args = parser.parse_args()
    run = Path(args.run)
    model = speechssl.load(args.checkpoint)
    start = time.perf_counter()
    real = run / "real"
    train = (read_manifest(run / "corpus" / "train.jsonl") + read_manifest(real / "an4-train.jsonl")
             + read_manifest(real / "fsdd-train.jsonl")
             + with_speakers(read_manifest(real / "librispeech.jsonl"), "^([0-9]+)-"))
    voices = read_manifest(run / "voices" / "train.jsonl") if (run / "voices" / "train.jsonl").is_file() else []
    pool = per_speaker_subset(train + voices, 8, seed=1)
    pool_vecs = vectors(model, pool)
    speakers = np.array([u.speaker for u in pool])
    in_voices = np.array([u in voices for u in pool]) if voices else np.zeros(len(pool), bool)
    first = {}
    order = np.zeros(len(pool), int)
    for i, s in enumerate(speakers):
        order[i] = first.get(s, 0)
        first[s] = order[i] + 1
    cohorts = {
        f"{args.cohort_per_speaker}_per_speaker": pool_vecs[(order < args.cohort_per_speaker) & ~in_voices],
        f"{args.cohort_per_speaker}_per_speaker_with_voices": pool_vecs[order < args.cohort_per_speaker],
        "8_per_speaker_with_voices": pool_vecs,
        "speaker_means_with_voices": np.stack([pool_vecs[speakers == s].mean(0) for s in first]),
    }
    for name, c in cohorts.items():
        cohorts[name] = c / np.linalg.norm(c, axis=1, keepdims=True)
    print({k: len(v) for k, v in cohorts.items()}, flush=True)
    sets = {
        "valid_synthetic": read_manifest(run / "corpus" / "valid.jsonl"),
        "valid_an4": read_manifest(real / "an4-valid.jsonl"),
        "test_synthetic": read_manifest(run / "corpus" / "test.jsonl"),
        "test_an4": read_manifest(real / "an4-test.jsonl"),
    }
    results = {"cohorts": {k: len(v) for k, v in cohorts.items()}}
    for name, utts in sets.items():
        utts = per_speaker_subset(utts, 40, seed=0)
        trials = make_trials([u.speaker for u in utts], seed=0)
        vecs = vectors(model, utts)
        labels = trials[:, 2]
        row = {"trials": int(len(trials)), "raw": error_figures(cosine_scores(vecs, trials), labels)["eer"]}
        for cname, cohort in cohorts.items():
            for k in (50, 100, 200, 400):
                row[f"{cname}_top{k}"] = error_figures(ScoreNorm(cohort, k).trial_scores(vecs, trials), labels)["eer"]
        centred = vecs - cohorts["8_per_speaker_with_voices"].mean(0)
        centred /= np.linalg.norm(centred, axis=1, keepdims=True)
        row["centred"] = error_figures(cosine_scores(centred, trials), labels)["eer"]
        results[name] = row
        print(name, row, flush=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
