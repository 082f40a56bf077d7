"""Choosing utterances by speaker: labels from a pattern over ids, and balanced per-speaker draws."""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from collections import defaultdict

from speechssl.data.manifest import Utterance

log = logging.getLogger(__name__)


def with_speakers(utterances: list[Utterance], pattern: str | None) -> list[Utterance]:
    """Rows with a speaker; rows without one take it from ``pattern`` on their id, or are left out."""
    regex = re.compile(pattern) if pattern else None
    kept = []
    for utt in utterances:
        speaker = utt.speaker
        if speaker is None and regex is not None and (match := regex.search(utt.id)):
            speaker = match.group(1)
        if speaker is not None:
            kept.append(dataclasses.replace(utt, speaker=speaker))
    if len(kept) < len(utterances):
        log.warning("left out %d of %d utterances without a speaker label", len(utterances) - len(kept), len(utterances))
    return kept


def per_speaker_subset(utterances: list[Utterance], count: int | None, seed: int) -> list[Utterance]:
    """Up to ``count`` utterances of each speaker (a seeded draw), interleaved speaker by speaker,
    so any prefix of the list stays balanced."""
    groups: dict[str, list[Utterance]] = defaultdict(list)
    for utt in sorted(utterances, key=lambda u: u.id):
        groups[utt.speaker].append(utt)  # type: ignore[index]
    rng = random.Random(seed)
    for group in groups.values():
        rng.shuffle(group)
    chosen = [group[:count] if count else group for _, group in sorted(groups.items())]
    return [g[k] for k in range(max(map(len, chosen), default=0)) for g in chosen if k < len(g)]
