"""Speaker verification: trial lists, cosine scoring, and the evaluation with its baselines.

A trial is a pair of utterances and a label (1 = same speaker). ``evaluate_speaker``
scores the same trials three ways: the checkpoint's speaker head, the mean-pooled
encoder features without the head, and mean MFCCs (librosa), and reports EER and
minDCF for each. A checkpoint with a cohort (``ScoreNorm``) has its head's scores
normalised the way ``verify`` scores them, and reported raw beside.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from speechssl.audio import SAMPLE_RATE, load_audio
from speechssl.errors import SpeechSSLError
from speechssl.data.manifest import Utterance
from speechssl.metrics import ScoreNorm, cosine_scores, eer, min_dcf
from speechssl.transcript import Verification  # noqa: F401  (a result; it was defined here)

if TYPE_CHECKING:
    from speechssl.api import SpeechModel


class TrialError(SpeechSSLError, ValueError):
    """Trials that cannot be made or read; the message says why (and where, for a file)."""


def make_trials(speakers: Sequence[str | None], seed: int = 0) -> np.ndarray:
    """(N, 3) int rows (a, b, label): every same-speaker pair (label 1) and as many distinct
    different-speaker pairs (label 0), drawn with ``seed`` (all of them if there are fewer)."""
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, speaker in enumerate(speakers):
        if speaker is None:
            raise TrialError(f"utterance {i} has no speaker label")
        by_speaker[speaker].append(i)
    if len(by_speaker) < 2:
        raise TrialError(f"need utterances of at least two speakers for trials, got {len(by_speaker)}")
    same = [(a, b) for group in by_speaker.values() for k, a in enumerate(group) for b in group[k + 1:]]
    if not same:
        raise TrialError("need at least one speaker with two or more utterances for same-speaker trials")
    speaker_index = {speaker: k for k, speaker in enumerate(by_speaker)}
    label = np.array([speaker_index[s] for s in speakers])
    n = len(speakers)
    possible = (n * (n - 1)) // 2 - len(same)
    wanted = min(len(same), possible)
    rng = np.random.default_rng(seed)
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < wanted:
        a, b = rng.integers(0, n, size=(2, 2 * (wanted - len(chosen)) + 16))
        for i, j in zip(a, b):
            if label[i] != label[j] and len(chosen) < wanted:
                chosen.add((int(min(i, j)), int(max(i, j))))
    different = sorted(chosen)
    rows = [(a, b, 1) for a, b in same] + [(a, b, 0) for a, b in different]
    return np.array(rows, dtype=np.int64)


def read_trials(path: str | Path, utterances: Sequence[Utterance]) -> np.ndarray:
    """A trial file: one ``LABEL A B`` per line (VoxCeleb style), LABEL 1/0 or target/nontarget,
    A and B utterance ids or audio paths of the manifest's rows -> (N, 3) rows as in make_trials."""
    path = Path(path)
    if not path.is_file():
        raise TrialError(f"trial file not found: {path}")
    index: dict[str, int] = {}
    for i, utt in enumerate(utterances):
        index[utt.id] = index[utt.path] = i
    labels = {"1": 1, "0": 0, "target": 1, "nontarget": 0}
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3 or parts[0].lower() not in labels:
            raise TrialError(f"{path}:{number}: expected 'LABEL A B' with LABEL 1, 0, target or nontarget")
        missing = [p for p in parts[1:] if p not in index and str(path.parent / p) not in index]
        if missing:
            raise TrialError(f"{path}:{number}: {missing[0]!r} is not an id or path in the manifest")
        a, b = (index.get(p, index.get(str(path.parent / p))) for p in parts[1:])
        rows.append((a, b, labels[parts[0].lower()]))
    if not rows:
        raise TrialError(f"{path}: no trials")
    return np.array(rows, dtype=np.int64)


def cohort_vectors(model: SpeechModel, utterances: Sequence[Utterance], batch_files: int = 64) -> np.ndarray:
    """(N, D) unit speaker vectors of ``utterances`` (a per-speaker draw of training speakers)."""
    vectors: list[np.ndarray] = []
    for i in range(0, len(utterances), batch_files):
        vectors += model.speaker_vector([u.path for u in utterances[i : i + batch_files]])
    return np.stack(vectors).astype(np.float32)


def norm_threshold(model: SpeechModel, cohort: np.ndarray, top_k: int, valid: Sequence[Utterance],
                   seed: int = 0) -> tuple[ScoreNorm, dict[str, float]]:
    """The ScoreNorm whose threshold is the EER point of ``valid``'s trials, and its figures there."""
    trials = make_trials([u.speaker for u in valid], seed)
    vectors = cohort_vectors(model, valid)
    norm = ScoreNorm(cohort, top_k)
    figures = error_figures(norm.trial_scores(vectors, trials), trials[:, 2])
    figures["cosine_eer"] = error_figures(cosine_scores(vectors, trials), trials[:, 2])["eer"]
    return ScoreNorm(cohort, top_k, figures["eer_threshold"]), figures


def error_figures(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    rate, threshold = eer(scores, labels)
    return {"eer": round(rate, 5), "min_dcf": round(min_dcf(scores, labels, p_target=0.01), 5),
            "eer_threshold": round(threshold, 5)}


def mfcc_mean(wave: np.ndarray, n_mfcc: int = 20) -> np.ndarray:
    """Mean over frames of MFCCs 1..n_mfcc-1 (c0, the loudness, is left out): the MFCC baseline."""
    import librosa

    return librosa.feature.mfcc(y=wave, sr=SAMPLE_RATE, n_mfcc=n_mfcc)[1:].mean(axis=1)


def evaluate_speaker(model: SpeechModel, utterances: Sequence[Utterance], trials: np.ndarray | None = None,
                     seed: int = 0, baselines: bool = True, batch_files: int = 64) -> dict:
    """EER and minDCF (p_target 0.01) of the speaker head on a manifest's trials, with the
    baselines on the same trials; the miss and false-alarm rates at the stored threshold."""
    model.require("speaker")
    if trials is None:
        trials = make_trials([u.speaker for u in utterances], seed)
    used = np.unique(trials[:, :2])
    start = time.perf_counter()
    head, layer_means, mfcc = {}, {}, {}
    for i in range(0, len(used), batch_files):
        chunk = [int(k) for k in used[i : i + batch_files]]
        waves = [load_audio(utterances[k].path) for k in chunk]
        vectors, means = model.speaker_outputs(waves, layer_means=baselines)
        for k, wave, vector, mean in zip(chunk, waves, vectors, means):
            head[k], layer_means[k] = vector, mean
            if baselines:
                mfcc[k] = mfcc_mean(wave)
    wall = time.perf_counter() - start
    labels = trials[:, 2]
    n = len(utterances)

    def stack(table: dict[int, np.ndarray]) -> np.ndarray:
        first = next(iter(table.values()))
        out = np.zeros((n, *first.shape), dtype=np.float32)
        for k, value in table.items():
            out[k] = value
        return out

    vectors = stack(head)
    cosines = cosine_scores(vectors, trials)
    norm = model.score_norm
    scores = cosines if norm is None else norm.trial_scores(vectors, trials)
    threshold = model.speaker_threshold if norm is None else norm.threshold
    result = {
        "checkpoint": model.name, "utterances": int(len(used)),
        "speakers": len({utterances[k].speaker for k in used}),
        "trials": int(len(trials)), "target_trials": int(labels.sum()), "nontarget_trials": int((1 - labels).sum()),
        **error_figures(scores, labels),
        "scoring": "cosine" if norm is None else f"as-norm (top {norm.top_k} of {len(norm.cohort)} cohort vectors)",
        **({} if norm is None else {"cosine": error_figures(cosines, labels)}),
        "threshold": threshold,
        "at_threshold": None if threshold is None else {
            "miss": round(float((scores[labels == 1] < threshold).mean()), 5),
            "false_alarm": round(float((scores[labels == 0] >= threshold).mean()), 5)},
    }
    if baselines:
        means = stack(layer_means)  # (N, L+1, C)
        by_layer = [error_figures(cosine_scores(means[:, layer], trials), labels) for layer in range(means.shape[1])]
        last = means.shape[1] - 1
        result["baselines"] = {
            "mean_pooled": {"layer": last, **by_layer[last]},
            "mean_pooled_eer_by_layer": [f["eer"] for f in by_layer],
            "mfcc_mean": error_figures(cosine_scores(stack(mfcc), trials), labels),
        }
    result["seconds"] = round(wall, 1)
    return result
