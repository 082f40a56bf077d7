"""Typed configs: dataclasses loaded from YAML, with ``key=value`` overrides.

A YAML file holds only what differs from the defaults. Nested sections map to
nested dataclasses; ``model.preset`` picks a preset function, and the other
``model.*`` keys override that preset's fields.

Here: the model's settings (ModelConfig), its presets and ``build_model_config``. The
YAML and override machinery is in ``speechssl.config_files``, re-exported from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from speechssl.config_files import ConfigError, build, load_config, merge, parse_overrides, read_yaml, to_dict

__all__ = ["ConfigError", "ModelConfig", "PRESETS", "SAMPLE_RATE", "base", "build", "build_model_config", "fast",
           "large", "load_config", "merge", "model_preset", "parse_overrides", "read_yaml", "small", "tiny", "to_dict"]


# --------------------------------------------------------------------------- model

SAMPLE_RATE = 16000  # what every model reads: audio is resampled to this on load (speechssl.audio)

# The log-mel front end's fixed geometry in samples at 16 kHz: 25 ms windows every 10 ms,
# then two convs of kernel 3 (the second strides by mel_frame_stride).
LOG_MEL_WINDOW = 400
LOG_MEL_HOP = 160
LOG_MEL_KERNELS = (3, 3)


@dataclass
class ModelConfig:
    """Shape of a wav2vec 2.0 model (the fields that decide its weights and forward pass)."""

    conv_dims: list[int] = field(default_factory=lambda: [512] * 7)
    conv_kernels: list[int] = field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    conv_strides: list[int] = field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])
    conv_norm: Literal["group", "layer"] = "group"
    conv_bias: bool = False
    # "conv": the raw-waveform stack above (wav2vec 2.0, HF interop). "log_mel": 80-bin log-mel
    # frames every 10 ms and two convs (width conv_dims[-1]) that stride them to the frame rate.
    front_end: Literal["conv", "log_mel"] = "conv"
    mel_bins: int = 80
    mel_frame_stride: int = 2  # 10 ms hops per output frame: 2 gives 20 ms frames, as the conv stack
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    layer_norm_first: bool = False  # the "stable" pre-LN variant of LARGE
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    # 0: wav2vec 2.0's one weight-normed positional conv; N: Data2Vec-Audio's N plain convs,
    # each with a parameter-free layer norm (transformers' num_conv_pos_embeddings there).
    pos_conv_stack: int = 0
    # WavLM's gated relative position bias: attention adds a learned per-head bias for the
    # distance between two frames, bucketed (exact up to a quarter of the buckets, then
    # logarithmic up to rel_pos_max_distance), scaled per query frame by a gate computed from
    # each layer's input. The first layer holds the bias table; every layer reuses it.
    rel_pos_bias: bool = False
    rel_pos_buckets: int = 320
    rel_pos_max_distance: int = 800
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    feature_dropout: float = 0.1  # after the feature projection
    layer_drop: float = 0.05
    # Span masking of latent frames (fairseq mask_prob / mask_length).
    mask_prob: float = 0.65
    mask_length: int = 10
    min_masks: int = 2
    mask_channel_prob: float = 0.0
    mask_channel_length: int = 10
    # Gumbel product quantizer and the projections of the contrastive task.
    num_codevector_groups: int = 2
    num_codevectors: int = 320
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    # Zero-mean unit-variance waveform per utterance, as LARGE-LV60 expects.
    normalize_waveform: bool = False

    def validate(self) -> None:
        if not (len(self.conv_dims) == len(self.conv_kernels) == len(self.conv_strides)):
            raise ConfigError("model.conv_dims, conv_kernels and conv_strides must have the same length")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads ({self.num_heads})"
            )
        if self.hidden_size % self.pos_conv_groups:
            raise ConfigError("model.hidden_size must be divisible by model.pos_conv_groups")
        if self.codevector_dim % self.num_codevector_groups:
            raise ConfigError("model.codevector_dim must be divisible by model.num_codevector_groups")
        for name in ("mask_prob", "mask_channel_prob", "dropout", "attention_dropout", "layer_drop"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1], got {value}")
        if self.mask_length < 1:
            raise ConfigError("model.mask_length must be >= 1")
        if self.mel_bins < 1 or self.mel_frame_stride < 1:
            raise ConfigError("model.mel_bins and model.mel_frame_stride must be >= 1")
        if self.rel_pos_bias:
            # a quarter of the buckets are exact distances; the logarithmic ones start there
            if self.rel_pos_buckets < 4:
                raise ConfigError(f"model.rel_pos_buckets must be >= 4, got {self.rel_pos_buckets}")
            if self.rel_pos_max_distance <= self.rel_pos_buckets // 4:
                raise ConfigError(f"model.rel_pos_max_distance ({self.rel_pos_max_distance}) must exceed "
                                  f"a quarter of model.rel_pos_buckets ({self.rel_pos_buckets // 4})")

    @property
    def frame_geometry(self) -> tuple[list[int], list[int]]:
        """The front end as (kernels, strides) over samples: output frames and receptive field follow."""
        if self.front_end == "log_mel":
            return [LOG_MEL_WINDOW, *LOG_MEL_KERNELS], [LOG_MEL_HOP, 1, self.mel_frame_stride]
        return self.conv_kernels, self.conv_strides

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame of the conv feature encoder (400 for BASE)."""
        field_, jump = 1, 1
        for kernel, stride in zip(*self.frame_geometry):
            field_ += (kernel - 1) * jump
            jump *= stride
        return field_

    @property
    def frame_stride(self) -> int:
        """Samples between output frames (320 for BASE: 50 frames per second at 16 kHz)."""
        stride = 1
        for s in self.frame_geometry[1]:
            stride *= s
        return stride

    @property
    def frame_seconds(self) -> float:
        """Seconds between output frames (0.02 for every preset)."""
        return self.frame_stride / SAMPLE_RATE

    @property
    def frames_per_second(self) -> float:
        return SAMPLE_RATE / self.frame_stride


def base() -> ModelConfig:
    """wav2vec 2.0 BASE: 12 layers, 768 dims, 95M parameters."""
    return ModelConfig()


def large() -> ModelConfig:
    """wav2vec 2.0 LARGE (LV-60 style): layer-norm conv encoder, pre-LN transformer."""
    return dataclasses.replace(
        base(),
        conv_norm="layer",
        conv_bias=True,
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        ffn_dim=4096,
        layer_norm_first=True,
        codevector_dim=768,
        proj_codevector_dim=768,
        normalize_waveform=True,
    )


def small() -> ModelConfig:
    """A CPU-trainable model: half-width conv encoder, 6 x 384 transformer (~13M parameters)."""
    return dataclasses.replace(
        base(),
        conv_dims=[256] * 7,
        hidden_size=384,
        num_layers=6,
        num_heads=6,
        ffn_dim=1536,
        pos_conv_kernel=64,
        codevector_dim=256,
        proj_codevector_dim=128,
        normalize_waveform=True,
    )


def tiny() -> ModelConfig:
    """For tests and smoke runs: 2 x 96 transformer, narrow conv encoder."""
    return dataclasses.replace(
        small(),
        conv_dims=[64] * 7,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        ffn_dim=192,
        pos_conv_kernel=16,
        pos_conv_groups=4,
        codevector_dim=64,
        proj_codevector_dim=32,
    )


def fast() -> ModelConfig:
    """The CPU pretraining preset: log-mel front end, pre-LN 6 x 256 transformer (~5M parameters).
    About 3x the audio per wall-second of `small` (docs/pretraining.md)."""
    return dataclasses.replace(
        small(),
        front_end="log_mel",
        hidden_size=256,
        num_layers=6,
        num_heads=4,
        ffn_dim=1024,
        layer_norm_first=True,
        proj_codevector_dim=128,
    )


PRESETS = {"tiny": tiny, "fast": fast, "small": small, "base": base, "large": large}


def model_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def build_model_config(tree: dict[str, Any] | None, prefix: str = "model.") -> ModelConfig:
    """``{"preset": "small", "num_layers": 4}`` -> the small preset with 4 layers."""
    tree = dict(tree or {})
    preset = tree.pop("preset", "base")
    start = dataclasses.asdict(model_preset(preset))
    return build(ModelConfig, merge(start, tree), prefix=prefix)
