"""The inference fast path (no gradients) equals the plain training path.

Without autograd the encoder runs fused q/k/v, the folded weight norm through an FFT
positional conv (CPU), the conv stack as matmuls with reused scratch buffers, and
optionally int8 weights. These tests hold each of those to the plain path: 1e-4 (the
project's parity tolerance; measured ~1e-6), int8 to a stated looser bound.
"""

from __future__ import annotations

import copy
import dataclasses
import threading

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import speechssl
from speechssl.config import base, tiny
from speechssl.models.feature_encoder import MaskedGroupNorm, normed_conv, strided_conv
from speechssl.models.inference import linear, quantize_int8
from speechssl.models.transformer import PositionalConv
from speechssl.models.wav2vec2 import Wav2Vec2Model

TOL = 1e-4
VARIANTS = {
    "group-norm": tiny(),
    "layer-norm": dataclasses.replace(tiny(), conv_norm="layer", conv_bias=True, layer_norm_first=True),
    "base-shaped": dataclasses.replace(base(), num_layers=2),
}


def model(cfg, seed: int = 0) -> Wav2Vec2Model:
    torch.manual_seed(seed)
    m = Wav2Vec2Model(cfg).eval()
    with torch.no_grad():  # move every weight off its init so a misplaced one shows
        for p in m.parameters():
            p.mul_(1 + 0.1 * torch.randn_like(p)).add_(0.02 * torch.randn_like(p))
    return m


def padded(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    waves = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        waves[i, :n] = torch.randn(n, generator=gen) * 0.1
    return waves, torch.tensor(lengths)


def plain(m: Wav2Vec2Model, waves, lengths, **kw):
    """The training path (autograd on), in eval mode so dropout is off."""
    with torch.enable_grad():
        return m(waves, lengths, **kw)


def assert_close(fast, slow, tol=TOL):
    assert len(fast.hidden_states) == len(slow.hidden_states)
    assert torch.equal(fast.lengths, slow.lengths)
    for layer, (a, b) in enumerate(zip(fast.hidden_states, slow.hidden_states)):
        diff = (a - b.detach()).abs().max().item()
        assert diff < tol, f"hidden state {layer}: max |diff| {diff:.2e}"
    assert (fast.raw_features - slow.raw_features.detach()).abs().max() < tol


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_fast_path_equals_training_path(variant, mode):
    m = model(VARIANTS[variant])
    waves, lengths = padded([16000, 9000, 4321, 400])
    slow = plain(m, waves, lengths)
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        fast = m(waves, lengths)
        again = m(waves, lengths)  # from the cached derived weights and reused buffers
    assert_close(fast, slow)
    assert_close(again, slow)


def test_prepared_model_on_equal_lengths_and_single_frames():
    m = model(VARIANTS["base-shaped"]).prepare_for_inference()
    for lengths in ([32000, 32000], [400], [401, 700]):
        waves, lengths = padded(lengths)
        with torch.inference_mode():
            assert_close(m(waves, lengths), plain(m, waves, lengths))


def test_fused_qkv_equals_separate_projections():
    m = model(VARIANTS["base-shaped"])
    attention = m.encoder.layers[0].attention
    x = torch.randn(2, 37, 768)
    with torch.no_grad():
        fused = attention.qkv(x)
    separate = [proj(x).view(2, 37, 12, -1).transpose(1, 2) for proj in (attention.q_proj, attention.k_proj, attention.v_proj)]
    for a, b in zip(fused, separate):
        assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("kernel", [16, 128, 7])
@pytest.mark.parametrize("frames", [1, 5, 200, 1000])
def test_fft_positional_conv_equals_direct_conv(kernel, frames):
    cfg = dataclasses.replace(tiny(), pos_conv_kernel=kernel, hidden_size=64, pos_conv_groups=4, num_heads=4)
    torch.manual_seed(0)
    pos = PositionalConv(cfg)
    x = torch.randn(2, frames, 64)
    direct = F.conv1d(x.transpose(1, 2), pos.weight().detach(), None, padding=kernel // 2, groups=4)
    with torch.no_grad():
        fft = pos.fft_conv(x.transpose(1, 2))
    assert fft.shape == direct.shape
    assert (fft - direct).abs().max() < 1e-5


@pytest.mark.parametrize(("kernel", "stride", "channels"), [(3, 2, 8), (2, 2, 8), (5, 2, 4), (10, 5, 1), (4, 3, 8)])
def test_strided_conv_forward_and_gradients_equal_conv1d(kernel, stride, channels):
    torch.manual_seed(0)
    x = torch.randn(2, 41, channels, dtype=torch.double, requires_grad=True)
    w = torch.randn(6, channels, kernel, dtype=torch.double, requires_grad=True)
    ours = strided_conv(x, w.permute(2, 1, 0).reshape(-1, 6), kernel, stride)
    ref = F.conv1d(x.transpose(1, 2), w, stride=stride).transpose(1, 2)
    assert (ours - ref).abs().max() < 1e-10
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((ours * grad).sum(), (x, w)), torch.autograd.grad((ref * grad).sum(), (x, w))):
        assert (a - b).abs().max() < 1e-10


def test_normed_conv_equals_conv_then_masked_group_norm():
    torch.manual_seed(0)
    norm = MaskedGroupNorm(16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    w = torch.randn(16, 1, 10)
    waves, lengths = padded([8000, 5000, 400])
    frames = (lengths - 10) // 5 + 1
    taps = w.permute(2, 1, 0).reshape(10, 16)
    ours = normed_conv(waves.unsqueeze(-1) + 0.3, frames, taps, norm, 10, 5)  # a DC offset too
    conv = F.conv1d(waves.unsqueeze(1) + 0.3, w, stride=5).transpose(1, 2)
    ref = norm(conv, frames)
    for i, n in enumerate(frames.tolist()):
        assert (ours[i, :n] - ref[i, :n]).abs().max() < 1e-4


def test_early_stop_runs_only_the_layers_asked_for():
    m = model(VARIANTS["group-norm"])
    waves, lengths = padded([12000, 7000])
    calls = []
    for i, layer in enumerate(m.encoder.layers):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
    with torch.inference_mode():
        full = m(waves, lengths)
        calls.clear()
        part = m(waves, lengths, num_layers=1)
    assert calls == [0]
    assert torch.equal(part.hidden_states[1], full.hidden_states[1])


def test_derived_weights_follow_in_place_updates_and_training():
    """An optimizer step or load_state_dict after an inference call must not leave stale fused weights."""
    m = model(VARIANTS["group-norm"])
    waves, lengths = padded([9000, 6000])
    with torch.no_grad():
        m(waves, lengths)  # builds the caches
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    out = m(waves, lengths)
    out.last.pow(2).mean().backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if n != "masked_spec_embed")
    opt.step()
    m.eval()
    with torch.no_grad():
        after_step = m(waves, lengths)
    assert_close(after_step, plain(m, waves, lengths))
    m.load_state_dict(model(VARIANTS["group-norm"], seed=5).state_dict())
    with torch.no_grad():
        after_load = m(waves, lengths)
    assert_close(after_load, plain(m, waves, lengths))


def test_returned_features_are_not_overwritten_by_the_next_call():
    m = model(VARIANTS["base-shaped"])
    with torch.inference_mode():
        first = m(*padded([16000, 12000], seed=1))
        kept = first.raw_features.clone()
        m(*padded([24000, 20000], seed=2))
    assert torch.equal(first.raw_features, kept)


def test_concurrent_threads_get_their_own_buffers():
    m = model(VARIANTS["group-norm"])
    inputs = [padded([16000 - 1000 * i, 9000], seed=i) for i in range(4)]
    with torch.no_grad():
        expected = [m(w, n).last for w, n in inputs]
    results: dict[int, torch.Tensor] = {}

    def work(i):
        with torch.no_grad():
            for _ in range(3):
                results[i] = m(*inputs[i]).last

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Not bitwise: under contention the BLAS splits work differently and the last bits move
    # (1e-5 seen with 2 threads).
    # A shared buffer would hand one thread another input's frames, far outside this tolerance.
    for i, ref in enumerate(expected):
        torch.testing.assert_close(results[i], ref, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- int8


INT8_MIN_COSINE = 0.98  # per frame, random weights; the CER cost is in docs/benchmarks.md


def test_int8_stays_close_and_leaves_the_parameters_alone():
    m = model(VARIANTS["base-shaped"])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    q = quantize_int8(copy.deepcopy(m))
    waves, lengths = padded([16000, 9000])
    with torch.inference_mode():
        ref, out = m(waves, lengths), q(waves, lengths)
    n = int(ref.lengths.min())
    cosine = F.cosine_similarity(out.last[:, :n], ref.last[:, :n], dim=-1)
    assert cosine.min() > INT8_MIN_COSINE
    assert not torch.equal(out.last, ref.last)  # it did quantize
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k
    q.train()  # training an int8-marked module uses the fp32 parameters
    loss = q(waves, lengths).last.pow(2).mean()
    loss.backward()


def test_load_with_int8(tiny_checkpoint):
    fp32 = speechssl.load(tiny_checkpoint, device="cpu")
    int8 = speechssl.load(tiny_checkpoint, device="cpu", quantize="int8")
    wave = (np.random.default_rng(0).standard_normal(24000) * 0.1).astype(np.float32)
    a, b = fp32.embed(wave, sample_rate=16000), int8.embed(wave, sample_rate=16000)
    assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > INT8_MIN_COSINE
    with pytest.raises(ValueError, match="quantize must be None or 'int8'"):
        speechssl.load(tiny_checkpoint, device="cpu", quantize="int4")
    with pytest.raises(ValueError, match="precision must be"):
        speechssl.load(tiny_checkpoint, device="cpu", precision="fp8")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bf16_fast_path_equals_the_bf16_training_path(variant):
    """Under bf16 autocast the inference path keeps bf16 copies of the matmul weights and
    reuses the conv stack's buffers in bf16: the same numbers as autocast's per-call casts,
    up to bf16 rounding of a different summation order."""
    m = model(VARIANTS[variant])
    waves, lengths = padded([16000, 9000, 4321, 400])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        slow = plain(m, waves, lengths)
        with torch.inference_mode():
            fast = m(waves, lengths)
            again = m(waves, lengths)
    for a, b, c in zip(fast.hidden_states, slow.hidden_states, again.hidden_states):
        assert torch.equal(a, c)  # the reused buffers give the same result
        scale = b.detach().float().abs().max().item()
        assert (a.float() - b.detach().float()).abs().max().item() < 0.03 * scale
    ffn = m.encoder.layers[0].feed_forward
    x = torch.randn(3, 7, m.config.hidden_size)
    up = ffn.intermediate_dense
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        fast = linear(ffn, "probe", x, (up.weight, up.bias), lambda: up.weight, lambda: up.bias)
        assert torch.equal(fast, F.linear(x, up.weight, up.bias))  # autocast's own cast, bit for bit
    assert up.weight.dtype == torch.float32  # the parameters stay fp32
    weight, bias = ffn.__dict__["_derived_weights"]["probe.torch.bfloat16"][1]  # cast once, kept
    assert weight.dtype == bias.dtype == torch.bfloat16
