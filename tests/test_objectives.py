"""The log-mel front end and the masked-prediction objectives keep the project's invariants:
a padded batch equals its items alone, lengths travel with tensors, the loss reads masked
frames only, labels never come from padding, k-means is deterministic for a seed, and a
killed run resumes on the same trajectory."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from speechssl.config import ConfigError, build_model_config
from speechssl.data.augment import AugmentConfig, mixed_manifests
from speechssl.interop.hf import HfInteropError, export_hf
from speechssl.models.masked_prediction import Wav2Vec2ForMaskedPrediction
from speechssl.models.targets import FrameFeatures, KMeansLabeler, RandomProjectionLabeler
from speechssl.models.wav2vec2 import Wav2Vec2Model
from speechssl.train.pretrain import run_pretrain
from tests.test_pretrain import kill_at_first_resume_file, overrides, train_losses


def log_mel_tiny():
    return build_model_config({"preset": "tiny", "front_end": "log_mel", "layer_drop": 0.0})


def padded_pair(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    short, long = torch.randn(9_000, generator=gen), torch.randn(16_000, generator=gen)
    waves = torch.zeros(2, 16_000)
    waves[0, :9_000], waves[1] = short, long
    return waves, torch.tensor([9_000, 16_000]), short


def test_log_mel_geometry_matches_the_conv_stack_frame_rate():
    cfg = log_mel_tiny()
    assert cfg.frame_stride == 320  # 20 ms frames: timestamps and chunk seams stay where they were
    assert cfg.receptive_field == 400 + 2 * 160 + 2 * 160
    model = Wav2Vec2Model(cfg).eval()
    waves, lengths, _ = padded_pair()
    out = model(waves, lengths)
    assert out.lengths.tolist() == model.frame_lengths(lengths).tolist()
    assert out.last.shape[1] == int(out.lengths.max())


def test_log_mel_padded_batch_equals_items_alone():
    model = Wav2Vec2Model(log_mel_tiny()).eval()
    waves, lengths, short = padded_pair()
    with torch.no_grad():
        batch = model(waves, lengths)
        alone = model(short[None], torch.tensor([9_000]))
    n = int(alone.lengths[0])
    assert int(batch.lengths[0]) == n
    for b, a in zip(batch.hidden_states, alone.hidden_states):
        torch.testing.assert_close(b[0, :n], a[0], atol=2e-5, rtol=1e-4)


def test_log_mel_state_dict_holds_no_filterbank_and_export_hf_refuses_it(tmp_path):
    from speechssl.checkpoint import Checkpoint, save_checkpoint

    cfg = log_mel_tiny()
    model = Wav2Vec2Model(cfg)
    assert not any("bank" in k or "window" in k for k in model.state_dict())
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, Checkpoint({f"wav2vec2.{k}": v for k, v in model.state_dict().items()}, cfg, {"kind": "pretrain"}))
    with pytest.raises(HfInteropError, match="log_mel"):
        export_hf(path, tmp_path / "hf")


@pytest.mark.parametrize("kind", ["mfcc", "log_mel"])
@pytest.mark.parametrize("front_end", ["conv", "log_mel"])
def test_frame_features_ignore_padding_and_match_the_encoder_frames(kind, front_end):
    cfg = build_model_config({"preset": "tiny", "front_end": front_end})
    feats = FrameFeatures(cfg, kind, stack=4 if kind == "log_mel" else 1)
    waves, lengths, short = padded_pair(1)
    batch, frames = feats(waves, lengths)
    alone, alone_frames = feats(short[None], torch.tensor([9_000]))
    assert frames.tolist() == Wav2Vec2Model(cfg).frame_lengths(lengths).tolist()
    assert batch.shape == (2, int(frames.max()), feats.dim)
    n = int(alone_frames[0])
    torch.testing.assert_close(batch[0, :n], alone[0, :n], atol=1e-4, rtol=1e-4)


def test_kmeans_labels_are_deterministic_for_a_seed():
    gen = torch.Generator().manual_seed(0)
    data = torch.cat([torch.randn(300, 6, generator=gen) + 4 * i for i in range(5)]).numpy()
    a, b = KMeansLabeler.fit(data, 5, seed=3), KMeansLabeler.fit(data, 5, seed=3)
    torch.testing.assert_close(a.centers, b.centers)
    labels = a(torch.from_numpy(data)[None])
    assert labels.shape == (1, 1500) and len(set(labels.flatten().tolist())) == 5
    # points drawn around one centre get one label
    assert len(set(labels[0, :300].tolist())) == 1


def test_random_projection_labels_depend_only_on_the_seed():
    a, b = RandomProjectionLabeler(32, 64, 8, seed=1), RandomProjectionLabeler(32, 64, 8, seed=1)
    x = torch.randn(2, 10, 32)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), RandomProjectionLabeler(32, 64, 8, seed=2)(x))


def test_masked_prediction_loss_reads_masked_frames_only():
    torch.manual_seed(0)
    model = Wav2Vec2ForMaskedPrediction(log_mel_tiny(), num_classes=7).eval()
    waves, lengths, _ = padded_pair(2)
    frames = model.wav2vec2.frame_lengths(lengths)
    t = int(frames.max())
    mask = torch.zeros(2, t, dtype=torch.bool)
    mask[0, 3:9] = True
    mask[1, 20:30] = True
    labels = torch.randint(0, 7, (2, t))
    base = model(waves, lengths, labels, time_mask=mask)
    assert base.num_masked == 16
    changed = labels.clone()
    changed[~mask] = (changed[~mask] + 1) % 7  # every unmasked label, padding included
    again = model(waves, lengths, changed, time_mask=mask)
    assert float(again.loss) == pytest.approx(float(base.loss))
    changed[0, 4] = (changed[0, 4] + 1) % 7  # one masked label does move it
    assert float(model(waves, lengths, changed, time_mask=mask).loss) != pytest.approx(float(base.loss))


def test_vtlp_warp_moves_a_tone_and_keeps_items_apart():
    from speechssl.models.log_mel import warp_spectrum

    power = torch.zeros(2, 3, 257)
    power[:, :, 50] = 1.0  # a peak at 50 of 256 bins (1.56 kHz), below the bend
    warped = warp_spectrum(power, torch.tensor([1.0, 1.2]))
    assert torch.allclose(warped[0], power[0])  # factor 1: unchanged
    assert int(warped[1, 0].argmax()) == 60  # formants up by the factor, as a shorter vocal tract moves them
    assert torch.allclose(warped[1, :, 256], power[1, :, 256])  # the Nyquist bin stays
    # Factors below 1 too, and the warp keeps frame order: each frame is warped alike.
    down = warp_spectrum(power, torch.tensor([0.8, 0.8]))
    assert int(down[0, 0].argmax()) == 40 and torch.equal(down[:, 0], down[:, 2])


def test_vtlp_warp_changes_the_student_input_not_its_padding_or_frames():
    model = Wav2Vec2Model(log_mel_tiny()).eval()
    waves, lengths, short = padded_pair()
    with torch.no_grad():
        plain = model(waves, lengths)
        warped = model(waves, lengths, warp=torch.tensor([1.1, 1.0]))
        alone = model(short[None], torch.tensor([9_000]), warp=torch.tensor([1.1]))
    assert warped.lengths.tolist() == plain.lengths.tolist()
    n = int(alone.lengths[0])
    torch.testing.assert_close(warped.last[0, :n], alone.last[0], atol=2e-5, rtol=1e-4)  # a padded batch = items
    assert not torch.allclose(warped.last[0, :n], plain.last[0, :n], atol=1e-3)
    torch.testing.assert_close(warped.last[1], plain.last[1])  # factor 1 is no warp
    with pytest.raises(ValueError, match="log-mel"):
        Wav2Vec2Model(build_model_config({"preset": "tiny"}))(waves, lengths, warp=torch.tensor([1.1, 1.0]))


def hubert_overrides(manifest, out_dir, steps, kind="hubert"):
    return [*overrides(manifest, out_dir, steps), "model.front_end=log_mel", f"objective.kind={kind}",
            "objective.num_targets=8", "objective.kmeans_utterances=12", "objective.kmeans_frames=2000"]


def test_a_warped_student_trains_on_the_unwarped_labels(fsdd_manifest, tmp_path):
    plain, warped = tmp_path / "plain", tmp_path / "warped"
    run_pretrain(None, hubert_overrides(fsdd_manifest, plain, 2))
    run_pretrain(None, [*hubert_overrides(fsdd_manifest, warped, 2), "objective.student_warp=[0.85, 1.15]"])
    # The same k-means labels (fit on unwarped features), a different first loss: the input moved.
    assert torch.equal(load_file(plain / "labeler.safetensors")["centers"],
                       load_file(warped / "labeler.safetensors")["centers"])
    assert train_losses(plain)[1] != pytest.approx(train_losses(warped)[1], rel=1e-4)


@pytest.mark.parametrize("kind", ["hubert", "best_rq"])
def test_masked_prediction_pretraining_takes_steps_and_saves_its_labeler(fsdd_manifest, tmp_path, kind):
    summary = run_pretrain(None, hubert_overrides(fsdd_manifest, tmp_path, 4, kind))
    assert summary.step == 4
    losses = train_losses(tmp_path)
    assert sorted(losses) == [1, 2, 3, 4] and all(0 < v < 10 for v in losses.values())
    if kind == "hubert":
        centers = load_file(tmp_path / "labeler.safetensors")["centers"]
        assert centers.shape == (8, 39) and torch.isfinite(centers).all()


def test_masked_prediction_kill_and_resume_follows_the_same_trajectory(fsdd_manifest, tmp_path):
    steps = 8
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_pretrain(None, hubert_overrides(fsdd_manifest, straight, steps))
    interrupted_at = kill_at_first_resume_file(tmp_path, hubert_overrides(fsdd_manifest, killed, steps), killed)
    assert interrupted_at < steps, "finished before the kill"
    run_pretrain(None, hubert_overrides(fsdd_manifest, killed, steps), resume=True)
    expected, resumed = train_losses(straight), train_losses(killed)
    assert sorted(resumed) == list(range(1, steps + 1))
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), f"step {step}"


def test_bf16_training_keeps_the_fp32_labels_and_a_close_trajectory(fsdd_manifest, tmp_path):
    from speechssl.config_files import load_config
    from speechssl.train.batches import valid_loader
    from speechssl.train.masked_prediction import MaskedPredictionTask
    from speechssl.train.pretrain import PretrainConfig

    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    run_pretrain(None, [*hubert_overrides(fsdd_manifest, fp32, 2), "run.precision=fp32"])
    run_pretrain(None, [*hubert_overrides(fsdd_manifest, bf16, 2), "run.precision=bf16"])
    # A step's k-means targets are assigned outside the step's autocast: the same ids as in fp32.
    config = load_config(PretrainConfig, None, hubert_overrides(fsdd_manifest, fp32, 2))
    task = MaskedPredictionTask(config, mixed_manifests(config.data.train, config.data.train_repeats))
    batch = next(iter(valid_loader(mixed_manifests(config.data.train, [1])[:8], config.data)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_autocast = task.labels(batch)
    assert torch.equal(in_autocast, task.labels(batch))
    first, second = train_losses(fp32)[1], train_losses(bf16)[1]
    assert first != second and second == pytest.approx(first, rel=0.02)  # bf16 matmuls ran, and sanely
    with pytest.raises(ConfigError, match="run.precision"):
        run_pretrain(None, [*hubert_overrides(fsdd_manifest, tmp_path / "x", 1), "run.precision=fp16"])


def test_train_repeats_make_augmented_copies(fsdd_manifest):
    rows = mixed_manifests([str(fsdd_manifest)], [3])
    assert len(rows) == 3 * 24 and sum("#copy" in u.id for u in rows) == 48
    with pytest.raises(ConfigError, match="train_repeats"):
        mixed_manifests([str(fsdd_manifest)], [1, 2])


def test_copies_are_perturbed_and_originals_are_not(fsdd_manifest):
    from speechssl.data.dataset import AudioDataset

    rows = mixed_manifests([str(fsdd_manifest)], [2])
    data = AudioDataset(rows, augment=AugmentConfig(speeds=[1.1], noise_prob=1.0))
    original, copy = data[0].wave, data[24].wave
    assert rows[24].id.startswith(rows[0].id)
    assert len(copy) < len(original)  # 1.1x faster
    assert torch.equal(data[0].wave, original) and torch.equal(data[24].wave, copy)  # a pure function of the seed


def test_narrowband_copies_lose_what_is_above_4_khz():
    from speechssl.data.augment import augment

    t = np.arange(16000) / 16000
    wave = (np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 6000 * t)).astype(np.float32)

    def power_at(signal, hz):  # 1 s of audio: bin k is k Hz
        return float(np.abs(np.fft.rfft(signal))[hz] ** 2)

    plain = AugmentConfig(speeds=[1.0], noise_prob=0.0, gain_db=[0.0, 0.0])
    narrow = AugmentConfig(speeds=[1.0], noise_prob=0.0, gain_db=[0.0, 0.0], narrowband_prob=1.0)
    kept, _ = augment(wave, np.random.default_rng(0), plain)
    cut, _ = augment(wave, np.random.default_rng(0), narrow)
    assert len(cut) == len(wave) and cut.dtype == np.float32
    assert power_at(kept, 6000) == pytest.approx(power_at(wave, 6000), rel=1e-3)
    assert power_at(cut, 6000) < 1e-4 * power_at(wave, 6000)
    assert power_at(cut, 1000) == pytest.approx(power_at(wave, 1000), rel=0.05)
    with pytest.raises(ConfigError, match="narrowband_prob"):
        AugmentConfig(narrowband_prob=1.5).validate()


def test_padded_copies_put_silence_around_the_speech():
    from speechssl.data.augment import augment

    wave = np.full(8000, 0.5, dtype=np.float32)
    quiet = dict(speeds=[1.0], noise_prob=0.0, gain_db=[0.0, 0.0])
    kept, _ = augment(wave, np.random.default_rng(0), AugmentConfig(**quiet))
    padded, _ = augment(wave, np.random.default_rng(0), AugmentConfig(**quiet, pad_prob=1.0, pad_seconds=0.25))
    assert np.array_equal(kept, wave)
    voiced = np.flatnonzero(padded)
    before, after = voiced[0], len(padded) - voiced[-1] - 1
    assert voiced[-1] - voiced[0] + 1 == len(wave) and np.all(padded[voiced[0] : voiced[-1] + 1] == 0.5)
    assert 0 < before <= 4000 and 0 < after <= 4000 and before != after  # each side drawn on its own
    # Noise covers the pads at the speech's SNR, not at one lowered by the silence.
    noisy, _ = augment(wave, np.random.default_rng(0), AugmentConfig(speeds=[1.0], noise_prob=1.0, snr_db=[20.0, 20.0],
                                                                     gain_db=[0.0, 0.0], pad_prob=1.0, pad_seconds=0.25))
    assert np.std(noisy[:before]) == pytest.approx(0.5 / 10, rel=0.15)
    with pytest.raises(ConfigError, match="pad_prob"):
        AugmentConfig(pad_prob=-0.1).validate()
    with pytest.raises(ConfigError, match="pad_seconds"):
        AugmentConfig(pad_seconds=-1.0).validate()


def test_bad_objective_config_is_refused(fsdd_manifest, tmp_path):
    with pytest.raises(ConfigError, match="objective.kind"):
        run_pretrain(None, [*overrides(fsdd_manifest, tmp_path, 1), "objective.kind=simclr"])
    with pytest.raises(ConfigError, match="label_from"):
        run_pretrain(None, [*overrides(fsdd_manifest, tmp_path, 1), "objective.label_from=x.safetensors"])
    with pytest.raises(ConfigError, match="student_warp is for the masked-prediction kinds"):
        run_pretrain(None, [*overrides(fsdd_manifest, tmp_path, 1), "objective.student_warp=[0.9, 1.1]"])
    with pytest.raises(ConfigError, match="student_warp needs model.front_end: log_mel"):
        run_pretrain(None, [*overrides(fsdd_manifest, tmp_path, 1), "objective.kind=hubert",
                            "objective.student_warp=[0.9, 1.1]"])
    with pytest.raises(ConfigError, match=r"student_warp must be \[low, high\]"):
        run_pretrain(None, [*hubert_overrides(fsdd_manifest, tmp_path, 1), "objective.student_warp=[1.2, 0.9]"])
