"""Frame labels for masked prediction: what a masked frame must be classified as.

Two labelers, both a pure function of the waveform once built, so a label never depends
on the batch it came in:
- ``KMeansLabeler`` (HuBERT, first iteration): k-means clusters of MFCCs with deltas, or of
  any other frame features (a layer of an earlier model, for a second iteration).
- ``RandomProjectionLabeler`` (BEST-RQ): a frozen random projection of stacked log-mel
  frames, labelled by the nearest of a frozen random codebook.

Features are taken at the encoder's own frames: frame t of a model with stride s samples
and receptive field r covers samples [t*s, t*s + r), and its label comes from the 10 ms
log-mel frame at the centre of that window. Utterance statistics (mean, variance) are over
valid frames only, so padding never moves a label.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from speechssl.config import LOG_MEL_HOP, LOG_MEL_WINDOW, ModelConfig
from speechssl.models.feature_encoder import conv_output_lengths, valid_mask
from speechssl.models.log_mel import log_mel, mel_filterbank

MFCC_COEFFICIENTS = 13


def normalize_frames(x: Tensor, lengths: Tensor, scale: bool) -> Tensor:
    """Per utterance and channel: subtract the mean (and divide by the std) over valid frames."""
    valid = valid_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
    count = valid.sum(1, keepdim=True).clamp(min=1)
    mean = (x * valid).sum(1, keepdim=True) / count
    x = x - mean
    if scale:
        x = x * torch.rsqrt((x.pow(2) * valid).sum(1, keepdim=True) / count + 1e-5)
    return x * valid


def hold_last_frame(x: Tensor, lengths: Tensor) -> Tensor:
    """Padding frames repeat each item's last valid frame: deltas at the end of an item then read
    what they read for the item alone (compute_deltas replicates the edge frame)."""
    index = torch.minimum(torch.arange(x.shape[1], device=x.device)[None], (lengths - 1).clamp(min=0)[:, None])
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class FrameFeatures(nn.Module):
    """waves (B, S) -> (B, T, D) features at the encoder's T frames: ``mfcc`` (39: 13 + deltas)
    or ``log_mel`` (``stack`` consecutive normalised 80-bin frames, for BEST-RQ)."""

    def __init__(self, model: ModelConfig, kind: str, stack: int = 1):
        super().__init__()
        if model.frame_stride % LOG_MEL_HOP or (model.receptive_field - LOG_MEL_WINDOW) % (2 * LOG_MEL_HOP):
            raise ValueError("masked-prediction labels need frames on the 10 ms log-mel grid "
                             f"(frame stride {model.frame_stride}, receptive field {model.receptive_field})")
        self.kind, self.stack = kind, stack
        self.hops_per_frame = model.frame_stride // LOG_MEL_HOP
        self.centre = (model.receptive_field - LOG_MEL_WINDOW) // (2 * LOG_MEL_HOP)
        self.geometry = model.frame_geometry
        bins = 40 if kind == "mfcc" else 80
        self.register_buffer("bank", mel_filterbank(bins), persistent=False)
        self.register_buffer("window", torch.hann_window(LOG_MEL_WINDOW, periodic=False), persistent=False)
        self.register_buffer("dct", torchaudio.functional.create_dct(MFCC_COEFFICIENTS, bins, "ortho"),
                             persistent=False)

    @property
    def dim(self) -> int:
        return 3 * MFCC_COEFFICIENTS if self.kind == "mfcc" else self.bank.shape[1] * self.stack

    @torch.no_grad()
    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        mel = log_mel(waves, self.bank, self.window)  # (B, F, bins)
        mel_frames = conv_output_lengths(lengths, [LOG_MEL_WINDOW], [LOG_MEL_HOP])
        if self.kind == "mfcc":
            mfcc = hold_last_frame(mel @ self.dct, mel_frames)  # (B, F, 13)
            d1 = hold_last_frame(torchaudio.functional.compute_deltas(mfcc.transpose(1, 2)).transpose(1, 2), mel_frames)
            d2 = torchaudio.functional.compute_deltas(d1.transpose(1, 2)).transpose(1, 2)
            feats = normalize_frames(torch.cat([mfcc, d1, d2], -1), mel_frames, False)
        else:
            feats = normalize_frames(mel, mel_frames, True)
        feats = hold_last_frame(feats, mel_frames)  # a stack past an item's end repeats its last frame, as alone
        frames = conv_output_lengths(lengths, *self.geometry)
        num = int(frames.max()) if len(frames) else 0
        index = torch.arange(num, device=waves.device) * self.hops_per_frame + self.centre - (self.stack - 1) // 2
        index = index[:, None] + torch.arange(self.stack, device=waves.device)  # (T, stack)
        index = index.clamp(0, max(feats.shape[1] - 1, 0))
        picked = feats[:, index.flatten()].reshape(feats.shape[0], num, -1)  # (B, T, stack * D)
        return picked, frames


class KMeansLabeler(nn.Module):
    """Nearest of ``centers`` (K, D), fitted with scikit-learn's MiniBatchKMeans."""

    def __init__(self, centers: Tensor):
        super().__init__()
        self.register_buffer("centers", centers.float())

    @property
    def num_classes(self) -> int:
        return self.centers.shape[0]

    @classmethod
    def fit(cls, features: np.ndarray, num_clusters: int, seed: int) -> "KMeansLabeler":
        from sklearn.cluster import MiniBatchKMeans

        kmeans = MiniBatchKMeans(n_clusters=num_clusters, random_state=seed, batch_size=10_000, n_init=3,
                                 max_iter=100, reassignment_ratio=0.0)
        kmeans.fit(features.astype(np.float32))
        return cls(torch.from_numpy(kmeans.cluster_centers_))

    def forward(self, features: Tensor) -> Tensor:
        """(B, T, D) -> (B, T) cluster ids."""
        flat = features.reshape(-1, features.shape[-1]).float()
        dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.centers.t() + self.centers.pow(2).sum(1))
        return dist.argmin(1).reshape(features.shape[:-1])


class RandomProjectionLabeler(nn.Module):
    """BEST-RQ: a Xavier-initialised projection to ``dim`` and a unit-norm codebook, both frozen."""

    def __init__(self, in_dim: int, num_codes: int, dim: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        bound = (6.0 / (in_dim + dim)) ** 0.5
        self.register_buffer("projection", (torch.rand(in_dim, dim, generator=generator) * 2 - 1) * bound)
        codes = torch.randn(num_codes, dim, generator=generator)
        self.register_buffer("centers", codes / codes.norm(dim=1, keepdim=True))

    @property
    def num_classes(self) -> int:
        return self.centers.shape[0]

    def forward(self, features: Tensor) -> Tensor:
        z = nn.functional.normalize(features.float() @ self.projection, dim=-1)
        return (z @ self.centers.t()).argmax(-1)  # the nearest unit codeword is the most similar
