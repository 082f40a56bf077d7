"""Span masking of latent frames and sampling of contrastive distractors.

Both take a ``torch.Generator`` so a caller can reproduce them exactly (tests,
resume). Padding frames are never masked and never drawn as distractors.
"""

from __future__ import annotations

import torch
from torch import Tensor


def span_mask(
    lengths: Tensor,
    max_len: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B,) valid frame counts -> (B, max_len) bool, True on masked frames.

    Per utterance of L frames, ``int(mask_prob * L / mask_length + u)`` span starts
    (u ~ U[0, 1), at least ``min_masks``) are drawn without replacement from
    [0, L - mask_length]; spans may overlap, so ~49% of frames end up masked at the
    paper's 0.65 / 10. Utterances shorter than one span are masked nowhere.
    """
    mask = torch.zeros(len(lengths), max_len, dtype=torch.bool)
    if mask_prob <= 0:
        return mask.to(lengths.device)
    for i, length in enumerate(lengths.tolist()):
        starts_available = length - mask_length + 1
        if starts_available <= 0:
            continue
        u = torch.rand((), generator=generator).item()
        num_spans = max(min_masks, int(mask_prob * length / mask_length + u))
        num_spans = min(num_spans, starts_available)
        starts = torch.randperm(starts_available, generator=generator)[:num_spans]
        frames = (starts[:, None] + torch.arange(mask_length)[None, :]).flatten()
        mask[i, frames] = True
    return mask.to(lengths.device)


def sample_negatives(mask: Tensor, num_negatives: int, generator: torch.Generator | None = None) -> Tensor:
    """Distractor frame indices for every frame: (B, T, K) long, into the same utterance.

    For each masked frame, K frames drawn uniformly (with replacement) from the
    *other* masked frames of its utterance. Rows of unmasked frames are filled with
    their own index and are ignored by the loss. An utterance with a single masked
    frame has no distractors; its rows point at the frame itself and the loss masks
    them out as equal to the positive.
    """
    b, t = mask.shape
    out = torch.arange(t).expand(b, num_negatives, t).transpose(1, 2).clone()  # (B, T, K)
    for i in range(b):
        masked = mask[i].nonzero().flatten().cpu()  # (M,)
        m = len(masked)
        if m < 2:
            continue
        # Draw from M-1 candidates and skip over the positive itself.
        draws = torch.randint(0, m - 1, (m, num_negatives), generator=generator)  # (M, K)
        own = torch.arange(m)[:, None]
        draws = draws + (draws >= own).long()
        out[i, masked] = masked[draws]
    return out.to(mask.device)
