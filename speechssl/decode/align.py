"""Word timestamps: CTC forced alignment of a transcript against its emissions."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchaudio.functional import forced_align, merge_tokens

from speechssl.decode.ctc import encode_text
from speechssl.models.heads import WORD_BOUNDARY
from speechssl.transcript import Word

def word_timestamps(emissions: Tensor, text: str, vocab: list[str], blank_id: int = 0, *,
                    frame_seconds: float) -> list[Word]:
    """Align ``text`` (normalized, space-separated words) to (frames, vocab) log-probs;
    ``frame_seconds`` is the encoder's frame spacing (ModelConfig.frame_seconds).

    The target spells the words with "|" between them, as the CTC head was trained to
    emit; a word spans from its first letter's first frame to its last letter's last frame.
    """
    words = text.split()
    if not words:
        return []
    targets = [encode_text(w, vocab) for w in words]
    boundary = vocab.index(WORD_BOUNDARY)
    flat = [label for i, word in enumerate(targets) for label in ([boundary] if i else []) + word]
    # forced_align needs a frame per label plus one between repeated labels.
    needed = len(flat) + sum(a == b for a, b in zip(flat, flat[1:]))
    if needed > emissions.shape[0]:
        raise ValueError(f"transcript needs {needed} frames, the audio has {emissions.shape[0]}")
    path, scores = forced_align(emissions.float().cpu().unsqueeze(0), torch.tensor([flat], dtype=torch.int32),
                                blank=blank_id)
    spans = merge_tokens(path[0], scores[0].exp())
    out, i = [], 0
    for word, labels in zip(words, targets):
        letters = spans[i: i + len(labels)]
        i += len(labels) + 1  # and the boundary after it
        probability = math.exp(sum(math.log(max(s.score, 1e-12)) for s in letters) / len(letters))
        out.append(Word(word, round(letters[0].start * frame_seconds, 3), round(letters[-1].end * frame_seconds, 3),
                        min(probability, 1.0)))
    return out
