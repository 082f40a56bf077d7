"""A SUPERB-style probe of a frozen encoder: a learned softmax-weighted sum of every layer's
output (each layer-normalised first), a small bidirectional LSTM and a CTC projection.

It measures what the frozen representation holds, not what fine-tuning can make of it:
only the layer weights, the LSTM and the projection learn. Sequences are packed, so a
padded batch equals its items alone (the backward direction never reads padding).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class WeightedLayerSum(nn.Module):
    def __init__(self, num_states: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_states))

    def forward(self, states: list[Tensor]) -> Tensor:
        """[(B, T, C)] * L -> (B, T, C)."""
        stacked = torch.stack([F.layer_norm(s.float(), s.shape[-1:]) for s in states])  # (L, B, T, C)
        return torch.einsum("l,lbtc->btc", self.weights.softmax(0), stacked)


class ProbeCtcHead(nn.Module):
    """(hidden states, lengths) -> (B, T, V) log-probabilities."""

    def __init__(self, num_states: int, hidden_size: int, vocab_size: int, rnn_size: int = 128):
        super().__init__()
        self.layer_sum = WeightedLayerSum(num_states)
        self.rnn = nn.LSTM(hidden_size, rnn_size, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * rnn_size, vocab_size)

    def forward(self, states: list[Tensor], lengths: Tensor) -> Tensor:
        x = self.layer_sum(states)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        y, _ = self.rnn(packed)
        y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return self.proj(y).float().log_softmax(-1)
