"""wav2vec 2.0 assembly: waveform -> conv features -> projection (+ masking) -> transformer.

``Wav2Vec2Model`` is the encoder every head shares; ``Wav2Vec2ForPretraining`` adds
the quantizer and the contrastive objective. Parameter names match transformers'
``Wav2Vec2Model`` / ``Wav2Vec2ForPreTraining`` so interop is a key rename at most.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from speechssl.config import ModelConfig
from speechssl.models.feature_encoder import FeatureEncoder, conv_output_lengths, valid_mask
from speechssl.models.inference import quantize_int8
from speechssl.models.log_mel import LogMelFeatureEncoder
from speechssl.models.masking import sample_negatives, span_mask
from speechssl.models.quantizer import GumbelQuantizer
from speechssl.models.transformer import TransformerEncoder


@dataclass
class EncoderOutput:
    hidden_states: list[Tensor]  # [transformer input, layer 1, ..., layer N], each (B, T, C)
    lengths: Tensor  # (B,) valid frames
    features: Tensor  # (B, T, C_conv) layer-normed conv features (the quantizer's input)
    raw_features: Tensor  # (B, T, C_conv) conv features before the layer norm

    @property
    def last(self) -> Tensor:
        return self.hidden_states[-1]

    @property
    def valid(self) -> Tensor:
        return valid_mask(self.lengths, self.last.shape[1])


@dataclass
class PretrainLoss:
    loss: Tensor  # contrastive + weighted diversity + weighted feature penalty, per masked frame
    contrastive: Tensor  # mean cross-entropy over masked frames
    diversity: Tensor  # (G*V - perplexity) / (G*V)
    feature_penalty: Tensor  # mean squared conv feature over valid frames
    accuracy: Tensor  # fraction of masked frames whose positive scores highest
    perplexity: Tensor
    num_masked: int


class FeatureProjection(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dims[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dims[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feature_dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        normed = self.layer_norm(x)
        return self.dropout(self.projection(normed)), normed


class Wav2Vec2Model(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.feature_extractor = (FeatureEncoder(config) if config.front_end == "conv" else
                                  LogMelFeatureEncoder(config.mel_bins, config.conv_dims[-1], config.mel_frame_stride))
        self.feature_projection = FeatureProjection(config)
        self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        self.encoder = TransformerEncoder(config)
        self.apply(init_weights)

    def prepare_for_inference(self, quantize: str | None = None) -> Wav2Vec2Model:
        """Eval mode, with the derived inference weights built now rather than on the first call:
        fused q/k/v, the folded weight norm and its FFT spectrum (CPU), the convs' matmul layout.
        ``quantize="int8"``: int8 weights for every matmul (CPU only; see ``quantize_int8``).
        The parameters (and so checkpoints and training) are untouched.
        """
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
        self.eval()
        if quantize == "int8":
            quantize_int8(self)
        device = next(self.parameters()).device
        with torch.inference_mode():  # one receptive field of silence builds every derived weight
            self(torch.zeros(1, self.config.receptive_field, device=device))
        return self

    def freeze_bottom(self, num_layers: int) -> None:
        """Stop training everything up to transformer layer ``num_layers``: the front end, the
        projection, the mask embedding, the positional conv (and the input layer norm of the
        post-LN variant) and the first ``num_layers`` layers. Hidden states 0..num_layers then stay
        the ones these weights give, so heads that read them keep reading the same features."""
        if not 0 <= num_layers < self.config.num_layers:
            raise ValueError(f"num_layers must be in [0, {self.config.num_layers}), got {num_layers}")
        frozen = [self.feature_extractor, self.feature_projection, self.encoder.pos_conv_embed,
                  *self.encoder.layers[:num_layers]]
        if not self.encoder.pre_ln:
            frozen.append(self.encoder.layer_norm)
        for part in frozen:
            part.requires_grad_(False)
        self.masked_spec_embed.requires_grad_(False)

    def frame_lengths(self, sample_lengths: Tensor | int) -> Tensor | int:
        return conv_output_lengths(sample_lengths, *self.config.frame_geometry)

    def normalize(self, waves: Tensor, lengths: Tensor) -> Tensor:
        """Zero mean, unit variance per utterance over its valid samples; padding stays zero."""
        valid = valid_mask(lengths, waves.shape[1]).to(waves.dtype)
        count = valid.sum(1, keepdim=True).clamp(min=1)
        mean = (waves * valid).sum(1, keepdim=True) / count
        var = (((waves - mean) * valid) ** 2).sum(1, keepdim=True) / count
        return (waves - mean) * torch.rsqrt(var + 1e-7) * valid

    def forward(
        self,
        waves: Tensor,
        lengths: Tensor | None = None,
        time_mask: Tensor | None = None,
        num_layers: int | None = None,
        warp: Tensor | None = None,
    ) -> EncoderOutput:
        """waves (B, S) at 16 kHz, lengths (B,) samples; time_mask (B, T) bool frames to mask;
        warp (B,) VTLP factors of the log-mel front end (training only)."""
        if lengths is None:
            lengths = torch.full((waves.shape[0],), waves.shape[1], dtype=torch.long, device=waves.device)
        if self.config.normalize_waveform:
            waves = self.normalize(waves, lengths)
        if warp is not None and self.config.front_end != "log_mel":
            raise ValueError("a VTLP warp needs the log-mel front end")
        raw, frames = self.feature_extractor(waves, lengths, *([] if warp is None else [warp]))  # (B, T, C_conv)
        x, normed = self.feature_projection(raw)  # (B, T, C)
        valid = valid_mask(frames, x.shape[1])
        x = self.apply_mask(x, time_mask)
        hidden = self.encoder(x, valid, num_layers=num_layers)
        return EncoderOutput(hidden, frames, normed, raw)

    def apply_mask(self, x: Tensor, time_mask: Tensor | None) -> Tensor:
        if time_mask is not None:
            x = torch.where(time_mask.unsqueeze(-1), self.masked_spec_embed.to(x.dtype), x)
        cfg = self.config
        if self.training and cfg.mask_channel_prob > 0:
            # Channel masking (SpecAugment on features): zero random spans of channels.
            lengths = torch.full((x.shape[0],), x.shape[-1], dtype=torch.long)
            channels = span_mask(lengths, x.shape[-1], cfg.mask_channel_prob, cfg.mask_channel_length)
            x = x.masked_fill(channels.to(x.device).unsqueeze(1), 0.0)
        return x

    def time_mask(self, frame_lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        cfg = self.config
        max_len = int(frame_lengths.max()) if len(frame_lengths) else 0
        return span_mask(frame_lengths.cpu(), max_len, cfg.mask_prob, cfg.mask_length, cfg.min_masks, generator).to(
            frame_lengths.device
        )


class Wav2Vec2ForPretraining(nn.Module):
    """Encoder + Gumbel quantizer + projections for the contrastive task."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.wav2vec2 = Wav2Vec2Model(config)
        self.quantizer = GumbelQuantizer(config)
        self.project_hid = nn.Linear(config.hidden_size, config.proj_codevector_dim)
        self.project_q = nn.Linear(config.codevector_dim, config.proj_codevector_dim)
        for proj in (self.project_hid, self.project_q):
            init_weights(proj)

    def forward(
        self,
        waves: Tensor,
        lengths: Tensor,
        *,
        num_negatives: int = 100,
        logit_temperature: float = 0.1,
        diversity_weight: float = 0.1,
        feature_penalty_weight: float = 10.0,
        generator: torch.Generator | None = None,
        time_mask: Tensor | None = None,
        negatives: Tensor | None = None,
    ) -> PretrainLoss:
        """Mask, encode, quantize, and score each masked frame against K distractors.

        ``time_mask`` and ``negatives`` may be given (tests, parity); otherwise they are
        drawn from ``generator``.
        """
        encoder = self.wav2vec2
        frames = encoder.frame_lengths(lengths)
        if time_mask is None:
            time_mask = encoder.time_mask(frames, generator)
        out = encoder(waves, lengths, time_mask=time_mask)
        if negatives is None:
            negatives = sample_negatives(time_mask, num_negatives, generator)
        quantized = self.quantizer(out.features, time_mask, generator)
        targets = self.project_q(quantized.quantized)  # (B, T, P)
        context = self.project_hid(out.last)  # (B, T, P)
        logits = contrastive_logits(context, targets, negatives, time_mask, logit_temperature)  # (M, K+1)
        num_masked = int(time_mask.sum())
        contrastive = F.cross_entropy(logits.float(), torch.zeros(num_masked, dtype=torch.long, device=logits.device))
        num_entries = self.quantizer.num_groups * self.quantizer.num_vars
        diversity = (num_entries - quantized.perplexity) / num_entries
        # Over valid frames only: padding frames are near zero and would dilute it by the padding ratio.
        feature_penalty = out.raw_features.float().pow(2)[out.valid].mean()
        loss = contrastive + diversity_weight * diversity + feature_penalty_weight * feature_penalty
        accuracy = (logits.argmax(-1) == 0).float().mean() if num_masked else logits.new_zeros(())
        return PretrainLoss(loss, contrastive, diversity, feature_penalty, accuracy.detach(), quantized.perplexity.detach(), num_masked)


def init_weights(module: nn.Module) -> None:
    """The reference initialisation (fairseq / transformers); the conv stack needs He init
    or its activations vanish after seven layers. ``Module.apply`` visits children first,
    so the FeatureProjection branch overrides its Linear's default."""
    if isinstance(module, FeatureProjection):
        bound = module.projection.in_features**-0.5
        nn.init.uniform_(module.projection.weight, -bound, bound)
        nn.init.uniform_(module.projection.bias, -bound, bound)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):  # WavLM's relative position bias table (BERT's init)
        nn.init.normal_(module.weight, std=0.02)
    elif isinstance(module, nn.Conv1d):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            bound = (module.groups / (module.in_channels * module.kernel_size[0])) ** 0.5
            nn.init.uniform_(module.bias, -bound, bound)


def contrastive_logits(context: Tensor, targets: Tensor, negatives: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """Cosine similarity of each masked frame's context to its target (column 0) and K distractors.

    context, targets (B, T, P); negatives (B, T, K) frame indices; mask (B, T) -> (M, K+1) logits.
    A distractor identical to the positive (same codewords) is excluded with -inf.
    """
    b, t, p = targets.shape
    flat = targets.reshape(b * t, p)
    rows = mask.flatten().nonzero().flatten()  # (M,) masked frames in (B*T) order
    # Distractors index frames of the same utterance: offset them into (B*T).
    offsets = (rows // t)[:, None] * t  # (M, 1)
    candidate_index = torch.cat([rows[:, None], negatives.reshape(b * t, -1)[rows] + offsets], dim=1)  # (M, K+1)
    candidates = flat[candidate_index]  # (M, K+1, P)
    unit = F.normalize(candidates.float(), dim=-1, eps=1e-8)
    query = F.normalize(context.reshape(b * t, p)[rows].float(), dim=-1, eps=1e-8)  # (M, P)
    logits = torch.bmm(unit, query.unsqueeze(-1)).squeeze(-1) / temperature  # (M, K+1)
    same = (candidates[:, 1:] == candidates[:, :1]).all(-1)  # (M, K)
    return torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, float("-inf"))], dim=1)
