"""Model parts on the tiny preset: padding invariance, masking, negatives, quantizer, loss pieces."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from speechssl.config import ModelConfig, base, tiny
from speechssl.models.feature_encoder import FeatureEncoder, conv_output_lengths
from speechssl.models.masking import sample_negatives, span_mask
from speechssl.models.quantizer import GumbelQuantizer, codebook_perplexity
from speechssl.models.wav2vec2 import Wav2Vec2ForPretraining, Wav2Vec2Model, contrastive_logits

VARIANTS = {
    "group-norm": tiny(),
    "layer-norm": dataclasses.replace(tiny(), conv_norm="layer", conv_bias=True, layer_norm_first=True),
    # WavLM's gated relative position bias; few buckets, so 49 frames reach the far ones too
    "rel-pos-bias": dataclasses.replace(tiny(), rel_pos_bias=True, rel_pos_buckets=16, rel_pos_max_distance=20),
}


def padded(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    waves = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        waves[i, :n] = torch.randn(n, generator=gen) * 0.1
    return waves, torch.tensor(lengths)


def encoder(cfg: ModelConfig, seed: int = 0) -> Wav2Vec2Model:
    torch.manual_seed(seed)
    return Wav2Vec2Model(cfg).eval()


# --------------------------------------------------------------------------- padding


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_batch_equals_items_alone_at_every_layer(variant):
    model = encoder(VARIANTS[variant])
    waves, lengths = padded([16000, 9000, 4321, 400])
    out = model(waves, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = model(waves[i : i + 1, :n])
        frames = int(out.lengths[i])
        assert alone.last.shape[1] == frames
        for layer, (a, b) in enumerate(zip(out.hidden_states, alone.hidden_states)):
            diff = (a[i, :frames] - b[0]).abs().max().item()
            assert diff < 1e-5, f"item {i}, hidden state {layer}: max |diff| {diff:.2e}"


@torch.no_grad()
def test_shortest_input_gives_one_frame():
    model = encoder(tiny())
    out = model(torch.randn(1, 400) * 0.1)  # one receptive field
    assert out.last.shape == (1, 1, tiny().hidden_size)
    assert out.lengths.tolist() == [1]
    assert torch.isfinite(out.last).all()


@torch.no_grad()
def test_zero_length_item_in_a_batch():
    model = encoder(tiny())
    waves, _ = padded([8000, 8000])
    out = model(waves, torch.tensor([8000, 0]))
    assert out.lengths.tolist() == [out.last.shape[1], 0]
    assert all(torch.isfinite(h).all() for h in out.hidden_states)
    alone = model(waves[:1])
    assert (out.last[0] - alone.last[0]).abs().max() < 1e-5


@torch.no_grad()
def test_pretraining_loss_with_an_utterance_too_short_to_mask():
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(tiny()).eval()
    waves, lengths = padded([16000, 400])
    out = model(waves, lengths, num_negatives=10, generator=torch.Generator().manual_seed(0))
    assert out.num_masked > 0 and torch.isfinite(out.loss)


@torch.no_grad()
def test_feature_penalty_ignores_padding():
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(tiny()).eval()
    waves, lengths = padded([16000, 6000])
    out = model(waves, lengths, num_negatives=10, generator=torch.Generator().manual_seed(0))
    alone = [model.wav2vec2(waves[i : i + 1, :n]).raw_features[0] for i, n in enumerate(lengths.tolist())]
    expected = torch.cat(alone).pow(2).mean()
    assert out.feature_penalty.item() == pytest.approx(expected.item(), rel=1e-5)


def test_frame_count_of_base_conv_stack():
    cfg = base()
    assert (cfg.receptive_field, cfg.frame_stride) == (400, 320)
    samples = torch.arange(400, 60000, 37)
    expected = torch.div(samples - 400, 320, rounding_mode="floor") + 1
    assert torch.equal(conv_output_lengths(samples, cfg.conv_kernels, cfg.conv_strides), expected)
    narrow = FeatureEncoder(dataclasses.replace(cfg, conv_dims=[8] * 7))  # BASE kernels and strides
    for s in (400, 719, 720, 16000, 16321):
        features, frames = narrow(torch.randn(1, s), torch.tensor([s]))
        assert features.shape[1] == int(frames[0]) == (s - 400) // 320 + 1


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_early_stop_equals_full_run(variant):
    model = encoder(dataclasses.replace(VARIANTS[variant], num_layers=4))
    waves, lengths = padded([12000, 7000])
    full = model(waves, lengths)
    for n in range(1, 4):
        part = model(waves, lengths, num_layers=n)
        assert len(part.hidden_states) == n + 1
        assert torch.equal(part.hidden_states[n], full.hidden_states[n])


# --------------------------------------------------------------------------- span masking


def runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of True in a 1-D bool tensor as (start, length)."""
    out, start = [], None
    for t, masked in enumerate(row.tolist() + [False]):
        if masked and start is None:
            start = t
        elif not masked and start is not None:
            out.append((start, t - start))
            start = None
    return out


def test_span_mask_stays_off_padding_and_short_utterances():
    lengths = torch.tensor([200, 57, 10, 9, 0])
    for seed in range(20):
        mask = span_mask(lengths, 200, 0.65, 10, min_masks=2, generator=torch.Generator().manual_seed(seed))
        for i, n in enumerate(lengths.tolist()):
            assert not mask[i, n:].any()
        assert int(mask[2].sum()) == 10  # exactly one span fits
        assert not mask[3].any() and not mask[4].any()  # shorter than one span: no mask


def test_spans_are_mask_length_long():
    lengths = torch.full((50,), 300)
    one_span = span_mask(lengths, 300, 0.01, 10, min_masks=1, generator=torch.Generator().manual_seed(0))
    for row in one_span:
        assert [length for _, length in runs(row)] == [10]
    mask = span_mask(lengths, 300, 0.65, 10, min_masks=2, generator=torch.Generator().manual_seed(1))
    for row in mask:  # overlapping spans merge into longer runs, never shorter ones
        assert all(length >= 10 for _, length in runs(row))


def test_masked_ratio_at_paper_defaults():
    cfg = base()
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(400, 800, (200,), generator=gen)
    mask = span_mask(lengths, int(lengths.max()), cfg.mask_prob, cfg.mask_length, cfg.min_masks, generator=gen)
    ratio = mask.sum().item() / lengths.sum().item()
    assert ratio == pytest.approx(0.49, abs=0.03)


def test_span_mask_is_deterministic_given_a_generator():
    lengths = torch.tensor([120, 80, 33])

    def draw(seed):
        return span_mask(lengths, 120, 0.65, 10, 2, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


# --------------------------------------------------------------------------- negatives


def test_negatives_come_from_other_masked_frames_of_the_same_utterance():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([120, 80, 30])
    mask = span_mask(lengths, 120, 0.65, 10, 2, generator=gen)
    negatives = sample_negatives(mask, 50, generator=gen)
    assert negatives.shape == (3, 120, 50)
    for i, n in enumerate(lengths.tolist()):
        masked = set(mask[i].nonzero().flatten().tolist())
        assert len(masked) >= 2
        for t in masked:
            drawn = set(negatives[i, t].tolist())
            assert drawn <= masked, "a distractor outside the masked frames of its utterance"
            assert t not in drawn, "the positive drawn as its own distractor"
            assert max(drawn) < n, "a distractor from padding"


def test_negatives_of_a_single_masked_frame_point_at_itself():
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, 7] = True
    negatives = sample_negatives(mask, 5, generator=torch.Generator().manual_seed(0))
    assert negatives[0, 7].tolist() == [7] * 5  # the loss masks these out as equal to the positive


# --------------------------------------------------------------------------- quantizer


def quantizer(seed: int = 0) -> GumbelQuantizer:
    torch.manual_seed(seed)
    return GumbelQuantizer(tiny())


def test_quantizer_eval_takes_the_argmax():
    q = quantizer().eval()
    features = torch.randn(2, 7, tiny().conv_dims[-1])
    mask = torch.ones(2, 7, dtype=torch.bool)
    with torch.no_grad():
        out = q(features, mask)
        logits = q.weight_proj(features).view(2, 7, q.num_groups, q.num_vars)
    assert torch.equal(out.indices, logits.argmax(-1))
    codebooks = q.codevectors.view(q.num_groups, q.num_vars, -1)  # (G, V, d/G)
    expected = torch.cat([codebooks[g][out.indices[..., g]] for g in range(q.num_groups)], dim=-1)
    assert torch.allclose(out.quantized, expected)


def test_perplexity_of_uniform_use_and_of_collapse():
    groups, entries = 2, 320
    every_frame = torch.ones(entries, dtype=torch.bool)
    # Each of V frames picks a different entry in every group: uniform use.
    uniform = F.one_hot(torch.arange(entries), entries).float()[:, None, :].expand(entries, groups, entries)
    assert codebook_perplexity(uniform, every_frame).item() == pytest.approx(groups * entries, rel=1e-3)
    soft_uniform = torch.full((10, groups, entries), 1.0 / entries)
    ten_frames = torch.ones(10, dtype=torch.bool)
    assert codebook_perplexity(soft_uniform, ten_frames).item() == pytest.approx(groups * entries, rel=1e-3)
    # Every frame picks entry 5: one entry per group in use.
    collapsed = F.one_hot(torch.full((entries,), 5), entries).float()[:, None, :].expand(entries, groups, entries)
    assert codebook_perplexity(collapsed, every_frame).item() == pytest.approx(groups, rel=1e-5)


def test_perplexity_ignores_unmasked_frames():
    entries = 4
    soft = F.one_hot(torch.tensor([0, 1, 2, 3]), entries).float()[:, None, :]  # (N, 1, V)
    mask = torch.tensor([True, True, False, False])
    assert codebook_perplexity(soft, mask).item() == pytest.approx(2.0, rel=1e-5)


def test_straight_through_gradient_reaches_logits_and_codebook():
    q = quantizer().train()
    features = torch.randn(2, 9, tiny().conv_dims[-1], requires_grad=True)
    out = q(features, torch.ones(2, 9, dtype=torch.bool), generator=torch.Generator().manual_seed(0))
    # Forward: exactly one entry per group (hard); backward: through the soft probabilities.
    codebooks = q.codevectors.view(q.num_groups, q.num_vars, -1)
    expected = torch.cat([codebooks[g][out.indices[..., g]] for g in range(q.num_groups)], dim=-1)
    assert torch.allclose(out.quantized, expected, atol=1e-6)
    (out.quantized * torch.randn_like(out.quantized)).sum().backward()
    for name, grad in [("features", features.grad), ("weight_proj", q.weight_proj.weight.grad),
                       ("codevectors", q.codevectors.grad)]:
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_gumbel_draws_are_reproducible_with_a_generator():
    q = quantizer().train()
    features = torch.randn(2, 9, tiny().conv_dims[-1])
    mask = torch.ones(2, 9, dtype=torch.bool)
    a = q(features, mask, generator=torch.Generator().manual_seed(1)).indices
    b = q(features, mask, generator=torch.Generator().manual_seed(1)).indices
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- contrastive logits


def test_distractor_equal_to_the_positive_is_excluded():
    torch.manual_seed(0)
    t, p = 6, 8
    targets = torch.randn(1, t, p)
    targets[0, 3] = targets[0, 1]  # frames 1 and 3 quantize to the same codewords
    context = torch.randn(1, t, p)
    mask = torch.zeros(1, t, dtype=torch.bool)
    mask[0, 1:5] = True
    negatives = torch.zeros(1, t, 3, dtype=torch.long)
    negatives[0, 1] = torch.tensor([3, 2, 4])
    negatives[0, 2] = torch.tensor([1, 3, 4])
    negatives[0, 3] = torch.tensor([1, 2, 4])
    negatives[0, 4] = torch.tensor([1, 2, 3])
    logits = contrastive_logits(context, targets, negatives, mask, temperature=0.1)  # (M, K+1)
    assert logits.shape == (4, 4)
    inf = torch.isinf(logits)
    assert inf.tolist() == [[False, True, False, False],  # frame 1: distractor 3 equals its positive
                            [False, False, False, False],  # frame 2: 1 and 3 equal each other, not the positive
                            [False, True, False, False],  # frame 3: distractor 1 equals its positive
                            [False, False, False, False]]
    assert (logits[inf] < 0).all()
    positive = F.cosine_similarity(context[0, 1], targets[0, 1], dim=0) / 0.1
    assert logits[0, 0].item() == pytest.approx(positive.item(), rel=1e-5)
    loss = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    assert torch.isfinite(loss)
