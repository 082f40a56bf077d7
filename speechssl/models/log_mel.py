"""Log-mel front end: waveform -> 80-bin log-mel frames every 10 ms -> strided convs to the
model's frame rate. An option beside the raw-waveform conv stack (``ModelConfig.front_end``).

The waveform conv stack spends about half of a small model's compute on its first layers;
a fixed spectrogram costs almost nothing and a two-layer conv over it brings the frame
rate to the encoder's. Both convs are unpadded, so a valid frame only ever reads valid
samples and a padded batch equals its items alone. The mel filterbank is a fixed buffer
(not saved), so a checkpoint holds only the convs.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor, nn
from torch.nn import functional as F

from speechssl.config import LOG_MEL_HOP as HOP
from speechssl.config import SAMPLE_RATE
from speechssl.config import LOG_MEL_KERNELS
from speechssl.config import LOG_MEL_WINDOW as WINDOW
from speechssl.models.feature_encoder import conv_output_lengths

FFT_SIZE = 512
# VTLP's warp is linear up to this fraction of the Nyquist frequency (4.8 of 8 kHz, as in
# Jaitly & Hinton 2013) and then bends to keep the Nyquist bin in place.
WARP_BOUNDARY = 0.6


def mel_filterbank(bins: int) -> Tensor:
    """(FFT_SIZE // 2 + 1, bins) HTK mel triangles over 0-8 kHz."""
    return torchaudio.functional.melscale_fbanks(FFT_SIZE // 2 + 1, 0.0, SAMPLE_RATE / 2, bins, SAMPLE_RATE,
                                                 norm=None, mel_scale="htk")


def warp_spectrum(power: Tensor, factors: Tensor) -> Tensor:
    """Vocal tract length perturbation: item b's frequency axis stretched by ``factors[b]``.

    power (B, F, K) over 0..Nyquist; output bin k reads the input at k / factor (linearly
    interpolated) below the boundary, then a straight line to the Nyquist bin, which stays.
    A factor above 1 moves formants up, as a shorter vocal tract does; timing is untouched.
    """
    nyquist = power.shape[-1] - 1
    k = torch.arange(nyquist + 1, dtype=torch.float32, device=power.device)
    a = factors.float().to(power.device).unsqueeze(1)  # (B, 1)
    bend = WARP_BOUNDARY * nyquist * a.clamp(max=1.0)  # output bin where the line bends
    above = bend / a + (k - bend) * (nyquist - bend / a) / (nyquist - bend)
    source = torch.where(k <= bend, k / a, above).clamp(0, nyquist)  # (B, K)
    low = source.floor().long().clamp(max=nyquist - 1)
    frac = (source - low).to(power.dtype).unsqueeze(1)
    index = low.unsqueeze(1).expand(-1, power.shape[1], -1)
    return power.gather(-1, index) * (1 - frac) + power.gather(-1, index + 1) * frac


def log_mel(waves: Tensor, bank: Tensor, window: Tensor, warp: Tensor | None = None) -> Tensor:
    """(B, S) waveform -> (B, F, bins) log mel energies, F = (S - 400) // 160 + 1 (no centring);
    ``warp`` (B,): each item's VTLP factor (``warp_spectrum``), for training only."""
    if waves.shape[1] < WINDOW:
        return waves.new_zeros(waves.shape[0], 0, bank.shape[1])
    frames = waves.float().unfold(1, WINDOW, HOP) * window  # (B, F, 400)
    # |X|^2 as re^2 + im^2 of the real view: complex abs() takes a square root only to square
    # it again, and costs 4x as much (a third of the front end's time in the server's profile).
    parts = torch.view_as_real(torch.fft.rfft(frames, n=FFT_SIZE)).square()
    power = parts[..., 0] + parts[..., 1]  # (B, F, 257)
    if warp is not None:
        power = warp_spectrum(power, warp)
    with torch.autocast(waves.device.type, enabled=False):  # energies span decades: bf16 would round them
        return torch.log(power @ bank.float() + 1e-6)


class LogMelConv(nn.Module):
    """One unpadded Conv1d + GELU over channels-last frames, lengths carried along."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[1] < self.kernel:  # shorter than one output frame
            return x.new_zeros(x.shape[0], 0, self.conv.out_channels), lengths.clamp(max=0)
        y = F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return y, conv_output_lengths(lengths, [self.kernel], [self.stride])


class LogMelFeatureEncoder(nn.Module):
    """waves (B, S), lengths (B,) -> (B, T, C) frames every ``HOP * stride`` samples, lengths (B,)."""

    def __init__(self, mel_bins: int, dim: int, stride: int):
        super().__init__()
        self.register_buffer("bank", mel_filterbank(mel_bins), persistent=False)
        self.register_buffer("window", torch.hann_window(WINDOW, periodic=False), persistent=False)
        self.conv_layers = nn.ModuleList([LogMelConv(mel_bins, dim, LOG_MEL_KERNELS[0], 1),
                                          LogMelConv(dim, dim, LOG_MEL_KERNELS[1], stride)])
        self.grad_scale = 1.0  # the waveform stack's knob; the convs here are cheap to train at full rate

    def forward(self, waves: Tensor, lengths: Tensor, warp: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = log_mel(waves, self.bank, self.window, warp)
        frames = conv_output_lengths(lengths, [WINDOW], [HOP])
        for layer in self.conv_layers:
            x, frames = layer(x.to(waves.dtype), frames)
        return x, frames
