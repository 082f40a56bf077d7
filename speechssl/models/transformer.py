"""Transformer context network: conv relative positional embedding + N encoder layers.

Post-LN (BASE) and pre-LN "stable" (LARGE) variants, attention through
``scaled_dot_product_attention`` with a key padding mask. Parameter names follow
the reference implementations so checkpoints interchange. ``rel_pos_bias`` adds WavLM's
gated relative position bias to the attention scores (``relative_position_buckets``,
``Attention.position_bias`` and ``Attention.position_gate``).

Without gradients (inference) the q/k/v projections run as one fused matmul and the
positional conv uses its weight-norm-folded weight, both derived from the parameters
once (``speechssl.models.inference``); with gradients every step uses the parameters
directly, exactly as in training.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from speechssl.config import ModelConfig
from speechssl.models.inference import derived, linear, needs_grad


class PositionalConv(nn.Module):
    """Grouped conv over time with weight norm (over the kernel axis), then GELU."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim, kernel, groups = config.hidden_size, config.pos_conv_kernel, config.pos_conv_groups
        self.conv = nn.Module()
        self.conv.weight_v = nn.Parameter(torch.empty(dim, dim // groups, kernel))
        self.conv.weight_g = nn.Parameter(torch.empty(1, 1, kernel))
        self.conv.bias = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.conv.weight_v, std=(4.0 / (kernel * dim)) ** 0.5)
        with torch.no_grad():
            self.conv.weight_g.copy_(self._v_norm())
        self.kernel, self.groups = kernel, groups

    def _v_norm(self) -> Tensor:
        return self.conv.weight_v.norm(dim=(0, 1), keepdim=True)  # (1, 1, K)

    def _weight(self) -> Tensor:
        return self.conv.weight_v * (self.conv.weight_g / self._v_norm())

    def weight(self) -> Tensor:
        """The conv weight g * v / ||v||: computed each call with gradients, folded once without."""
        sources = (self.conv.weight_v, self.conv.weight_g)
        if needs_grad(sources):
            return self._weight()
        return derived(self, "weight", sources, self._weight)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """``valid`` is not needed: one conv over input whose padding is zero already."""
        sources = (self.conv.weight_v, self.conv.weight_g)
        if x.device.type == "cpu" and x.dtype == torch.float32 and not needs_grad(sources):
            y = self.fft_conv(x.transpose(1, 2))  # a cached spectrum: ~5x less time than oneDNN's grouped conv
        else:
            # (B, T, C) -> (B, C, T) for the conv
            y = F.conv1d(x.transpose(1, 2), self.weight(), None, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:  # an even kernel gives one frame too many
            y = y[:, :, :-1]
        return F.gelu(y + self.conv.bias[:, None]).transpose(1, 2)

    def fft_size(self) -> int:
        return 4 * (1 << (self.kernel - 1).bit_length())  # 512 for BASE's 128 taps

    def spectrum(self) -> Tensor:
        """(G, F, C/G, C/G) complex: the conj. spectrum of each group's (out, in) kernels, for correlation."""
        w = self.weight()  # (C, C/G, K)
        c, per_group, _ = w.shape
        spec = torch.fft.rfft(w, n=self.fft_size()).conj()  # (C, C/G, F)
        return spec.view(self.groups, c // self.groups, per_group, -1).permute(0, 3, 1, 2).contiguous()

    def fft_conv(self, x: Tensor) -> Tensor:
        """The grouped conv (no bias) by overlap-save FFT: x (B, C, T) -> (B, C, T + 1 - K % 2).

        y[t] = sum_k w[k] x[t + k - K//2] is a correlation; per block of n = fft_size()
        samples it is X(f) conj(W(f)) at each frequency, a (C/G x C/G) matrix per group
        applied to the block's spectrum, and the first n - K + 1 outputs of each block are
        exact. Equal to ``conv1d`` to float rounding (~1e-6).
        """
        b, c, t = x.shape
        n, k, g = self.fft_size(), self.kernel, self.groups
        pad = k // 2
        out_len = t + 2 * pad - k + 1
        hop = n - k + 1  # valid outputs per block
        blocks = -(-out_len // hop)
        padded = F.pad(x, (pad, blocks * hop + k - 1 - t - pad))  # (B, C, blocks * hop + K - 1)
        spec_x = torch.fft.rfft(padded.unfold(-1, n, hop), n=n)  # (B, C, blocks, F)
        freqs = spec_x.shape[-1]
        # (B, G, C/G, blocks, F) -> (G, F, C/G, B * blocks): one matmul per group and frequency
        spec_x = spec_x.view(b, g, c // g, blocks, freqs).permute(1, 4, 2, 0, 3).reshape(g, freqs, c // g, b * blocks)
        sources = (self.conv.weight_v, self.conv.weight_g)
        spec_y = torch.matmul(derived(self, "spectrum", sources, self.spectrum), spec_x)  # (G, F, C/G, B * blocks)
        spec_y = spec_y.view(g, freqs, c // g, b, blocks).permute(3, 0, 2, 4, 1).reshape(b, c, blocks, freqs)
        y = torch.fft.irfft(spec_y, n=n)[..., :hop]  # (B, C, blocks, hop)
        return y.reshape(b, c, blocks * hop)[..., :out_len]


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device=None) -> Tensor:
    """(T, T) long: the bucket of key j's offset j - i from query i (T5's scheme, as WavLM uses it).

    Keys after the query use the upper half of the buckets, the query itself and keys before it
    the lower half. Within a half, distances below a quarter of the buckets get one bucket each;
    longer ones share buckets spaced evenly in log distance up to ``max_distance``, and all
    beyond fall in the half's last bucket. The steps are transformers' own, in its order, so a
    distance on a bucket's edge lands in the same bucket on both sides.
    """
    position = torch.arange(length, device=device)
    offset = position[None, :] - position[:, None]
    half = num_buckets // 2
    exact = half // 2
    distance = offset.abs()
    # clamped below: the log is only read for distances >= exact, and log(0) would be -inf
    scaled = torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact) * (half - exact)
    far = (exact + scaled).long().clamp(max=half - 1)
    return torch.where(distance < exact, distance, far) + (offset > 0).long() * half


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, bias_table: bool = False):
        """``bias_table``: this layer holds the relative position bias table (WavLM's first layer)."""
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_heads
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.int8 = False  # set by speechssl.models.inference.quantize_int8
        if config.rel_pos_bias:
            # The gate reads each head's slice of a frame; its two sigmoid inputs are each the
            # sum of 4 of these 8 outputs (the reference layout, kept so the weights load).
            self.gru_rel_pos_linear = nn.Linear(dim // self.num_heads, 8)
            self.gru_rel_pos_const = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))
        if bias_table:
            self.rel_attn_embed = nn.Embedding(config.rel_pos_buckets, self.num_heads)
            self.max_distance = config.rel_pos_max_distance

    def position_bias(self, length: int) -> Tensor:
        """(H, T, T): each head's learned bias for key j seen from query i; it depends on j - i
        only, so a frame gets the same bias whatever padding follows it."""
        table = self.rel_attn_embed
        buckets = relative_position_buckets(length, table.num_embeddings, self.max_distance, table.weight.device)
        return table(buckets).permute(2, 0, 1)

    def position_gate(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, H, T, 1): how much of the position bias each query frame takes.

        GRU-like: a * (b * const - 1) + 2 with a, b sigmoids of the frame's head slice, so a
        frame's content decides how far position steers its attention (between 1 and 2 times
        the table while const is 1).
        """
        b, t, _ = x.shape
        per_head = x.view(b, t, self.num_heads, -1).transpose(1, 2)  # (B, H, T, C/H)
        pair = self.gru_rel_pos_linear(per_head).view(b, self.num_heads, t, 2, 4).sum(-1)
        gate_a, gate_b = torch.sigmoid(pair).chunk(2, dim=-1)
        return gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0

    def biased_mask(self, x: Tensor, position_bias: Tensor, key_mask: Tensor | None) -> Tensor:
        """The float mask attention adds to its scaled scores: the gated bias, -inf at padded keys."""
        bias = self.position_gate(x) * position_bias  # (B, H, T, 1) * (H, T, T) -> (B, H, T, T)
        return bias if key_mask is None else bias.masked_fill(~key_mask, float("-inf"))

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, C) -> q, k, v, each (B, H, T, C/H)."""
        b, t, c = x.shape
        projs = (self.q_proj, self.k_proj, self.v_proj)
        sources = tuple(p for proj in projs for p in (proj.weight, proj.bias))
        # One (B, T, C) x (C, 3C) matmul instead of three. Without gradients the fused weight
        # is built once; with them it is concatenated per call (3C x C, small next to the
        # matmul) and the backward pass splits the gradient back onto q/k/v.
        fused = linear(self, "qkv", x, sources, lambda: torch.cat([p.weight for p in projs]),
                       lambda: torch.cat([p.bias for p in projs]))
        # (B, T, 3C) -> (3, B, H, T, C/H): views, no copy
        return fused.view(b, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: Tensor, attn_mask: Tensor | None, position_bias: Tensor | None = None) -> Tensor:
        """attn_mask (B, 1, 1, T) bool: keys that may be attended; position_bias (H, T, T) or None."""
        b, t, c = x.shape
        q, k, v = self.qkv(x)
        if position_bias is not None:
            attn_mask = self.biased_mask(x, position_bias, attn_mask).to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, H, T, C/H) -> (B, T, C)
        out = self.out_proj
        return linear(self, "out", y, (out.weight, out.bias), lambda: out.weight, lambda: out.bias)


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.ffn_dim)
        self.output_dense = nn.Linear(config.ffn_dim, config.hidden_size)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.output_dropout = nn.Dropout(config.dropout)
        self.int8 = False  # set by speechssl.models.inference.quantize_int8

    def forward(self, x: Tensor) -> Tensor:
        up, down = self.intermediate_dense, self.output_dense
        x = linear(self, "up", x, (up.weight, up.bias), lambda: up.weight, lambda: up.bias)
        # in place without autograd: (B, T, 4C) is the largest activation of a layer
        x = self.activation_dropout(F.gelu(x) if torch.is_grad_enabled() else torch.ops.aten.gelu_(x))
        x = linear(self, "down", x, (down.weight, down.bias), lambda: down.weight, lambda: down.bias)
        return self.output_dropout(x)


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, bias_table: bool = False):
        super().__init__()
        self.pre_ln = config.layer_norm_first
        self.attention = Attention(config, bias_table)
        self.dropout = nn.Dropout(config.dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, attn_mask: Tensor | None, position_bias: Tensor | None = None) -> Tensor:
        # Without autograd the residual sums go into the branch's fresh output (no new tensor).
        add = residual if torch.is_grad_enabled() else residual_
        if self.pre_ln:
            x = add(x, self.dropout(self.attention(self.layer_norm(x), attn_mask, position_bias)))
            return add(x, self.feed_forward(self.final_layer_norm(x)))
        x = self.layer_norm(add(x, self.dropout(self.attention(x, attn_mask, position_bias))))
        return self.final_layer_norm(add(x, self.feed_forward(x)))


def residual(x: Tensor, branch: Tensor) -> Tensor:
    return x + branch


def residual_(x: Tensor, branch: Tensor) -> Tensor:
    """x + branch, written into ``branch`` (a fresh output nobody else holds)."""
    return branch.add_(x) if branch.dtype == torch.promote_types(x.dtype, branch.dtype) else x + branch


class StackedPositionalConv(nn.Module):
    """Data2Vec-Audio's relative position: ``pos_conv_stack`` plain grouped convs over time,
    each followed by a layer norm without parameters and GELU. Padded frames are zeroed
    between the convs, so a padded batch gives each item what it gives alone."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim, kernel = config.hidden_size, config.pos_conv_kernel
        self.layers = nn.ModuleList()
        for _ in range(config.pos_conv_stack):
            layer = nn.Module()
            layer.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=config.pos_conv_groups)
            self.layers.append(layer)
        self.kernel, self.eps = kernel, config.layer_norm_eps

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        y = x.transpose(1, 2)  # (B, C, T)
        keep = None if valid is None else valid[:, None, :].to(y.dtype)
        for layer in self.layers:
            y = layer.conv(y)
            if self.kernel % 2 == 0:  # an even kernel gives one frame too many
                y = y[:, :, :-1]
            y = F.gelu(F.layer_norm(y.transpose(1, 2), (y.shape[1],), eps=self.eps).transpose(1, 2))
            if keep is not None:
                y = y * keep
        return y.transpose(1, 2)


class TransformerEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_ln = config.layer_norm_first
        self.layer_drop = config.layer_drop
        self.pos_conv_embed = StackedPositionalConv(config) if config.pos_conv_stack else PositionalConv(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.rel_pos_bias = config.rel_pos_bias
        self.layers = nn.ModuleList(EncoderLayer(config, bias_table=config.rel_pos_bias and i == 0)
                                    for i in range(config.num_layers))

    def forward(self, x: Tensor, valid: Tensor | None, num_layers: int | None = None,
                start_layer: int | None = None) -> list[Tensor]:
        """x (B, T, C), valid (B, T) bool -> hidden states [input, layer 1, ..., layer N].

        Entry 0 is the input to the first layer; the last entry is the final output
        (after the closing layer norm of the pre-LN variant). ``num_layers`` stops early.

        ``start_layer`` k: x is entry k of an earlier run (e.g. from a cache), not the
        projected features; only layers k+1..N run, without layer drop, and the list holds
        entries k..N.
        """
        cached = start_layer is not None
        attn_mask = None
        # torch.export cannot branch on tensor values; the masked path is exact without padding too.
        if valid is not None and (torch.compiler.is_exporting() or not bool(valid.all())):
            if not cached:  # padding must be zero before the positional conv, as for an item alone
                x = x * valid.unsqueeze(-1).to(x.dtype)
            attn_mask = valid[:, None, None, :]  # (B, 1, 1, T): keys that may be attended
        if not cached:
            x = x + self.pos_conv_embed(x, valid)
            if not self.pre_ln:
                x = self.layer_norm(x)
            x = self.dropout(x)
        depth = len(self.layers) if num_layers is None else num_layers
        # WavLM: the first layer's table serves every layer. Built here, not in that layer, so
        # a run from a cached entry or with the first layer dropped still has it.
        position_bias = self.layers[0].attention.position_bias(x.shape[1]) if self.rel_pos_bias else None
        hidden = [x]
        for layer in self.layers[start_layer or 0 : depth]:
            if self.training and self.layer_drop > 0 and not cached and torch.rand(()) < self.layer_drop:
                hidden.append(x)
                continue
            x = layer(x, attn_mask, position_bias)
            hidden.append(x)
        if self.pre_ln and depth == len(self.layers):
            hidden[-1] = self.layer_norm(x)
        return hidden
