"""Conv feature encoder: raw 16 kHz waveform -> latent frames (50 per second for BASE).

Lengths travel with the tensors so that padding never leaks into valid frames.
The BASE variant's group norm normalises each channel over time; we take its
statistics over valid frames only, so a padded batch equals its items alone
(fairseq, transformers and torchaudio mix the padding in).

The convs run channels-last, (B, T, C), as matmuls over strided views of their input
(``strided_conv``): no im2col copy, and the GEMMs run near the machine's matmul peak,
which oneDNN's conv1d does not reach on these shapes. The parameters keep
``nn.Conv1d``'s names and (C_out, C_in, K) shapes, so checkpoints interchange.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from speechssl.config import ModelConfig
from speechssl.models.inference import Workspace, derived, needs_grad


def conv_output_lengths(lengths: Tensor | int, kernels: list[int], strides: list[int]) -> Tensor | int:
    """Valid output frames of a stack of unpadded 1-D convs, for input lengths in samples
    (a tensor of them, or one int: plain arithmetic, which the server's event loop does per request)."""
    for kernel, stride in zip(kernels, strides):
        lengths = (lengths - kernel) // stride + 1  # floor division, for tensors too
    return lengths.clamp(min=0) if isinstance(lengths, Tensor) else max(lengths, 0)


def valid_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, T) bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def strided_conv(x: Tensor, taps: Tensor, kernel: int, stride: int, out: Tensor | None = None) -> Tensor:
    """Unpadded 1-D conv, channels-last: x (B, T, C), taps (K*C, N) with rows in (tap, channel)
    order -> (B, T', N), T' = (T - K) // stride + 1; written into ``out`` when given.

    Output frame t reads input frames [t*s, t*s + K): ``stride`` consecutive taps are one
    contiguous run of s*C values, so each group of taps is a strided *view* of x (rows
    s*C apart) and the conv is a sum of ceil(K/s) batched matmuls, with no copy of x.
    A narrow input (the waveform, C = 1) is unfolded instead: one small copy, one matmul.
    """
    c = x.shape[-1]
    # One dtype for the in-place accumulation below (autocast would cast each matmul's inputs alone).
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    x, taps = x.to(dtype).contiguous(), taps.to(dtype)
    if kernel * c <= 64 or x.shape[1] < kernel:
        return torch.matmul(unfold(x, kernel, stride), taps)
    if torch.is_grad_enabled() and (x.requires_grad or taps.requires_grad):
        return StridedConv.apply(x, taps, kernel, stride)
    return _strided_conv(x, taps, kernel, stride, out)


def _tap_groups(x: Tensor, kernel: int, stride: int):
    """(first tap, width, (B, T', width) strided view of x) for each run of ``stride`` taps."""
    b, t, c = x.shape
    frames = (t - kernel) // stride + 1
    for first in range(0, kernel, stride):
        width = min(stride, kernel - first) * c
        # frames t*s + first ... + width/C - 1 of each output frame t, flattened in (tap, channel) order
        yield first * c, width, x.as_strided((b, frames, width), (t * c, stride * c, 1), x.storage_offset() + first * c)


def _strided_conv(x: Tensor, taps: Tensor, kernel: int, stride: int, out: Tensor | None = None) -> Tensor:
    b, n = x.shape[0], taps.shape[1]
    for row, width, rows in _tap_groups(x, kernel, stride):
        part = taps[row : row + width].expand(b, width, n)  # (B, width, N), no copy
        if row == 0:
            out = torch.bmm(rows, part) if out is None else torch.bmm(rows, part, out=out)
        else:
            out = out.baddbmm_(rows, part)
    return out


class StridedConv(torch.autograd.Function):
    """``_strided_conv`` with a backward pass of the same shape: the input gradient is
    accumulated straight into strided views of one buffer (autograd's generic as_strided
    backward would zero-fill and scatter per view), the weight gradient is one matmul per
    tap group."""

    @staticmethod
    def forward(ctx, x: Tensor, taps: Tensor, kernel: int, stride: int) -> Tensor:
        ctx.save_for_backward(x, taps)
        ctx.kernel, ctx.stride = kernel, stride
        return _strided_conv(x, taps, kernel, stride)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, taps = ctx.saved_tensors
        kernel, stride = ctx.kernel, ctx.stride
        grad = grad.contiguous()  # (B, T', N)
        b, _, n = grad.shape
        grad_x = grad_taps = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(x)
            for row, width, view in _tap_groups(grad_x, kernel, stride):
                view.baddbmm_(grad, taps[row : row + width].t().expand(b, n, width))  # += (B, T', N) @ (N, width)
        if ctx.needs_input_grad[1]:
            grad_taps = torch.empty_like(taps)
            for row, width, rows in _tap_groups(x, kernel, stride):
                # sum over items of (width, T') @ (T', N)
                grad_taps[row : row + width] = torch.bmm(rows.transpose(1, 2), grad).sum(0)
        return grad_x, grad_taps, None, None


def unfold(x: Tensor, kernel: int, stride: int) -> Tensor:
    """(B, T, C) -> (B, T', K*C): each output frame's input window, flattened in (tap, channel) order."""
    b, t, c = x.shape
    frames = max(0, (t - kernel) // stride + 1)
    x = x.contiguous()
    # Rows overlap when K > s, so this view is copied into place.
    return x.as_strided((b, frames, kernel * c), (t * c, stride * c, 1), x.storage_offset()).contiguous()


def normed_conv(x: Tensor, lengths: Tensor, taps: Tensor, norm: "MaskedGroupNorm", kernel: int, stride: int,
                out: Tensor | None = None) -> Tensor:
    """GroupNorm(conv(x)) of a narrow input (the waveform) in one matmul, per item over its valid frames.

    The conv is linear, so each output channel's mean and variance over time follow from
    the mean mu and covariance S of the unfolded input windows U (B, T', K*C):
    mean = mu . w, var = w' S w. The norm then folds into per-item weights and a shift,
    and the (B, T', C_out) output is written once instead of once per norm step.
    A conv bias cancels in the norm and is left out.
    """
    windows = unfold(x, kernel, stride)  # (B, T', K*C)
    b, frames, _ = windows.shape
    with torch.autocast(x.device.type, enabled=False):  # statistics in fp32 even under autocast
        u = windows.float()
        valid = valid_mask(lengths, frames).unsqueeze(-1).to(u.dtype)  # (B, T', 1)
        count = lengths.clamp(min=1).to(u.dtype)[:, None, None]  # (B, 1, 1)
        mu = (u * valid).sum(1, keepdim=True) / count  # (B, 1, K*C)
        centred = (u - mu) * valid
        cov = torch.bmm(centred.transpose(1, 2), centred) / count  # (B, K*C, K*C)
        w = taps.float()  # (K*C, N)
        var = (torch.matmul(cov, w) * w).sum(1)  # (B, N)
        scale = norm.weight.float() * torch.rsqrt(var + norm.eps)  # (B, N)
        shift = norm.bias.float() - (mu[:, 0] @ w) * scale  # (B, N)
        weights = w * scale[:, None, :]  # (B, K*C, N)
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    windows, weights, shift = windows.to(dtype), weights.to(dtype), shift.to(dtype).unsqueeze(1)
    # bmm then add in place: baddbmm would first copy the broadcast shift into the output
    return (torch.bmm(windows, weights) if out is None else torch.bmm(windows, weights, out=out)).add_(shift)


class MaskedGroupNorm(nn.Module):
    """GroupNorm with one group per channel, statistics over valid frames only.

    Named and shaped like ``nn.GroupNorm(C, C)`` so checkpoints interchange. Channels-last.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def scale_shift(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, C) -> per item and channel (B, 1, C) scale and shift: normed = x * scale + shift."""
        b, t, _ = x.shape
        sizes = lengths.tolist()
        if all(n == t for n in sizes):
            var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)  # (B, 1, C)
        else:
            # Each item over its valid frames only (a view each, no mask arithmetic on the padding).
            stats = [torch.var_mean(x[i, : max(n, 1)], dim=0, keepdim=True, correction=0) for i, n in enumerate(sizes)]
            var = torch.stack([v for v, _ in stats])
            mean = torch.stack([m for _, m in stats])
        scale = torch.rsqrt(var.float() + self.eps) * self.weight.float()
        shift = self.bias.float() - mean.float() * scale
        return scale.to(x.dtype), shift.to(x.dtype)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        # x: (B, T, C)
        scale, shift = self.scale_shift(x, lengths)
        return torch.addcmul(shift, x, scale)


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

    def taps(self) -> Tensor:
        """(C_out, C_in, K) conv weight -> (K*C_in, C_out), rows in (tap, channel) order."""
        w = self.conv.weight
        return w.permute(2, 1, 0).reshape(-1, w.shape[0])

    def params(self) -> tuple[Tensor, ...]:
        return (self.conv.weight,) if self.conv.bias is None else (self.conv.weight, self.conv.bias)

    def project(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """The conv itself: (B, T, C_in) -> (B, T', C_out)."""
        params = self.params()
        if needs_grad(params):
            y = strided_conv(x, self.taps(), self.kernel, self.stride)
        else:
            taps = derived(self, "taps", params, lambda: self.taps().contiguous())
            y = strided_conv(x, taps, self.kernel, self.stride, out)
        return y if self.conv.bias is None else y.add_(self.conv.bias) if out is not None else y + self.conv.bias

    def output_frames(self, frames: int) -> int:
        return max(0, (frames - self.kernel) // self.stride + 1)

    def forward(self, x: Tensor, lengths: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, T, C_in) channels-last, lengths (B,) -> (B, T', C_out), lengths (B,).

        ``out``: where to write the result (inference only: no gradient is recorded then).
        """
        frames = conv_output_lengths(lengths, [self.kernel], [self.stride])
        if self.norm_kind == "group" and self.kernel * x.shape[-1] <= 64:
            taps = self.taps() if needs_grad(self.params()) else derived(self, "taps", self.params(), lambda: self.taps().contiguous())
            x = normed_conv(x, frames, taps, self.layer_norm, self.kernel, self.stride, out)
        else:
            x = self.project(x, out)
            if self.norm_kind == "group":
                x = self.layer_norm(x, frames)
            elif self.norm_kind == "layer":
                x = self.layer_norm(x)
        return (torch.ops.aten.gelu_(x) if out is not None else F.gelu(x)), frames


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
        self.workspace = Workspace()  # scratch for the large activations at inference

    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """waves (B, S) float, lengths (B,) samples -> features (B, T, C), frame lengths (B,)."""
        x = waves.unsqueeze(-1)  # (B, S, 1): channels-last throughout
        reuse = not needs_grad(tuple(self.parameters()))
        # Under autocast every conv computes (and so writes) in the autocast dtype.
        autocast = torch.is_autocast_enabled(waves.device.type)
        dtype = torch.get_autocast_dtype(waves.device.type) if autocast else waves.dtype
        last = len(self.conv_layers) - 1
        for i, layer in enumerate(self.conv_layers):
            out = None
            if reuse and i < last:  # the last layer's output is handed back, so it gets its own memory
                shape = (x.shape[0], layer.output_frames(x.shape[1]), layer.conv.out_channels)
                out = self.workspace.take(i % 2, shape, x, dtype)
            x, lengths = layer(x, lengths, out)
        if self.grad_scale != 1.0 and x.requires_grad:
            x = GradScale.apply(x, self.grad_scale)
        return x, lengths  # (B, T, C)


class GradScale(torch.autograd.Function):
    """Identity forward; scales the gradient on the way back."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None
