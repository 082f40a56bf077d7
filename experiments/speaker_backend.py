"""Speaker back ends fitted on training speakers' vectors: do they lower the held-out EER?

The checkpoint's speaker vectors of training speakers (AN4, synthetic train voices, FSDD,
LibriSpeech) fit a linear back end: centring on the AN4 training mean, LDA (scikit-learn,
shrinkage) or WCCN (whitening of the within-speaker covariance). Each is scored with AS-norm
against the recipe's kind of cohort (4 per training speaker), on the validation and test trials
of the evaluate stage (synthetic voices and AN4 speakers); raw AS-norm is the reference.

    python experiments/speaker_backend.py --run runs/v8 --json docs/results/speaker-backend.json
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

import speechssl
from speechssl.data.manifest import read_manifest
from speechssl.data.selection import per_speaker_subset, with_speakers
from speechssl.metrics import ScoreNorm
from speechssl.verification import cohort_vectors, error_figures, make_trials

EVALS = ("valid_synthetic", "valid_an4", "test_synthetic", "test_an4")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def lda(vectors: np.ndarray, labels: np.ndarray, dims: int):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    mean = vectors.mean(0)
    with warnings.catch_warnings():  # speakers with one vector (LibriSpeech) warn, and add between-speaker spread only
        warnings.simplefilter("ignore")
        fitted = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto", n_components=dims).fit(vectors - mean, labels)
    return lambda x: fitted.transform(x - mean)


def wccn(vectors: np.ndarray, labels: np.ndarray, shrink: float):
    x = unit(vectors)
    mean = x.mean(0)
    within = sum(((x[labels == s] - x[labels == s].mean(0)).T @ (x[labels == s] - x[labels == s].mean(0)))
                 for s in np.unique(labels)) / len(x)
    within += shrink * np.trace(within) / len(within) * np.eye(len(within))
    values, basis = np.linalg.eigh(within)
    whiten = basis @ np.diag(values ** -0.5) @ basis.T
    return lambda v: (unit(v) - mean) @ whiten


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/v8", help="a recipe out_dir after its data stage")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped model")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    run, model = Path(args.run), speechssl.load(args.checkpoint)
    real = run / "real"
    groups = {
        "an4_train": per_speaker_subset(read_manifest(real / "an4-train.jsonl"), 40, seed=0),
        "syn_train": per_speaker_subset(read_manifest(run / "corpus" / "train.jsonl"), 16, seed=0),
        "fsdd_train": per_speaker_subset(read_manifest(real / "fsdd-train.jsonl"), 40, seed=0),
        "libri": with_speakers(read_manifest(real / "librispeech.jsonl"), "^([0-9]+)-"),
        "valid_synthetic": per_speaker_subset(read_manifest(run / "corpus" / "valid.jsonl"), 40, seed=0),
        "valid_an4": per_speaker_subset(read_manifest(real / "an4-valid.jsonl"), 40, seed=0),
        "test_synthetic": per_speaker_subset(read_manifest(run / "corpus" / "test.jsonl"), 40, seed=0),
        "test_an4": per_speaker_subset(read_manifest(real / "an4-test.jsonl"), 40, seed=0),
    }
    vecs = {k: cohort_vectors(model, u) for k, u in groups.items()}
    speakers = {k: np.array([f"{k}/{u.speaker}" for u in utts]) for k, utts in groups.items()}
    training = ("an4_train", "syn_train", "fsdd_train", "libri")
    first4 = {k: np.array([list(speakers[k][: i + 1]).count(s) <= 4 for i, s in enumerate(speakers[k])]) for k in training}
    cohort = np.concatenate([vecs[k][first4[k]] for k in training])
    trials = {k: make_trials(list(speakers[k]), seed=0) for k in EVALS}

    def fit_on(sets):
        return np.concatenate([vecs[k] for k in sets]), np.concatenate([speakers[k] for k in sets])

    backends = {"AS-norm only (shipped)": lambda x: x,
                "centred on the AN4 training mean": lambda x, m=vecs["an4_train"].mean(0): x - m}
    for dims in (24, 32, 64):
        backends[f"LDA {dims}, all training speakers"] = lda(*fit_on(training), dims)
    backends["LDA 32, real training speakers"] = lda(*fit_on(("an4_train", "fsdd_train", "libri")), 32)
    for shrink in (0.01, 0.1):
        backends[f"WCCN {shrink}, all training speakers"] = wccn(*fit_on(training), shrink)
    backends["WCCN 0.1, AN4 training speakers"] = wccn(*fit_on(("an4_train",)), 0.1)
    rows = {}
    for name, transform in backends.items():
        norm = ScoreNorm(unit(transform(cohort)), 200)
        rows[name] = {k: error_figures(norm.trial_scores(unit(transform(vecs[k])), trials[k]), trials[k][:, 2])["eer"]
                      for k in EVALS}
        print(f"{name:40s}", "  ".join(f"{k} {v:.4f}" for k, v in rows[name].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"trials": {k: len(v) for k, v in trials.items()}, "eer": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
