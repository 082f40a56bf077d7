"""Task heads on top of the encoder's frames.

A checkpoint stores each head's weights under its own prefix (``ctc_head.``,
``speaker_head.``) beside the encoder's (``wav2vec2.``), and what is needed to rebuild
the head in its metadata, so one file can hold the encoder and every head.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import string
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from speechssl.config import SAMPLE_RATE

# Characters: blank (CTC), word boundary "|" (as fairseq and transformers write it),
# apostrophe, a-z. Text is normalized to this set by speechssl.data.manifest.normalize_text.
BLANK = "<blank>"
WORD_BOUNDARY = "|"
CHAR_VOCAB = [BLANK, WORD_BOUNDARY, "'", *string.ascii_lowercase]


class CtcHead(nn.Module):
    """Dropout then one linear layer from hidden size to the vocabulary: log-probabilities per frame."""

    def __init__(self, hidden_size: int, vocab_size: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.proj(self.dropout(hidden)).float().log_softmax(-1)


class AttentiveStatsPooling(nn.Module):
    """Attention-weighted mean and standard deviation over valid frames (Okabe et al. 2018).

    (B, T, C) frames and (B, T) validity -> (B, 2C). Padding gets zero weight, so a
    padded batch pools each item exactly as that item alone.
    """

    def __init__(self, channels: int, attention_dim: int = 128):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(channels, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        if not bool(valid.any(1).all()):
            raise ValueError("attentive statistics pooling needs at least one valid frame per item")
        x = x.float().masked_fill(~valid.unsqueeze(-1), 0.0)
        scores = self.attention(x).squeeze(-1).masked_fill(~valid, float("-inf"))  # (B, T)
        weights = scores.softmax(dim=1).unsqueeze(-1)  # (B, T, 1), zero on padding
        mean = (weights * x).sum(1)  # (B, C)
        var = (weights * x.square()).sum(1) - mean.square()
        return torch.cat([mean, var.clamp(min=1e-5).sqrt()], dim=-1)  # (B, 2C)


@functools.lru_cache(maxsize=4)
def _mel_filters(bins: int) -> Tensor:
    """(201, bins) slaney mel filterbank for a 400-point FFT at 16 kHz: made once per size, not per batch."""
    import torchaudio

    with torch.inference_mode(False):  # a cached inference tensor could not take part in autograd later
        return torchaudio.functional.melscale_fbanks(201, 20.0, 7600.0, bins, SAMPLE_RATE, norm="slaney",
                                                     mel_scale="slaney")


def log_mel_frames(waves: Tensor, frames: int, bins: int) -> Tensor:
    """(B, N) 16 kHz waves -> (B, frames, bins) log-mel spectra, one per encoder frame.

    25 ms windows every 20 ms, uncentred: the conv feature encoder's receptive field and
    stride, so frame t covers the same samples as the encoder's frame t. Each frame is
    normalized over its bins, which keeps the spectral shape and drops the loudness.
    """
    window = torch.hann_window(400, device=waves.device)
    if waves.shape[1] < 400:
        waves = F.pad(waves, (0, 400 - waves.shape[1]))
    spec = torch.stft(waves.float(), n_fft=400, hop_length=320, win_length=400, window=window, center=False,
                      return_complex=True).abs().square()  # (B, 201, T')
    logmel = (spec.transpose(1, 2) @ _mel_filters(bins).to(waves.device)).clamp(min=1e-8).log()  # (B, T', bins)
    logmel = F.pad(logmel, (0, 0, 0, max(0, frames - logmel.shape[1])))[:, :frames]
    return F.layer_norm(logmel, (bins,))


# Pitch: periods of 60-500 Hz voices, looked for in 40 ms windows (two periods of the lowest).
PITCH_WINDOW, PITCH_MIN_HZ, PITCH_MAX_HZ = 640, 60.0, 500.0
PITCH_OCTAVE_COST = 0.1  # per octave of lag: a period's double correlates as well, so longer lags pay


def pitch_frames(waves: Tensor, frames: int) -> Tensor:
    """(B, N) 16 kHz waves -> (B, frames, 2): log2(F0 / 150 Hz) and voicing (0-1) per encoder frame.

    A 40 ms window centred on each 20 ms frame; the normalised autocorrelation (divided by the
    window's own, as Boersma's method does) peaks at the period of a voiced frame. Its highest
    peak, less a small cost per octave of lag, gives F0; the peak's height says how voiced the
    frame is. The log-mel's 25 ms windows cannot resolve the harmonics of most voices: sibling
    voices that differ only in pitch were the speaker head's commonest confusion.
    """
    hop, centre = 320, 200  # the encoder frame t covers samples [320 t, 320 t + 400)
    pad_left = PITCH_WINDOW // 2 - centre
    needed = pad_left + hop * (frames - 1) + PITCH_WINDOW
    padded = F.pad(waves.float(), (pad_left, max(0, needed - pad_left - waves.shape[1])))
    chunks = padded.unfold(1, PITCH_WINDOW, hop)[:, :frames]  # (B, frames, W): padded to hold them all
    window = torch.hann_window(PITCH_WINDOW, device=waves.device)
    chunks = (chunks - chunks.mean(-1, keepdim=True)) * window
    n_fft = 2 * PITCH_WINDOW
    auto = torch.fft.irfft(torch.fft.rfft(chunks, n_fft).abs().square(), n_fft)[..., :PITCH_WINDOW]
    window_auto = torch.fft.irfft(torch.fft.rfft(window, n_fft).abs().square(), n_fft)[:PITCH_WINDOW]
    lo, hi = int(SAMPLE_RATE / PITCH_MAX_HZ), int(SAMPLE_RATE / PITCH_MIN_HZ)
    lags = torch.arange(lo, hi + 1, device=waves.device)
    corr = (auto[..., lo : hi + 1] / auto[..., :1].clamp(min=1e-8)) / (window_auto[lo : hi + 1] / window_auto[0])
    cost = PITCH_OCTAVE_COST * torch.log2(lags.float() / lo)
    best = (corr - cost).argmax(-1)  # (B, frames)
    voicing = corr.gather(-1, best.unsqueeze(-1)).squeeze(-1).clamp(0.0, 1.0)
    log_f0 = torch.log2(SAMPLE_RATE / lags[best].float() / 150.0)
    return torch.stack([log_f0 * voicing, voicing], dim=-1)  # unvoiced frames: no pitch to speak of


def frame_spectra(waves: Tensor, frames: int, bins: int, pitch: bool) -> Tensor:
    """The speaker head's ``mel`` input: log-mel spectra, with the pitch track after them when ``pitch``."""
    mel = log_mel_frames(waves, frames, bins)
    return torch.cat([mel, pitch_frames(waves, frames)], dim=-1) if pitch else mel


class TemporalBlock(nn.Module):
    """x + LayerNorm(ReLU(Conv1d(x))), kernel 3 at ``dilation``, over (B, T, C) frames.

    Frames past each item's length are zeroed first, so an item sees the same zeros
    beyond its end in a padded batch as alone.
    """

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=3, dilation=dilation, padding=dilation)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        x = x.masked_fill(~valid.unsqueeze(-1), 0.0)
        return x + self.norm(self.conv(x.transpose(1, 2)).transpose(1, 2).relu())


@dataclass
class SpeakerHeadConfig:
    """The speaker head's shape: train-speaker's ``head.*`` settings, and (with ``hidden_size`` and
    ``num_layers`` resolved to a number) what a checkpoint stores as metadata["speaker_head"]."""

    dim: int = 192
    num_layers: int | None = None  # weight the transformer input and the first N layers; None: all
    channels: int = 256  # frame-wise linear layer before pooling; 0 skips it
    attention_dim: int = 128
    context: list[int] = field(default_factory=list)  # dilations of residual time convolutions, e.g. [1, 2, 3]
    mel_bins: int = 0  # also read each frame's log-mel spectrum (e.g. 80); 0: the encoder's frames alone
    pitch: bool = False  # and each frame's pitch and voicing (pitch_frames), beside the spectrum

    def validate(self) -> None:
        from speechssl.config import ConfigError

        if self.dim < 1 or self.channels < 0 or self.attention_dim < 1:
            raise ConfigError("head.dim and head.attention_dim must be >= 1, head.channels >= 0")
        if any(d < 1 for d in self.context):
            raise ConfigError("head.context: dilations must be >= 1")
        if self.mel_bins < 0 or (self.mel_bins and not self.channels):
            raise ConfigError("head.mel_bins must be >= 0, and needs head.channels > 0")
        if self.pitch and not self.mel_bins:
            raise ConfigError("head.pitch is read beside the log-mel spectrum: it needs head.mel_bins > 0")

    def layers(self, encoder_layers: int) -> int:
        """How many transformer layers the head reads from an encoder of ``encoder_layers``."""
        from speechssl.config import ConfigError

        if self.num_layers is None:
            return encoder_layers
        if not 0 <= self.num_layers <= encoder_layers:
            raise ConfigError(f"head.num_layers must be between 0 and the encoder's {encoder_layers}")
        return self.num_layers


SHAPE_FIELDS = [f.name for f in dataclasses.fields(SpeakerHeadConfig) if f.name != "num_layers"]


class SpeakerHead(nn.Module):
    """A speaker vector from the encoder's layers (SUPERB-style weighted sum, then x-vector pooling).

    The transformer input and the first ``num_layers`` layer outputs, each layer-normed,
    are summed with learned softmax weights; a frame-wise linear layer (``channels``; 0
    skips it), then residual dilated convolutions over time (``context``: one layer per
    dilation, as SUPERB's x-vector downstream), feed attentive statistics pooling, and a
    linear projection gives ``dim`` numbers. The vector is not normalized here: callers
    take its unit direction.

    With ``mel_bins`` > 0 the head also reads the log-mel spectrum of each frame
    (``log_mel_frames``), projected to ``channels`` and added to the encoder's frames: a
    CTC-tuned encoder keeps what tells characters apart and drops much of the timbre and
    pitch that tell voices apart, which the spectrum still has. With ``pitch`` it reads each
    frame's F0 and voicing too (``pitch_frames``), beside the spectrum.
    """

    def __init__(self, hidden_size: int, num_layers: int, **shape):
        """``shape``: the fields of SpeakerHeadConfig but num_layers (dim, channels, attention_dim,
        context, mel_bins, pitch), by name; an unknown name is a TypeError."""
        super().__init__()
        settings = SpeakerHeadConfig(num_layers=num_layers, **shape)
        dim, channels, attention_dim, mel_bins = settings.dim, settings.channels, settings.attention_dim, settings.mel_bins
        if mel_bins and not channels:
            raise ValueError("a speaker head with mel_bins needs channels > 0")
        if settings.pitch and not mel_bins:
            raise ValueError("a speaker head with pitch needs mel_bins > 0")
        self.hidden_size, self.num_layers, self.dim = hidden_size, num_layers, dim
        self.channels, self.attention_dim, self.context = channels, attention_dim, list(settings.context)
        self.mel_bins, self.pitch = mel_bins, settings.pitch
        self.layer_logits = nn.Parameter(torch.zeros(num_layers + 1))
        width = channels or hidden_size
        self.frame = nn.Sequential(nn.Linear(hidden_size, channels), nn.ReLU(), nn.LayerNorm(channels)) if channels else nn.Identity()
        if mel_bins:
            self.mel_frame = nn.Sequential(nn.Linear(self.spectra_width, channels), nn.ReLU(), nn.LayerNorm(channels))
        self.convs = nn.ModuleList(TemporalBlock(width, d) for d in self.context)
        self.pooling = AttentiveStatsPooling(width, attention_dim)
        self.norm = nn.LayerNorm(2 * width)
        self.proj = nn.Linear(2 * width, dim)

    @classmethod
    def from_config(cls, hidden_size: int, encoder_layers: int, config: SpeakerHeadConfig) -> SpeakerHead:
        """The head ``config`` describes, on an encoder of ``hidden_size`` and ``encoder_layers``."""
        return cls(hidden_size, config.layers(encoder_layers), **{name: getattr(config, name) for name in SHAPE_FIELDS})

    @property
    def spectra_width(self) -> int:
        """Numbers per frame of the ``mel`` input: the log-mel bins, then pitch and voicing."""
        return self.mel_bins + 2 * self.pitch

    def config(self) -> dict[str, int | list[int]]:
        """What rebuilds this head: ``SpeakerHead(**head.config())`` (stored as metadata["speaker_head"])."""
        return {"hidden_size": self.hidden_size, "num_layers": self.num_layers,
                **{name: getattr(self, name) for name in SHAPE_FIELDS}}

    def mel_input(self, waves: Tensor, frames: int) -> Tensor | None:
        """The ``mel`` argument of ``forward`` for (B, N) padded waves with ``frames`` encoder frames;
        None when this head reads no spectra."""
        return frame_spectra(waves, frames, self.mel_bins, self.pitch) if self.mel_bins else None

    @property
    def layer_weights(self) -> Tensor:
        return self.layer_logits.softmax(0)

    @staticmethod
    def normalize_states(hidden_states: Tensor | list[Tensor], count: int | None = None) -> Tensor:
        """(B, T, L+1, C) float32, each layer's frames layer-normed (no parameters): the head's input."""
        if isinstance(hidden_states, (list, tuple)):
            hidden_states = torch.stack(list(hidden_states)[:count], dim=2)
        return F.layer_norm(hidden_states.float(), (hidden_states.shape[-1],))

    def forward(self, hidden_states: Tensor | list[Tensor], lengths: Tensor, normalized: bool = False,
                mel: Tensor | None = None) -> Tensor:
        """hidden_states (B, T, L+1, C) or a list of L+1 tensors (B, T, C); lengths (B,) frames -> (B, dim).

        ``normalized``: the states already went through ``normalize_states`` (a training cache).
        ``mel``: (B, T, spectra_width) from ``mel_input``, required when the head has mel_bins.
        """
        states = hidden_states.float() if normalized else self.normalize_states(hidden_states, self.num_layers + 1)
        if states.shape[2] != self.num_layers + 1:
            raise ValueError(f"the speaker head weights {self.num_layers + 1} hidden states, got {states.shape[2]}")
        x = torch.einsum("btlc,l->btc", states, self.layer_weights)  # (B, T, C)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]  # (B, T)
        x = self.frame(x)
        if self.mel_bins:
            if mel is None or mel.shape[-1] != self.spectra_width:
                extra = f" and its pitch and voicing ({self.spectra_width} numbers)" if self.pitch else ""
                raise ValueError(f"this speaker head reads {self.mel_bins} log-mel bins per frame{extra}: pass mel")
            x = x + self.mel_frame(mel.float()[:, : x.shape[1]])
        for conv in self.convs:
            x = conv(x, valid)
        pooled = self.pooling(x, valid)  # (B, 2 * width)
        return self.proj(self.norm(pooled))


class AamSoftmax(nn.Module):
    """Additive angular margin softmax (ArcFace): cross-entropy over scale * cos(theta + margin)
    for the true class and scale * cos(theta) for the others, theta the angle to each class centre."""

    def __init__(self, dim: int, num_classes: int, margin: float = 0.2, scale: float = 30.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_normal_(self.weight)
        self.margin, self.scale = margin, scale

    def cosine(self, embeddings: Tensor) -> Tensor:
        """(B, dim) -> (B, classes) cosine to each class centre."""
        return F.linear(F.normalize(embeddings.float(), dim=-1), F.normalize(self.weight.float(), dim=-1))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cosine = self.cosine(embeddings).clamp(-1 + 1e-7, 1 - 1e-7)  # (B, K); the clamp keeps sqrt's grad finite
        target = cosine.gather(1, labels[:, None])  # (B, 1)
        m = self.margin
        with_margin = target * math.cos(m) - (1 - target.square()).sqrt() * math.sin(m)  # cos(theta + m)
        # Past theta + m = pi, cos(theta + m) would rise again: fall back to a linear penalty there.
        with_margin = torch.where(target > math.cos(math.pi - m), with_margin, target - math.sin(math.pi - m) * m)
        logits = cosine.scatter(1, labels[:, None], with_margin) * self.scale
        return F.cross_entropy(logits, labels)
