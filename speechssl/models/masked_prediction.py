"""Masked prediction (HuBERT / BEST-RQ): classify each masked frame's label from its context.

The encoder is the same ``Wav2Vec2Model`` the contrastive task trains, with the same span
masking; the labels come from a frozen labeler (``speechssl.models.targets``) applied to
the unmasked waveform. The loss is the cross-entropy over masked valid frames only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from speechssl.config import ModelConfig
from speechssl.models.wav2vec2 import Wav2Vec2Model, init_weights


@dataclass
class MaskedPredictionLoss:
    loss: Tensor  # mean cross-entropy over masked frames
    accuracy: Tensor  # fraction of masked frames whose label scores highest
    num_masked: int


class Wav2Vec2ForMaskedPrediction(nn.Module):
    """Encoder + a linear classifier over ``num_classes`` frame labels."""

    def __init__(self, config: ModelConfig, num_classes: int):
        super().__init__()
        self.config = config
        self.wav2vec2 = Wav2Vec2Model(config)
        self.label_head = nn.Linear(config.hidden_size, num_classes)
        init_weights(self.label_head)

    def forward(self, waves: Tensor, lengths: Tensor, labels: Tensor, *, generator: torch.Generator | None = None,
                time_mask: Tensor | None = None, warp: Tensor | None = None) -> MaskedPredictionLoss:
        """labels (B, T) long at the encoder's frames; ``time_mask`` is drawn from ``generator`` if not
        given; ``warp`` (B,): VTLP factors of the encoder's log-mel input (the labels stay as given)."""
        encoder = self.wav2vec2
        if time_mask is None:
            time_mask = encoder.time_mask(encoder.frame_lengths(lengths), generator)
        out = encoder(waves, lengths, time_mask=time_mask, warp=warp)
        masked = time_mask & out.valid  # span_mask keeps to valid frames; the & makes it a guarantee
        logits = self.label_head(out.last[masked]).float()  # (M, K)
        targets = labels[masked]
        num_masked = int(masked.sum())
        if num_masked == 0:
            zero = logits.sum() * 0.0
            return MaskedPredictionLoss(zero, zero.detach(), 0)
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(-1) == targets).float().mean()
        return MaskedPredictionLoss(loss, accuracy.detach(), num_masked)
