"""The module finetune-ctc optimises: the encoder and a CTC head (or, for experiments, a probe)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from speechssl.config import ModelConfig
from speechssl.models.heads import CtcHead
from speechssl.models.probe import ProbeCtcHead
from speechssl.models.wav2vec2 import Wav2Vec2Model


class CtcModel(nn.Module):
    """Encoder + CTC head; state dict keys ``wav2vec2.*`` and ``ctc_head.*`` as in the checkpoint.

    ``encoder``: an encoder already built for ``config`` (e.g. with a checkpoint's weights,
    ``speechssl.models.build.encoder``); by default a new one with random weights.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, head_dropout: float = 0.1, probe: bool = False,
                 encoder: Wav2Vec2Model | None = None):
        super().__init__()
        self.config = config
        self.wav2vec2 = Wav2Vec2Model(config) if encoder is None else encoder
        if probe:
            self.probe = ProbeCtcHead(config.num_layers + 1, config.hidden_size, vocab_size)
            self.wav2vec2.requires_grad_(False)
        else:
            self.ctc_head = CtcHead(config.hidden_size, vocab_size, head_dropout)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor, time_mask: torch.Tensor | None = None,
                freeze_encoder: bool = False):
        """(B, T, V) log-probs and (B,) frame lengths. A frozen feature encoder needs no switch
        here: with requires_grad off its parameters, autograd records nothing for the conv stack."""
        if hasattr(self, "probe"):
            with torch.no_grad():  # train mode still applies the masking, as augmentation
                out = self.wav2vec2(waves, lengths, time_mask=time_mask)
            return self.probe(out.hidden_states, out.lengths), out.lengths
        with torch.no_grad() if freeze_encoder else contextlib.nullcontext():
            out = self.wav2vec2(waves, lengths, time_mask=time_mask)
        return self.ctc_head(out.last), out.lengths
