"""Conv feature encoder: raw 16 kHz waveform -> latent frames (50 per second for BASE).

Lengths travel with the tensors so that padding never leaks into valid frames.
The BASE variant's group norm normalises each channel over time; we take its
statistics over valid frames only, so a padded batch equals its items alone
(fairseq, transformers and torchaudio mix the padding in).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from speechssl.config import ModelConfig


def conv_output_lengths(lengths: Tensor, kernels: list[int], strides: list[int]) -> Tensor:
    """Valid output frames of a stack of unpadded 1-D convs, for input lengths in samples."""
    for kernel, stride in zip(kernels, strides):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


def valid_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, T) bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class MaskedGroupNorm(nn.Module):
    """GroupNorm with one group per channel, statistics over valid frames only.

    Named and shaped like ``nn.GroupNorm(C, C)`` so checkpoints interchange.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        # x: (B, C, T)
        mask = valid_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)  # (B, 1, T)
        count = mask.sum(-1, keepdim=True).clamp(min=1.0)
        mean = (x * mask).sum(-1, keepdim=True) / count
        var = (((x - mean) * mask) ** 2).sum(-1, keepdim=True) / count
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None] + self.bias[:, None]


class ConvLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        self.norm_kind = norm
        if norm == "group":
            self.layer_norm = MaskedGroupNorm(out_dim)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = self.conv(x)  # (B, C, T')
        lengths = conv_output_lengths(lengths, [self.kernel], [self.stride])
        if self.norm_kind == "group":
            x = self.layer_norm(x, lengths)
        elif self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x), lengths


class FeatureEncoder(nn.Module):
    """7 conv layers; group norm on the first only ("group") or layer norm on all ("layer")."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        layers = []
        in_dim = 1
        for i, (dim, kernel, stride) in enumerate(zip(config.conv_dims, config.conv_kernels, config.conv_strides)):
            if config.conv_norm == "layer":
                norm = "layer"
            else:
                norm = "group" if i == 0 else None
            layers.append(ConvLayer(in_dim, dim, kernel, stride, config.conv_bias, norm))
            in_dim = dim
        self.conv_layers = nn.ModuleList(layers)
        # fairseq's feature_grad_mult: the conv stack learns 10x slower than the rest in pretraining.
        self.grad_scale = 1.0

    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """waves (B, S) float, lengths (B,) samples -> features (B, T, C), frame lengths (B,)."""
        x = waves.unsqueeze(1)  # (B, 1, S)
        for layer in self.conv_layers:
            x, lengths = layer(x, lengths)
        if self.grad_scale != 1.0 and x.requires_grad:
            x = GradScale.apply(x, self.grad_scale)
        return x.transpose(1, 2), lengths  # (B, T, C)


class GradScale(torch.autograd.Function):
    """Identity forward; scales the gradient on the way back."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None
