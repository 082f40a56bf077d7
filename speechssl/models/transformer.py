"""Transformer context network: conv relative positional embedding + N encoder layers.

Post-LN (BASE) and pre-LN "stable" (LARGE) variants, attention through
``scaled_dot_product_attention`` with a key padding mask. Parameter names follow
the reference implementations so checkpoints interchange.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from speechssl.config import ModelConfig


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
        self.folded: Tensor | None = None  # set by fold_weight_norm() for inference

    def _v_norm(self) -> Tensor:
        return self.conv.weight_v.norm(dim=(0, 1), keepdim=True)  # (1, 1, K)

    def weight(self) -> Tensor:
        if self.folded is not None:
            return self.folded
        return self.conv.weight_v * (self.conv.weight_g / self._v_norm())

    def fold_weight_norm(self) -> None:
        """Compute the conv weight once; for inference, where the weights no longer change."""
        with torch.no_grad():
            self.folded = None
            self.folded = self.weight().detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        # (B, T, C) -> (B, C, T) for the conv; an even kernel gives one frame too many.
        y = F.conv1d(x.transpose(1, 2), self.weight(), self.conv.bias, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:
            y = y[:, :, :-1]
        return F.gelu(y).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_heads
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        b, t, c = x.shape
        # (B, T, C) -> (B, H, T, C/H)
        q, k, v = (proj(x).view(b, t, self.num_heads, -1).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, c))


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.ffn_dim)
        self.output_dense = nn.Linear(config.ffn_dim, config.hidden_size)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.output_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.activation_dropout(F.gelu(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_ln = config.layer_norm_first
        self.attention = Attention(config)
        self.dropout = nn.Dropout(config.dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        if self.pre_ln:
            x = x + self.dropout(self.attention(self.layer_norm(x), attn_mask))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.dropout(self.attention(x, attn_mask)))
        return self.final_layer_norm(x + self.feed_forward(x))


class TransformerEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_ln = config.layer_norm_first
        self.layer_drop = config.layer_drop
        self.pos_conv_embed = PositionalConv(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))

    def forward(self, x: Tensor, valid: Tensor | None, num_layers: int | None = None) -> list[Tensor]:
        """x (B, T, C), valid (B, T) bool -> hidden states [input, layer 1, ..., layer N].

        Entry 0 is the input to the first layer; the last entry is the final output
        (after the closing layer norm of the pre-LN variant). ``num_layers`` stops early.
        """
        attn_mask = None
        if valid is not None:
            # Padding must be zero before the positional conv, as it is for an item alone.
            x = x * valid.unsqueeze(-1).to(x.dtype)
            if not bool(valid.all()):
                attn_mask = valid[:, None, None, :]  # (B, 1, 1, T): keys that may be attended
        x = x + self.pos_conv_embed(x)
        if not self.pre_ln:
            x = self.layer_norm(x)
        x = self.dropout(x)
        depth = len(self.layers) if num_layers is None else num_layers
        hidden = [x]
        for layer in self.layers[:depth]:
            if self.training and self.layer_drop > 0 and torch.rand(()) < self.layer_drop:
                hidden.append(x)
                continue
            x = layer(x, attn_mask)
            hidden.append(x)
        if self.pre_ln and depth == len(self.layers):
            hidden[-1] = self.layer_norm(x)
        return hidden
