"""Who spoke when: speaker turns from voice activity, windowed speaker vectors and clustering.

1. Voice activity (``speechssl.vad``) finds the voiced segments.
2. Each segment is cut into ``WINDOW`` s windows every ``HOP`` s (a shorter segment is one
   window); each window gets a speaker vector from the model's speaker head.
3. The windows are clustered (scikit-learn, average-linkage agglomerative on cosine
   distance): into ``num_speakers`` clusters when given, else until the closest clusters are
   less alike than the checkpoint's verification threshold less ``CLUSTER_MARGIN``. With enrolled speakers
   (``known``: name -> vector), a cluster takes the name of the enrolled voice it matches best
   when that score passes the threshold.
   A cluster of fewer than ``MIN_CLUSTER`` windows joins its nearest big one.
4. Every 10 ms voiced frame takes the label of the window whose centre is nearest; runs of
   one label are turns, and a turn shorter than ``MIN_TURN`` s joins its neighbour.

The order of steps is the pipeline's; the device work is in step 2, which the server puts
through its batcher (``windows`` / ``assign`` split the steps for it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from speechssl.audio import SAMPLE_RATE
from speechssl.errors import SpeechSSLError
from speechssl.vad import SpeechSegment

WINDOW = 1.5  # seconds of audio per speaker vector
HOP = 0.75
MIN_WINDOW = 0.4  # a voiced segment shorter than this gets no vector of its own
MIN_TURN = 0.3
FRAME = 0.01
DEFAULT_THRESHOLD = 0.5  # cosine, when the checkpoint stores no verification threshold
# Windows are short (1.5 s), so two of one voice score lower than the two recordings the
# verification threshold was set on: clusters merge down to that threshold less this
# (tuned on validation conversations: docs/results/diarization.md).
CLUSTER_MARGIN = 0.15
MAX_SPEAKERS = 20
MIN_CLUSTER = 3  # windows (about 3 s of speech): a smaller cluster is not counted as a speaker


class DiarizationError(SpeechSSLError, ValueError):
    """Settings the diarizer cannot use (e.g. more speakers than windows)."""


@dataclass(frozen=True)
class Turn:
    start: float  # seconds
    end: float
    speaker: str


def windows(segments: list[SpeechSegment]) -> list[tuple[float, float]]:
    """(start, end) seconds of the windows whose speaker vectors are compared."""
    out = []
    for seg in segments:
        length = seg.end - seg.start
        if length < MIN_WINDOW:
            continue
        if length <= WINDOW:
            out.append((seg.start, seg.end))
            continue
        starts = np.arange(seg.start, seg.end - WINDOW + 1e-6, HOP).tolist()
        if seg.end - (starts[-1] + WINDOW) > 0.05:  # the tail gets a window ending with the segment
            starts.append(seg.end - WINDOW)
        out.extend((round(s, 3), round(s + WINDOW, 3)) for s in starts)
    return out


def cluster(vectors: np.ndarray, threshold: float, num_speakers: int | None = None) -> np.ndarray:
    """A cluster id per unit vector, numbered in order of first appearance."""
    if num_speakers is not None and not 1 <= num_speakers <= MAX_SPEAKERS:
        raise DiarizationError(f"num_speakers must be 1..{MAX_SPEAKERS}, got {num_speakers}")
    if len(vectors) == 0:
        return np.zeros(0, int)
    if num_speakers is not None and num_speakers > len(vectors):
        raise DiarizationError(f"num_speakers={num_speakers} but the audio holds speech for only "
                               f"{len(vectors)} speaker window(s)")
    if len(vectors) == 1 or num_speakers == 1:
        return np.zeros(len(vectors), int)
    from sklearn.cluster import AgglomerativeClustering

    if num_speakers is not None:
        algo = AgglomerativeClustering(n_clusters=num_speakers, metric="cosine", linkage="average")
    else:
        algo = AgglomerativeClustering(n_clusters=None, distance_threshold=1.0 - threshold, metric="cosine",
                                       linkage="average")
    labels = algo.fit_predict(vectors)
    if num_speakers is None:
        labels = absorb_small(vectors, labels)
    order = {label: i for i, label in enumerate(dict.fromkeys(labels.tolist()))}
    return np.array([order[label] for label in labels.tolist()])


def absorb_small(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Clusters of fewer than ``MIN_CLUSTER`` windows (a cough, a stretch of noise, one odd
    window) join the big cluster whose mean they are closest to, when there is one."""
    labels = labels.copy()
    sizes = {c: int(np.sum(labels == c)) for c in set(labels.tolist())}
    big = [c for c, n in sizes.items() if n >= MIN_CLUSTER]
    if not big:
        return labels
    means = np.stack([vectors[labels == c].mean(axis=0) for c in big])
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    for i in np.flatnonzero([sizes[c] < MIN_CLUSTER for c in labels.tolist()]):
        labels[i] = big[int(np.argmax(means @ vectors[i]))]
    return labels


def names(vectors: np.ndarray, labels: np.ndarray, threshold: float, known: dict[str, np.ndarray] | None) -> list[str]:
    """A name per cluster: an enrolled speaker's when the cluster's mean vector matches it,
    else A, B, ... in order of first appearance (skipping letters an enrolled name took)."""
    count = int(labels.max()) + 1 if len(labels) else 0
    means = [vectors[labels == c].mean(axis=0) for c in range(count)]
    means = [m / max(np.linalg.norm(m), 1e-12) for m in means]
    out: list[str | None] = [None] * count
    if known:
        enrolled = list(known)
        scores = np.array([[float(np.dot(m, known[name])) for name in enrolled] for m in means])
        # Best pairs first, each name and cluster used once.
        for c, k in sorted(np.ndindex(scores.shape), key=lambda ck: -scores[ck]):
            if scores[c, k] >= threshold and out[c] is None and enrolled[k] not in out:
                out[c] = enrolled[k]
    letters = iter(chr(ord("A") + i) for i in range(26 * 2) if chr(ord("A") + i) not in out)
    return [name if name is not None else next(letters, f"S{c}") for c, name in enumerate(out)]


def turns(segments: list[SpeechSegment], spans: list[tuple[float, float]], labels: list[str]) -> list[Turn]:
    """Speaker turns over the voiced segments from the labelled windows (see the module doc)."""
    if not spans:
        return []
    centres = np.array([(a + b) / 2 for a, b in spans])
    runs: list[list] = []  # [start, end, label]; a segment's edge always ends a run
    for seg in segments:
        times = np.arange(seg.start, seg.end, FRAME)
        nearest = np.abs(times[:, None] + FRAME / 2 - centres[None, :]).argmin(axis=1) if len(times) else []
        first = len(runs)
        for t, w in zip(times.tolist(), list(nearest)):
            if len(runs) > first and runs[-1][2] == labels[w]:
                runs[-1][1] = min(t + FRAME, seg.end)
            else:
                runs.append([t, min(t + FRAME, seg.end), labels[w]])
    touching = [i > 0 and abs(runs[i - 1][1] - runs[i][0]) < 1e-6 for i in range(len(runs))]
    for i, run in enumerate(runs):  # a short run inside speech takes its neighbour's label
        if run[1] - run[0] < MIN_TURN:
            if touching[i]:
                run[2] = runs[i - 1][2]
            elif i + 1 < len(runs) and touching[i + 1]:
                run[2] = runs[i + 1][2]
    merged: list[list] = []
    for i, run in enumerate(runs):
        if merged and touching[i] and merged[-1][2] == run[2]:
            merged[-1][1] = run[1]
        else:
            merged.append(list(run))
    return [Turn(round(a, 3), round(b, 3), name) for a, b, name in merged]


def diarize(model, wave: np.ndarray, num_speakers: int | None = None, known: dict[str, np.ndarray] | None = None,
            vad=None) -> list[Turn]:
    """Speaker turns of 16 kHz ``wave`` with ``model``'s speaker head (the whole pipeline here;
    the server runs the same steps with its batcher)."""
    from speechssl.vad import speech_segments

    model.require("speaker")
    segments = speech_segments(wave, vad)
    spans = windows(segments)
    if not spans:
        return []
    vectors = np.stack(model.speaker_vector([wave[int(a * SAMPLE_RATE): int(b * SAMPLE_RATE)] for a, b in spans],
                                            sample_rate=SAMPLE_RATE))
    return assign(segments, spans, vectors, model.speaker_threshold, num_speakers, known)


def assign(segments, spans, vectors: np.ndarray, threshold: float | None, num_speakers: int | None,
           known: dict[str, np.ndarray] | None) -> list[Turn]:
    """Steps 3 and 4, from the windows' vectors."""
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    labels = cluster(vectors, threshold - CLUSTER_MARGIN, num_speakers)
    cluster_names = names(vectors, labels, threshold, known)
    return turns(segments, spans, [cluster_names[c] for c in labels.tolist()])


def to_rttm(turns_: list[Turn], file_id: str = "audio") -> str:
    """NIST RTTM: one SPEAKER line per turn."""
    return "".join(f"SPEAKER {file_id} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n"
                   for t in turns_)
