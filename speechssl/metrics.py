"""Evaluation metrics.

Speech-to-text: corpus word and character error rates (jiwer).
Speaker verification: equal error rate and the minimum detection cost, from trial
scores (higher = more alike) and labels (1 = same speaker). A trial is accepted when
its score is >= the threshold. The scores: the cosine of two speaker vectors, or its
adaptive s-norm against a cohort of training speakers (ScoreNorm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
import numpy as np


def _error_curves(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, miss rates, false-alarm rates) at every distinct score, ascending, plus one above the top."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in length ({scores.size} and {labels.size})")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite numbers")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (different) or 1 (same)")
    target = labels == 1
    if target.all() or not target.any():
        raise ValueError("need both target (label 1) and non-target (label 0) trials")
    thresholds = np.unique(scores)
    thresholds = np.append(thresholds, np.nextafter(thresholds[-1], np.inf))  # accept nothing
    # Misses: targets scored below the threshold; false alarms: non-targets at or above it.
    pos, neg = np.sort(scores[target]), np.sort(scores[~target])
    miss = np.searchsorted(pos, thresholds, side="left") / pos.size
    false_alarm = 1.0 - np.searchsorted(neg, thresholds, side="left") / neg.size
    return thresholds, miss, false_alarm


def eer(scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float]:
    """(equal error rate, threshold): where the miss and false-alarm rates meet.

    Between the two operating points that bracket the crossing, both the rate and the
    threshold are interpolated linearly (the ROC convex hull segment).
    """
    thresholds, miss, false_alarm = _error_curves(scores, labels)
    k = int(np.argmax(miss >= false_alarm))  # first point where misses catch up; exists (the last point)
    if miss[k] == false_alarm[k] or k == 0:
        return float((miss[k] + false_alarm[k]) / 2), float(thresholds[k])
    before, after = false_alarm[k - 1] - miss[k - 1], miss[k] - false_alarm[k]  # both > 0
    w = before / (before + after)
    rate = miss[k - 1] + w * (miss[k] - miss[k - 1])
    return float(rate), float(thresholds[k - 1] + w * (thresholds[k] - thresholds[k - 1]))


def min_dcf(scores: Sequence[float], labels: Sequence[int], p_target: float = 0.01, c_miss: float = 1.0,
            c_fa: float = 1.0) -> float:
    """Minimum normalized detection cost over thresholds (NIST SRE):
    min_t [c_miss * P_miss(t) * p_target + c_fa * P_fa(t) * (1 - p_target)] / min(c_miss * p_target, c_fa * (1 - p_target)).
    """
    if not 0 < p_target < 1:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    _, miss, false_alarm = _error_curves(scores, labels)
    cost = c_miss * miss * p_target + c_fa * false_alarm * (1 - p_target)
    return float(cost.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


def error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus WER and CER (jiwer); an empty hypothesis counts as all deletions."""
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        return {"wer": 0.0, "cer": 0.0}
    refs, hyps = zip(*pairs)
    return {"wer": float(jiwer.wer(list(refs), list(hyps))), "cer": float(jiwer.cer(list(refs), list(hyps)))}


def cosine_scores(vectors: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """Cosine similarity of each trial's two vectors; vectors (N, D), any length."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.einsum("nd,nd->n", unit[trials[:, 0]], unit[trials[:, 1]])


@dataclass(frozen=True)
class ScoreNorm:
    """Adaptive s-norm (AS-norm): a trial's cosine, standardised on each side by the mean and
    spread of that recording's ``top_k`` highest cosines against a cohort of training
    speakers, and the two averaged. A recording that resembles many voices (a common
    channel, a short clip) gets high cosines with everyone; this takes that out, so one
    threshold suits voices and recording conditions the head saw little of.
    """

    cohort: np.ndarray  # (N, D) unit speaker vectors of training speakers
    top_k: int
    threshold: float | None = None  # same speaker when the normalised score >= it

    def statistics(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of each vector's top_k cohort cosines; vectors (N, D) unit length."""
        against = vectors.astype(np.float32) @ self.cohort.T.astype(np.float32)
        k = min(self.top_k, len(self.cohort))
        top = np.partition(against, len(self.cohort) - k, axis=1)[:, -k:]
        return top.mean(1), top.std(1) + 1e-6

    def trial_scores(self, vectors: np.ndarray, trials: np.ndarray) -> np.ndarray:
        """Normalised scores of ``trials`` (rows a, b, ...) over ``vectors`` (N, D)."""
        mean, std = self.statistics(vectors)
        raw = cosine_scores(vectors, trials)
        a, b = trials[:, 0], trials[:, 1]
        return 0.5 * ((raw - mean[a]) / std[a] + (raw - mean[b]) / std[b])

    def score(self, first: np.ndarray, second: np.ndarray) -> float:
        return float(self.trial_scores(np.stack([first, second]), np.array([[0, 1]]))[0])
