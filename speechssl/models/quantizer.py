"""Gumbel product quantizer: G codebooks of V entries, one entry chosen per group.

Training picks entries with a straight-through Gumbel softmax at temperature tau;
evaluation takes the argmax. Perplexity of the batch-averaged soft assignment, summed
over groups, measures codebook use (G x V when every entry is equally used).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from speechssl.config import ModelConfig


@dataclass
class QuantizerOutput:
    quantized: Tensor  # (B, T, codevector_dim)
    perplexity: Tensor  # () summed over groups
    indices: Tensor  # (B, T, G) chosen entry per group


class GumbelQuantizer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_groups = config.num_codevector_groups
        self.num_vars = config.num_codevectors
        # Zero-mean entries: the reference's U[0, 1) init gives every entry a shared +0.5
        # component, so all targets start ~0.9 cosine-similar and the contrastive task sits
        # at chance for thousands of updates, longer than a CPU run lasts.
        self.codevectors = nn.Parameter(
            torch.empty(1, self.num_groups * self.num_vars, config.codevector_dim // self.num_groups).uniform_(-1, 1)
        )
        self.weight_proj = nn.Linear(config.conv_dims[-1], self.num_groups * self.num_vars)
        nn.init.normal_(self.weight_proj.weight, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        self.temperature = 2.0

    def forward(self, features: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        """features (B, T, C_conv), mask (B, T) bool: frames that count for the perplexity."""
        b, t, _ = features.shape
        logits = self.weight_proj(features).float().view(b * t * self.num_groups, self.num_vars)
        if self.training:
            probs = gumbel_softmax_hard(logits, self.temperature, generator)
            soft = logits.view(b * t, self.num_groups, -1).softmax(-1)
        else:
            probs = F.one_hot(logits.argmax(-1), self.num_vars).to(logits.dtype)
            soft = probs.view(b * t, self.num_groups, -1)
        perplexity = codebook_perplexity(soft, mask.flatten())
        probs = probs.type_as(features).view(b * t, self.num_groups, self.num_vars)
        # Weighted sum of each group's entries as a matmul, never materialising (BT, G, V, d/G):
        # (G, BT, V) @ (G, V, d/G) -> (G, BT, d/G) -> (B, T, d)
        codebooks = self.codevectors.view(self.num_groups, self.num_vars, -1)
        chosen = torch.bmm(probs.transpose(0, 1), codebooks).transpose(0, 1).reshape(b, t, -1)
        indices = probs.view(b, t, self.num_groups, self.num_vars).argmax(-1)
        return QuantizerOutput(chosen, perplexity, indices)


def gumbel_softmax_hard(logits: Tensor, tau: float, generator: torch.Generator | None) -> Tensor:
    """Straight-through Gumbel softmax; a generator makes the noise reproducible."""
    if generator is None:
        return F.gumbel_softmax(logits, tau=tau, hard=True)
    # Drawn on the CPU generator (the loop seeds one per step), so CPU and GPU runs draw alike.
    uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float32).to(logits.device, logits.dtype)
    exponential = (-torch.log(uniform.clamp(min=1e-10))).clamp(min=1e-10)
    gumbels = -torch.log(exponential)
    soft = ((logits + gumbels) / tau).softmax(-1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def codebook_perplexity(soft: Tensor, frame_mask: Tensor) -> Tensor:
    """soft (N, G, V), frame_mask (N,) bool -> perplexity of the mean distribution, summed over G."""
    count = frame_mask.sum().clamp(min=1)
    marginal = (soft * frame_mask[:, None, None].to(soft.dtype)).sum(0) / count  # (G, V)
    return torch.exp(-(marginal * torch.log(marginal + 1e-7)).sum(-1)).sum()
