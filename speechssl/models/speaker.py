"""The module train-speaker optimises: encoder + SpeakerHead + AAM softmax classifier.

Only the encoder and the head are saved (``wav2vec2.*``, ``speaker_head.*``); the AAM class
centres (``aam.*``) belong to the training speakers and are dropped from checkpoints.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from speechssl.models.heads import AamSoftmax, SpeakerHead, SpeakerHeadConfig
from speechssl.models.wav2vec2 import Wav2Vec2Model


class SpeakerModel(nn.Module):
    """Encoder + SpeakerHead + AAM classifier; keys ``wav2vec2.*``, ``speaker_head.*``, ``aam.*``.

    ``aam``: AamSoftmax's margin and scale, by name (its defaults otherwise).
    """

    def __init__(self, encoder: Wav2Vec2Model, head: SpeakerHeadConfig, num_classes: int, **aam: float):
        super().__init__()
        self.config = config = encoder.config
        self.wav2vec2 = encoder
        self.speaker_head = SpeakerHead.from_config(config.hidden_size, config.num_layers, head)
        self.aam = AamSoftmax(head.dim, num_classes, **aam)
        self.live_layers = 0  # top transformer layers run from the bank's states (fine-tuning)

    def forward(self, states: Tensor, lengths: Tensor, labels: Tensor, normalized: bool = False,
                mel: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Bank states (B, T, L+1, C) and log-mel (B, T, bins) -> (AAM loss, accuracy of the nearest class centre)."""
        states = self.run_live_layers(states.float(), lengths)
        vectors = self.speaker_head(states, lengths, normalized=normalized, mel=mel)
        accuracy = (self.aam.cosine(vectors).argmax(-1) == labels).float().mean()
        return self.aam(vectors, labels), accuracy.detach()

    def run_live_layers(self, states: Tensor, lengths: Tensor) -> Tensor:
        """Recompute the top ``live_layers`` states from the bank's (raw) state below them, so those layers learn."""
        if not self.live_layers:
            return states
        top = self.speaker_head.num_layers
        start = top - self.live_layers
        valid = torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]
        live = self.wav2vec2.encoder(states[:, :, start], valid, num_layers=top, start_layer=start)[1:]
        return torch.cat([states[:, :, : start + 1], torch.stack(live, dim=2)], dim=2)
