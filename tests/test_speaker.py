"""Speaker head, AAM loss, verification metrics, the speaker API/CLI and train-speaker (tiny model)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.nn import functional as F

import speechssl
from speechssl.api import HeadMissingError
from speechssl.audio import AudioDecodeError, AudioInvalidError, AudioTooShortError
from speechssl.checkpoint import COHORT_KEY, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from speechssl.cli import main
from speechssl.config import ConfigError
from speechssl.metrics import ScoreNorm, eer, min_dcf
from speechssl.models.heads import AamSoftmax, AttentiveStatsPooling, SpeakerHead, log_mel_frames, pitch_frames
from speechssl.verification import TrialError, Verification, make_trials, read_trials
from tests.conftest import require_fsdd

THRESHOLD = 0.5


@pytest.fixture(scope="module")
def head_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny random encoder plus a random speaker head and a stored threshold."""
    ckpt = load_checkpoint(tiny_checkpoint)
    torch.manual_seed(3)
    head = SpeakerHead(ckpt.model_config.hidden_size, ckpt.model_config.num_layers, dim=32, channels=16)
    state = {**ckpt.state_dict, **{f"speaker_head.{k}": v for k, v in head.state_dict().items()}}
    metadata = {**ckpt.metadata, "speaker_head": head.config(), "speaker_threshold": THRESHOLD}
    path = tmp_path_factory.mktemp("speaker") / "head.safetensors"
    save_checkpoint(path, Checkpoint(state, ckpt.model_config, metadata))
    return path


@pytest.fixture(scope="module")
def model(head_checkpoint):
    return speechssl.load(head_checkpoint, device="cpu")


def waves(*seconds: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(int(s * 16000)) * 0.1).astype(np.float32) for s in seconds]


# --- head and loss -------------------------------------------------------------------


@pytest.mark.parametrize("context, mel_bins, pitch", [([], 0, False), ([1, 2], 0, False), ([1, 2], 5, False),
                                                     ([1, 2], 5, True)],
                         ids=["pooling-only", "time-convolutions", "with-spectra", "with-pitch"])
def test_pooling_ignores_padding_batch_equals_items(context, mel_bins, pitch):
    torch.manual_seed(0)
    head = SpeakerHead(hidden_size=12, num_layers=2, dim=8, channels=10, attention_dim=6, context=context,
                       mel_bins=mel_bins, pitch=pitch).eval()
    lengths = torch.tensor([7, 3, 5])
    states = torch.randn(3, 7, 3, 12)
    states[1, 3:] = 1e3  # padding content must not matter
    states[2, 5:] = float("nan")
    mel = torch.randn(3, 7, head.spectra_width) if mel_bins else None
    if mel is not None:
        mel[1, 3:] = 1e3
    batch = head(states, lengths, mel=mel)
    for row, n in enumerate(lengths.tolist()):
        alone = head(states[row : row + 1, :n], lengths[row : row + 1],
                     mel=None if mel is None else mel[row : row + 1, :n])
        torch.testing.assert_close(batch[row], alone[0], atol=1e-5, rtol=1e-5)
    assert batch.shape == (3, 8) and torch.isfinite(batch).all()


def test_log_mel_frames_line_up_with_the_encoder_and_ignore_padding(tiny_checkpoint):
    from speechssl.checkpoint import load_into
    from speechssl.models.wav2vec2 import Wav2Vec2Model

    ckpt = load_checkpoint(tiny_checkpoint)
    encoder = Wav2Vec2Model(ckpt.model_config).eval()
    load_into(encoder, ckpt.state_dict, prefix="wav2vec2.")
    clips = [torch.from_numpy(w) for w in waves(1.0, 0.37, 0.51)]
    lengths = torch.tensor([len(c) for c in clips])
    padded = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    with torch.no_grad():
        out = encoder(padded, lengths)
    frames = out.hidden_states[0].shape[1]
    batch = log_mel_frames(padded, frames, 40)
    assert batch.shape == (3, frames, 40)
    for row, clip in enumerate(clips):
        n = int(out.lengths[row])
        alone = log_mel_frames(clip[None], n, 40)
        assert alone.shape == (1, n, 40)  # one spectrum per encoder frame
        torch.testing.assert_close(batch[row, :n], alone[0], atol=1e-4, rtol=1e-4)
    louder = log_mel_frames(clips[0][None] * 8, frames, 40)  # gain drops out
    torch.testing.assert_close(louder[0, :100], batch[0, :100], atol=1e-3, rtol=1e-3)


def test_log_mel_frames_work_under_autograd_after_inference_mode():
    # The filterbank is cached: made first under inference_mode (as serving does), it must
    # still serve a computation that autograd tracks.
    with torch.inference_mode():
        log_mel_frames(torch.randn(1, 16000), 49, 24)
    wave = torch.randn(1, 16000, requires_grad=True)
    log_mel_frames(wave, 49, 24).sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all()


def harmonic_tone(f0: float, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(16000 * seconds)) / 16000
    return sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 6)) * 0.1


def test_pitch_frames_find_a_voice_f0_and_no_voicing_in_noise():
    tones = torch.stack([harmonic_tone(f0) for f0 in (90.0, 150.0, 220.0, 330.0)])
    track = pitch_frames(tones, 49)
    assert track.shape == (4, 49, 2)
    inner = track[:, 3:-3]  # away from the edges, where the window runs off the clip
    f0 = 150.0 * 2 ** (inner[..., 0] / inner[..., 1])  # log2(F0 / 150) comes scaled by voicing
    for row, expected in enumerate((90.0, 150.0, 220.0, 330.0)):
        assert f0[row].median().item() == pytest.approx(expected, rel=0.02)
        assert inner[row, :, 1].min() > 0.9
    noise = pitch_frames(torch.randn(1, 16000, generator=torch.Generator().manual_seed(0)) * 0.1, 49)
    assert noise[0, :, 1].mean() < 0.4  # noise has no period
    # frames past a clip's end are padding: each item's own frames equal it alone
    padded = torch.zeros(2, 16000)
    padded[0], padded[1, :8000] = tones[0], tones[1, :8000]
    both = pitch_frames(padded, 49)
    torch.testing.assert_close(both[1, :20], pitch_frames(tones[1:2, :8000], 20)[0], atol=1e-4, rtol=1e-4)


def test_a_mel_head_needs_its_spectra():
    torch.manual_seed(0)
    head = SpeakerHead(hidden_size=12, num_layers=2, dim=8, channels=10, attention_dim=6, mel_bins=5).eval()
    states, lengths = torch.randn(2, 7, 3, 12), torch.tensor([7, 4])
    mel = torch.randn(2, 7, 5)
    vectors = head(states, lengths, mel=mel)
    other = mel.clone()
    other[0] += torch.randn(7, 5)  # the spectra change the vector
    assert not torch.allclose(head(states, lengths, mel=other)[0], vectors[0])
    torch.testing.assert_close(head(states, lengths, mel=other)[1], vectors[1])
    with pytest.raises(ValueError, match="reads 5 log-mel bins per frame"):
        head(states, lengths)
    with pytest.raises(ValueError, match="needs channels > 0"):
        SpeakerHead(hidden_size=12, num_layers=2, channels=0, mel_bins=5)
    pitched = SpeakerHead(hidden_size=12, num_layers=2, dim=8, channels=10, attention_dim=6, mel_bins=5, pitch=True)
    with pytest.raises(ValueError, match=r"reads 5 log-mel bins per frame and its pitch and voicing \(7 numbers\)"):
        pitched(states, lengths, mel=mel)
    with pytest.raises(ValueError, match="with pitch needs mel_bins > 0"):
        SpeakerHead(hidden_size=12, num_layers=2, channels=10, pitch=True)


def test_attentive_stats_of_one_frame_and_of_constant_frames():
    pooling = AttentiveStatsPooling(4, 3)
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [9.0, 9.0, 9.0, 9.0]]])
    stats = pooling(x, torch.tensor([[True, False]]))
    torch.testing.assert_close(stats[0, :4], x[0, 0])  # the one valid frame is the mean
    assert torch.all(stats[0, 4:] < 0.01)  # and its spread is ~0
    with pytest.raises(ValueError, match="at least one valid frame"):
        pooling(x, torch.tensor([[False, False]]))


def test_layer_weights_are_a_softmax_over_the_layers():
    head = SpeakerHead(hidden_size=8, num_layers=3)
    assert head.layer_weights.shape == (4,)
    torch.testing.assert_close(head.layer_weights.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="weights 4 hidden states, got 3"):
        head(torch.randn(1, 5, 3, 8), torch.tensor([5]))


def test_aam_without_margin_is_scaled_cosine_cross_entropy():
    torch.manual_seed(0)
    aam = AamSoftmax(dim=6, num_classes=4, margin=0.0, scale=30.0)
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    cosine = F.normalize(x) @ F.normalize(aam.weight).T
    torch.testing.assert_close(aam(x, y), F.cross_entropy(30.0 * cosine, y), atol=1e-5, rtol=1e-5)


def test_aam_margin_penalises_the_true_class():
    torch.manual_seed(0)
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    plain, margin = AamSoftmax(6, 4, margin=0.0), AamSoftmax(6, 4, margin=0.2)
    margin.weight.data.copy_(plain.weight.data)
    assert margin(x, y) > plain(x, y)
    # An embedding on its class centre: cos(theta)=1, target logit s*cos(m); gradients stay finite.
    on_centre = margin.weight.detach()[:2].clone().requires_grad_()
    loss = margin(on_centre, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(on_centre.grad).all()
    cosine = (F.normalize(on_centre) @ F.normalize(margin.weight).T).detach()
    logits = cosine * 30
    logits[0, 0], logits[1, 1] = 30 * math.cos(0.2), 30 * math.cos(0.2)
    torch.testing.assert_close(loss.detach(), F.cross_entropy(logits, torch.tensor([0, 1])), atol=1e-4, rtol=1e-4)


def test_aam_learns_separable_classes():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(3, 8)) * 3
    x = centres.repeat(20, 1) + 0.3 * torch.randn(60, 8)
    y = torch.arange(3).repeat(20)
    aam = AamSoftmax(8, 3, margin=0.2, scale=30.0)
    opt = torch.optim.Adam(aam.parameters(), lr=0.05)
    first = float(aam(x, y).detach())
    for _ in range(50):
        opt.zero_grad()
        loss = aam(x, y)
        loss.backward()
        opt.step()
    assert float(loss) < first / 5
    assert (aam.cosine(x).argmax(-1) == y).all()


# --- metrics ---------------------------------------------------------------------------


def test_eer_and_min_dcf_hand_computed():
    # targets 0.9 0.8 0.7 0.3, non-targets 0.6 0.4 0.2 0.1: at threshold 0.6 one target of four is
    # missed (0.3) and one non-target of four accepted (0.6), so EER = 0.25 there exactly.
    scores = [0.9, 0.8, 0.7, 0.3, 0.6, 0.4, 0.2, 0.1]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    rate, threshold = eer(scores, labels)
    assert rate == pytest.approx(0.25) and threshold == pytest.approx(0.6)
    # p_target 0.5: min over t of P_miss + P_fa (normalised by 0.5) = 0.25 at t=0.7.
    assert min_dcf(scores, labels, p_target=0.5) == pytest.approx(0.25)
    # p_target 0.01: (0.01 P_miss + 0.99 P_fa) / 0.01; no false alarm at t=0.7 costs 0.25.
    assert min_dcf(scores, labels) == pytest.approx(0.25)
    assert min_dcf(scores, labels, p_target=0.5, c_fa=10) == pytest.approx(0.25)


def test_eer_interpolates_between_operating_points():
    # targets 0.9 0.8 0.4, non-targets 0.5 0.3: from t=0.5 (miss 1/3, fa 1/2) to t=0.8 (1/3, 0)
    # the rates cross at 1/3, a third of the way: threshold 0.6.
    rate, threshold = eer([0.9, 0.8, 0.4, 0.5, 0.3], [1, 1, 1, 0, 0])
    assert rate == pytest.approx(1 / 3) and threshold == pytest.approx(0.6)


def test_eer_extremes():
    assert eer([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0])[0] == 0.0
    assert min_dcf([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 0.0
    assert eer([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0])[0] == pytest.approx(1.0)
    assert eer([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0])[0] == pytest.approx(0.5)


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="both target"):
        eer([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="differ in length"):
        eer([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="labels must be 0"):
        min_dcf([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        eer([0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="p_target"):
        min_dcf([0.1, 0.2], [1, 0], p_target=1.0)


def test_trials_all_same_pairs_and_as_many_different():
    speakers = ["a", "a", "a", "b", "b", "c"]
    trials = make_trials(speakers, seed=1)
    same, different = trials[trials[:, 2] == 1], trials[trials[:, 2] == 0]
    assert {tuple(t) for t in same[:, :2]} == {(0, 1), (0, 2), (1, 2), (3, 4)}
    assert len(different) == 4 and len({tuple(t) for t in different[:, :2]}) == 4
    assert all(speakers[a] != speakers[b] for a, b in different[:, :2])
    np.testing.assert_array_equal(trials, make_trials(speakers, seed=1))
    with pytest.raises(TrialError, match="at least two speakers"):
        make_trials(["a", "a"])
    with pytest.raises(TrialError, match="two or more utterances"):
        make_trials(["a", "b"])


def test_trial_file(tmp_path):
    from speechssl.data.manifest import Utterance

    utts = [Utterance(f"u{i}", f"/x/u{i}.wav", 1.0, speaker=s) for i, s in enumerate("aab")]
    path = tmp_path / "trials.txt"
    path.write_text("1 u0 u1\nnontarget u0 /x/u2.wav\n")
    np.testing.assert_array_equal(read_trials(path, utts), [[0, 1, 1], [0, 2, 0]])
    path.write_text("1 u0 u1\nmaybe u0 u2\n")
    with pytest.raises(TrialError, match=r"trials.txt:2: expected 'LABEL A B'"):
        read_trials(path, utts)
    path.write_text("1 u0 nobody\n")
    with pytest.raises(TrialError, match="'nobody' is not an id or path"):
        read_trials(path, utts)


# --- API -------------------------------------------------------------------------------


def test_speaker_vector_unit_length_and_batch_equals_items(model):
    items = waves(1.0, 0.4, 2.3)
    batch = model.speaker_vector(items, sample_rate=16000)
    assert [v.shape for v in batch] == [(32,)] * 3 and batch[0].dtype == np.float32
    for vector, wave in zip(batch, items):
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(vector, model.speaker_vector(wave, sample_rate=16000), atol=1e-5)


def test_long_audio_is_pooled_over_chunks(head_checkpoint):
    model = speechssl.load(head_checkpoint, device="cpu")
    wave = waves(3.0)[0]
    whole = model.speaker_vector(wave, sample_rate=16000)
    model.chunk_seconds = 1.0  # three 1 s pieces, averaged by frames
    pieces = model.speaker_vector(np.array_split(wave, 3), sample_rate=16000)
    chunked = model.speaker_vector(wave, sample_rate=16000)
    expected = np.mean(pieces, axis=0)
    np.testing.assert_allclose(chunked, expected / np.linalg.norm(expected), atol=1e-5)
    assert np.dot(chunked, whole) > 0.5


def test_verify_uses_the_stored_threshold(model):
    clip = sorted(require_fsdd().glob("*.wav"))[0]
    other = sorted(require_fsdd().glob("*.wav"))[60]
    same = model.verify(str(clip), str(clip))
    assert isinstance(same, Verification) and same.threshold == THRESHOLD
    assert same.score == pytest.approx(1.0, abs=1e-5) and same.same_speaker
    result = model.verify(str(clip), other.read_bytes())
    assert result.same_speaker == (result.score >= THRESHOLD) and -1 <= result.score <= 1


def test_speaker_api_bad_inputs(model, tiny_checkpoint):
    with pytest.raises(AudioTooShortError):
        model.speaker_vector(np.zeros(100, np.float32), sample_rate=16000)
    with pytest.raises(AudioDecodeError):
        model.speaker_vector(b"")
    with pytest.raises(AudioInvalidError):
        model.verify(np.full(16000, np.nan, np.float32), waves(1.0)[0], sample_rate=16000)
    with pytest.raises(ValueError, match="sample_rate is required"):
        model.speaker_vector(waves(1.0)[0])
    plain = speechssl.load(tiny_checkpoint, device="cpu")
    assert plain.heads == ["embeddings"] and plain.speaker_threshold is None
    with pytest.raises(HeadMissingError, match="has no speaker head; it holds: embeddings"):
        plain.speaker_vector(waves(1.0)[0], sample_rate=16000)
    with pytest.raises(HeadMissingError, match="has no speaker head"):
        plain.verify("a.wav", "b.wav")


def test_checkpoint_problems_are_named(head_checkpoint, tmp_path):
    ckpt = load_checkpoint(head_checkpoint)
    no_settings = tmp_path / "no-settings.safetensors"
    save_checkpoint(no_settings, Checkpoint(ckpt.state_dict, ckpt.model_config, {"speaker_threshold": 0.3}))
    with pytest.raises(CheckpointError, match=r"speaker head without its settings"):
        speechssl.load(no_settings)
    no_threshold = tmp_path / "no-threshold.safetensors"
    metadata = {k: v for k, v in ckpt.metadata.items() if k != "speaker_threshold"}
    save_checkpoint(no_threshold, Checkpoint(ckpt.state_dict, ckpt.model_config, metadata))
    model = speechssl.load(no_threshold, device="cpu")
    assert model.heads == ["embeddings", "speaker"]
    with pytest.raises(HeadMissingError, match="no speaker_threshold"):
        model.verify(waves(1.0)[0], waves(1.0)[0], sample_rate=16000)
    given = model.verify(waves(1.0)[0], waves(1.0)[0], sample_rate=16000, threshold=0.5)
    assert given.threshold == 0.5 and given.same_speaker == (given.score >= 0.5)
    assert model.speaker_threshold is None and "speaker_threshold" not in model.metadata  # asked, not stored


def unit_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_as_norm_by_its_definition():
    cohort, vectors = unit_rows(12, 8, 0), unit_rows(4, 8, 1)
    trials = np.array([[0, 1, 1], [2, 3, 0], [0, 3, 0]])
    norm = ScoreNorm(cohort, top_k=5)

    def side(v):  # the 5 highest cosines with the cohort
        top = sorted(cohort @ v)[-5:]
        return np.mean(top), np.std(top)

    for (a, b, _), got in zip(trials, norm.trial_scores(vectors, trials)):
        raw = float(vectors[a] @ vectors[b])
        (ma, sa), (mb, sb) = side(vectors[a]), side(vectors[b])
        assert got == pytest.approx(0.5 * ((raw - ma) / sa + (raw - mb) / sb), rel=1e-4)
    assert norm.score(vectors[0], vectors[1]) == pytest.approx(norm.trial_scores(vectors, trials)[0], rel=1e-5)
    # A top_k beyond the cohort uses all of it.
    assert ScoreNorm(cohort, 100).trial_scores(vectors, trials) == pytest.approx(
        ScoreNorm(cohort, 12).trial_scores(vectors, trials))


def cohort_checkpoint(head_checkpoint: Path, path: Path, cohort: torch.Tensor | None, norm: object) -> Path:
    ckpt = load_checkpoint(head_checkpoint)
    state = {**ckpt.state_dict, **({} if cohort is None else {COHORT_KEY: cohort})}
    metadata = {**ckpt.metadata, **({} if norm is None else {"speaker_norm": norm})}
    save_checkpoint(path, Checkpoint(state, ckpt.model_config, metadata))
    return path


def test_a_checkpoint_with_a_cohort_verifies_by_as_norm(head_checkpoint, tmp_path):
    cohort = unit_rows(10, 32, 2)
    path = cohort_checkpoint(head_checkpoint, tmp_path / "cohort.safetensors", torch.from_numpy(cohort),
                             {"top_k": 3, "threshold": 1.25})
    model = speechssl.load(path, device="cpu")
    a, b = waves(1.0, 1.5)
    result = model.verify(a, b, sample_rate=16000)
    first, second = model.speaker_vector([a, b], sample_rate=16000)
    expected = ScoreNorm(cohort, 3).score(first, second)
    assert result.scoring == "as-norm" and result.threshold == 1.25
    assert result.score == pytest.approx(expected, rel=1e-4) and result.same_speaker == (expected >= 1.25)
    assert model.verify(a, b, sample_rate=16000, threshold=-100.0).same_speaker
    # Diarization still clusters on cosines: the cosine threshold stays what it was.
    assert model.speaker_threshold == THRESHOLD and model.verify_threshold == 1.25
    assert speechssl.load(head_checkpoint, device="cpu").verify(a, b, sample_rate=16000).scoring == "cosine"


@pytest.mark.parametrize("cohort, norm, message", [
    ("unit", None, "only part of them"),
    (None, {"top_k": 3, "threshold": 1.0}, "only part of them"),
    ("wide", {"top_k": 3, "threshold": 1.0}, r"must be \(N, 32\) speaker vectors, got shape \(10, 31\)"),
    ("unit", {"top_k": 0, "threshold": 1.0}, "speaker_norm must be"),
    ("unit", {"top_k": 3, "threshold": "high"}, "speaker_norm must be"),
    ("unit", {"top_k": True, "threshold": 1.0}, "speaker_norm must be"),
], ids=["cohort-without-settings", "settings-without-cohort", "wrong-width", "no-top-k", "text-threshold", "bool-top-k"])
def test_cohort_problems_are_named(head_checkpoint, tmp_path, cohort, norm, message):
    tensor = {"unit": torch.from_numpy(unit_rows(10, 32, 2)), "wide": torch.zeros(10, 31), None: None}[cohort]
    path = cohort_checkpoint(head_checkpoint, tmp_path / "bad.safetensors", tensor, norm)
    with pytest.raises(CheckpointError, match=message):
        speechssl.load(path, device="cpu")


# --- CLI and training -------------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_manifests(tmp_path_factory) -> tuple[Path, Path]:
    """Spoken digits of the four FSDD speakers: digits 0-7 to train, 8-9 to validate (same voices:
    a plumbing test, not a held-out figure)."""
    root = require_fsdd()
    out = tmp_path_factory.mktemp("digits")
    rows: dict[str, list[dict]] = {"train": [], "valid": []}
    for path in sorted(root.glob("*.wav")):
        digit, speaker, take = path.stem.split("_")
        if int(take) < 3:
            split = "valid" if int(digit) >= 8 else "train"
            rows[split].append({"id": path.stem, "path": str(path), "duration": sf.info(path).duration,
                                "speaker": speaker})
    for split, items in rows.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return out / "train.jsonl", out / "valid.jsonl"


def test_cli_vector_verify_and_evaluate(head_checkpoint, digit_manifests, capsys):
    clips = sorted(require_fsdd().glob("*.wav"))[:2]
    assert main(["speaker-vector", "--checkpoint", str(head_checkpoint), *map(str, clips)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["dim"] for line in lines] == [32, 32] and len(lines[0]["embedding"]) == 32
    assert main(["verify", "--checkpoint", str(head_checkpoint), str(clips[0]), str(clips[0])]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["threshold"] == THRESHOLD and verdict["same_speaker"] is True
    assert main(["verify", "--checkpoint", str(head_checkpoint), "--threshold", "1.5", str(clips[0]), str(clips[0])]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["threshold"] == 1.5 and verdict["same_speaker"] is False
    assert main(["evaluate", "speaker", "--checkpoint", str(head_checkpoint), "--manifest",
                 str(digit_manifests[1]), "--per-speaker", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["utterances"] == 16 and report["speakers"] == 4
    assert report["target_trials"] == 4 * 6 == report["nontarget_trials"] and report["trials"] == 48
    assert report["threshold"] == THRESHOLD
    # The same figure from the API's vectors on the same seeded trials (evaluate only batches and counts).
    from speechssl.data.manifest import read_manifest
    from speechssl.data.selection import per_speaker_subset, with_speakers
    from speechssl.verification import cosine_scores

    utterances = per_speaker_subset(with_speakers(read_manifest(digit_manifests[1]), None), 4, 0)
    trials = make_trials([u.speaker for u in utterances], 0)
    vectors = np.stack(speechssl.load(head_checkpoint, device="cpu").speaker_vector([u.path for u in utterances]))
    expected, at = eer(cosine_scores(vectors, trials), trials[:, 2])
    assert report["eer"] == pytest.approx(expected, abs=1e-4) and report["eer_threshold"] == pytest.approx(at, abs=1e-4)
    assert set(report["baselines"]) == {"mean_pooled", "mean_pooled_eer_by_layer", "mfcc_mean"}
    assert report["baselines"]["mean_pooled"]["layer"] == 2


def test_cli_errors_are_one_line(tiny_checkpoint, head_checkpoint, tmp_path, capsys):
    clip = str(sorted(require_fsdd().glob("*.wav"))[0])
    assert main(["verify", "--checkpoint", str(tiny_checkpoint), clip, clip]) == 2
    assert "has no speaker head" in capsys.readouterr().err
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"id": "a", "path": clip, "duration": 0.5, "speaker": "x"}) + "\n")
    assert main(["evaluate", "speaker", "--checkpoint", str(head_checkpoint), "--manifest", str(one)]) == 2
    assert "at least two speakers" in capsys.readouterr().err
    assert main(["train-speaker", str(tmp_path / "missing.yaml")]) == 2


def test_config_errors_name_the_key(tmp_path):
    from speechssl.config import load_config
    from speechssl.train.speaker import SpeakerConfig

    with pytest.raises(ConfigError, match="crop_seconds"):
        load_config(SpeakerConfig, None, ["data.train=[x.jsonl]", "crop_seconds=[4,2]"])
    with pytest.raises(ConfigError, match="unknown config key head.dims"):
        load_config(SpeakerConfig, None, ["data.train=[x.jsonl]", "head.dims=3"])
    with pytest.raises(ConfigError, match="speaker_id_pattern needs a group"):
        load_config(SpeakerConfig, None, ["data.train=[x.jsonl]", "speaker_id_pattern=abc"])
    with pytest.raises(ConfigError, match="dilations must be >= 1"):
        load_config(SpeakerConfig, None, ["data.train=[x.jsonl]", "head.context=[1,0]"])
    with pytest.raises(ConfigError, match="mel_bins must be >= 0, and needs head.channels > 0"):
        load_config(SpeakerConfig, None, ["data.train=[x.jsonl]", "head.mel_bins=80", "head.channels=0"])
    with pytest.raises(ConfigError, match="head.pitch is read beside the log-mel spectrum"):
        load_config(SpeakerConfig, None, ["data.train=[x.jsonl]", "head.pitch=true"])


def train_args(checkpoint: Path, manifests: tuple[Path, Path], out: Path, steps: int) -> list[str]:
    return [f"init_from={checkpoint}", f"data.train=[{manifests[0]}]", f"data.valid=[{manifests[1]}]",
            "data.min_seconds=0.1", f"run.out_dir={out}", f"optim.max_steps={steps}", "optim.warmup_steps=2",
            "optim.final_lr_scale=1.0",  # a flat rate after warm-up: a 4-step run is the first half of an 8-step one
            "run.valid_every=4", "run.checkpoint_every=4", "run.progress=false", "batch_size=16", "per_speaker=12",
            "head.dim=16", "head.channels=8", "head.margin_warmup_steps=4", "crop_seconds=[0.3,0.6]"]


def test_train_speaker_stores_threshold_and_resumes(tiny_checkpoint, digit_manifests, tmp_path, capsys):
    config = tmp_path / "speaker.yaml"
    config.write_text("augment:\n  speeds: [0.9, 1.0]\n")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train-speaker", str(config), *train_args(tiny_checkpoint, digit_manifests, whole, 8)]) == 0
    out = capsys.readouterr().out  # "step N: valid ..." lines, then the summary
    summary = json.loads(out[out.index("{\n"):])
    assert summary["step"] == 8
    # The threshold of the best validation EER travels with best.safetensors and back through load().
    best = load_checkpoint(whole / "best.safetensors")
    assert best.metadata["speaker_threshold"] == pytest.approx(summary["best"]["threshold"])
    assert best.metadata["speaker_head"]["dim"] == 16
    assert not any(k.startswith("aam.") for k in best.state_dict)
    model = speechssl.load(whole / "best.safetensors", device="cpu")
    assert model.heads == ["embeddings", "speaker"]
    assert model.speaker_threshold == pytest.approx(summary["best"]["threshold"])
    assert model.verify(waves(1.0)[0], waves(1.2)[0], sample_rate=16000).threshold == model.speaker_threshold
    valid_rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line)["split"] == "valid"]
    assert [r["step"] for r in valid_rows] == [4, 8] and (whole / "curves.png").is_file()
    # Stopped at 4 then resumed to 8 (reusing the cached features): the same head as straight through.
    assert main(["train-speaker", str(config), *train_args(tiny_checkpoint, digit_manifests, parts, 4)]) == 0
    assert main(["train-speaker", str(config), *train_args(tiny_checkpoint, digit_manifests, parts, 8), "--resume"]) == 0
    capsys.readouterr()
    a, b = load_checkpoint(whole / "checkpoint.safetensors"), load_checkpoint(parts / "checkpoint.safetensors")
    for key in (k for k in a.state_dict if k.startswith("speaker_head.")):
        torch.testing.assert_close(a.state_dict[key], b.state_dict[key])
    assert len(list(parts.glob("bank-*.pt"))) == 1


def test_speaker_errors_script_counts_what_the_eer_counts(head_checkpoint, digit_manifests):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "experiments" / "speaker_errors.py"), "--checkpoint",
                           str(head_checkpoint), "--manifest", str(digit_manifests[1]), "--per-speaker", "4"],
                          capture_output=True, text=True, check=True, cwd=root)
    report = json.loads(done.stdout)
    evaluated = speechssl.load(head_checkpoint, device="cpu")
    from speechssl.data.manifest import read_manifest
    from speechssl.data.selection import per_speaker_subset
    from speechssl.verification import evaluate_speaker

    utts = per_speaker_subset(read_manifest(digit_manifests[1]), 4, seed=0)
    figures = evaluate_speaker(evaluated, utts, baselines=False)
    assert report["eer"] == pytest.approx(figures["eer"], abs=1e-4)
    assert report["trials"] == figures["trials"]
    misses = sum(n for _, n in report["misses_by_speaker"])
    assert 0 < misses + report["false_alarms"] < report["trials"]  # a random head errs, but not on every trial
    assert report["sibling_trials"] == 0  # FSDD names have no -pNN pitch part: no two settings of one voice


@pytest.mark.parametrize("pitch", [False, True], ids=["spectra", "spectra-and-pitch"])
def test_train_speaker_with_spectra_and_time_convolutions(tiny_checkpoint, digit_manifests, tmp_path, capsys, pitch):
    out = tmp_path / "mel"
    args = [*train_args(tiny_checkpoint, digit_manifests, out, 4), "head.mel_bins=20", "head.context=[1,2]",
            f"head.pitch={str(pitch).lower()}"]
    config = tmp_path / "speaker.yaml"
    config.write_text("augment:\n  speeds: [1.0]\n")
    assert main(["train-speaker", str(config), *args]) == 0
    capsys.readouterr()
    bank = torch.load(next(out.glob("bank-*.pt")), weights_only=True)
    width = 22 if pitch else 20  # with pitch: F0 and voicing after the 20 bins
    assert bank["mel"].shape == (bank["frames"].shape[0], width)  # a spectrum beside every cached frame
    model = speechssl.load(out / "best.safetensors", device="cpu")
    assert model.speaker_head.mel_bins == 20 and model.speaker_head.context == [1, 2]
    assert model.speaker_head.pitch is pitch and model.speaker_head.spectra_width == width
    a, b = model.speaker_vector(waves(1.0, 0.8), sample_rate=16000)
    assert a.shape == (16,) and np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert model.verify(waves(1.0)[0], waves(1.0)[0], sample_rate=16000).score == pytest.approx(1.0, abs=1e-5)


def test_live_top_layers_reproduce_the_encoder(tiny_checkpoint):
    """Fine-tuning the top layers from the bank: recomputing them from the state below gives
    the encoder's own states (eval mode, a padded batch)."""
    from speechssl.checkpoint import load_into
    from speechssl.models.wav2vec2 import Wav2Vec2Model
    from speechssl.train.speaker import HeadConfig, SpeakerModel

    ckpt = load_checkpoint(tiny_checkpoint)
    encoder = Wav2Vec2Model(ckpt.model_config)
    load_into(encoder, ckpt.state_dict, prefix="wav2vec2.")
    model = SpeakerModel(encoder, HeadConfig(dim=8, channels=0), num_classes=3).eval()
    audio = torch.from_numpy(np.stack([np.pad(w, (0, 16000 - len(w))) for w in waves(1.0, 0.6)]))
    with torch.no_grad():
        out = encoder(audio, torch.tensor([16000, 9600]))
        states = torch.stack(out.hidden_states, dim=2)
        model.live_layers = 2
        again = model.run_live_layers(states.clone(), out.lengths)
    for row, n in enumerate(out.lengths.tolist()):
        torch.testing.assert_close(again[row, :n], states[row, :n], atol=1e-4, rtol=1e-4)


def test_a_validation_cut_without_trials_fails_before_training(tiny_checkpoint, digit_manifests, tmp_path, capsys):
    """Validation keeps utterances speaker by speaker: cut to one per speaker, it has no same-speaker
    trial, and train-speaker says so before any step instead of after the first stretch of training."""
    out, config = tmp_path / "run", tmp_path / "speaker.yaml"
    config.write_text("augment:\n  speeds: [1.0]\n")
    args = train_args(tiny_checkpoint, digit_manifests, out, 8)
    speakers = {json.loads(line)["speaker"] for line in digit_manifests[1].read_text().splitlines()}
    assert main(["train-speaker", str(config), *args, f"data.max_valid_utterances={len(speakers)}"]) == 2
    assert "cannot make speaker trials" in capsys.readouterr().err
    assert not (out / "metrics.jsonl").exists()


def test_long_utterances_give_one_bank_item_per_part(tiny_checkpoint, digit_manifests):
    from speechssl.config import load_config
    from speechssl.data.manifest import Utterance, read_manifest
    from speechssl.models import build
    from speechssl.train.feature_bank import bank_items, build_bank, bank_key
    from speechssl.train.speaker import SpeakerConfig

    config = load_config(SpeakerConfig, None, [f"init_from={tiny_checkpoint}", f"data.train=[{digit_manifests[0]}]",
                                               "max_utterance_seconds=0.15", "windows_per_utterance=3",
                                               "augment.speeds=[1.0]", "augment.noise_prob=0.0", "run.progress=false"])
    long, short = Utterance("a", "a.wav", 1.0, speaker="x"), Utterance("b", "b.wav", 0.2, speaker="y")
    assert bank_items([long, short], config) == [(0, 0, 3), (0, 1, 3), (0, 2, 3), (1, 0, 1)]
    utts = read_manifest(digit_manifests[0])[:4]
    encoder = build.encoder(load_checkpoint(tiny_checkpoint))
    bank = build_bank(encoder, utts, config, 2, torch.device("cpu"), progress=False)
    slots = bank_items(utts, config)
    assert len(bank) == len(slots) > len(utts)
    assert bank.speakers == [utts[u].speaker for u, _, _ in slots]
    k = next(k for k in range(len(slots) - 1) if slots[k][0] == slots[k + 1][0])  # two parts of one recording
    first, second = (bank.frames[bank.offsets[j] : bank.offsets[j + 1]] for j in (k, k + 1))
    assert not torch.equal(first, second)  # two windows
    one = load_config(SpeakerConfig, None, [f"init_from={tiny_checkpoint}", f"data.train=[{digit_manifests[0]}]",
                                            "max_utterance_seconds=0.15"])
    assert bank_key(one, utts, 2) != bank_key(config, utts, 2)
    with pytest.raises(ConfigError, match="windows_per_utterance must be >= 1"):
        load_config(SpeakerConfig, None, ["data.train=[x.jsonl]", "windows_per_utterance=0"])


def test_train_repeats_give_each_utterance_more_bank_items(digit_manifests):
    from speechssl.config import load_config
    from speechssl.data.manifest import read_manifest
    from speechssl.train.speaker import SpeakerConfig, load_speaker_data

    rows = read_manifest(digit_manifests[0])
    base = [f"data.train=[{digit_manifests[0]}]", f"data.valid=[{digit_manifests[1]}]", "per_speaker=null"]
    once, _ = load_speaker_data(load_config(SpeakerConfig, None, base))
    thrice, _ = load_speaker_data(load_config(SpeakerConfig, None, [*base, "data.train_repeats=[3]"]))
    assert len(once) == len(rows) and len(thrice) == 3 * len(rows) == len({u.id for u in thrice})
    assert sorted(u.path for u in thrice) == sorted(u.path for u in rows for _ in range(3))
    # Fine-tuning and pretraining read a copy through data.augment, so they still ask for it.
    from speechssl.train.ctc import CtcConfig
    from speechssl.train.pretrain import PretrainConfig

    for cls in (CtcConfig, PretrainConfig):
        with pytest.raises(ConfigError, match="set data.augment too"):
            load_config(cls, None, [f"data.train=[{digit_manifests[0]}]", "data.train_repeats=[2]"])
