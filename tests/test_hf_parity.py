"""Parity with transformers' Wav2Vec2 on random weights (nothing can be downloaded here).

Every weight is jittered away from its init (layer norms too), so a misplaced name
cannot hide behind ones and zeros. The group-norm (BASE) encoder of transformers mixes
padding into its group norm when batched (a known upstream issue; ours normalises over
valid frames only), so our padded batch is compared with transformers run on each item
alone. The layer-norm (LARGE) variant is compared batch to batch with an attention mask.
Waveform normalisation is transformers' feature extractor on their side, the model's
``normalize_waveform`` on ours.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file
from torch.nn import functional as F

from tests.conftest import FIXTURES
from speechssl.checkpoint import Checkpoint, load_checkpoint, load_into, save_checkpoint
from speechssl.config import ModelConfig, base, large, tiny
from speechssl.interop.hf import (
    HfInteropError,
    export_hf,
    hf_config_from_model_config,
    hf_state_dict,
    import_hf,
    model_config_from_hf,
)
from speechssl.models.masking import sample_negatives
from speechssl.models.wav2vec2 import Wav2Vec2ForPretraining, Wav2Vec2Model

LENGTHS = [16000, 11000, 6400]
TOL = 1e-4
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N"]


def configs() -> dict[str, ModelConfig]:
    return {
        "tiny": tiny(),  # group norm, post-LN, normalised waveform
        # BASE in every width (768 dims, 12 heads, 512-channel convs), two layers deep.
        "base-shaped": dataclasses.replace(base(), num_layers=2),
        # LARGE-style: layer-norm convs with bias, pre-LN "stable" transformer; narrower.
        "large-style": dataclasses.replace(large(), num_layers=3, hidden_size=128, num_heads=4, ffn_dim=256,
                                           conv_dims=[64] * 7, pos_conv_kernel=32, codevector_dim=64,
                                           proj_codevector_dim=32),
    }


@torch.no_grad()
def jitter(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen)).add_(0.02 * torch.randn(p.shape, generator=gen))


def ours_pretraining(cfg: ModelConfig, seed: int = 0) -> Wav2Vec2ForPretraining:
    torch.manual_seed(seed)
    model = Wav2Vec2ForPretraining(cfg).eval()
    jitter(model, seed)
    return model


def hf_twin(model: Wav2Vec2ForPretraining, cfg: ModelConfig):
    hf = transformers.Wav2Vec2ForPreTraining(hf_config_from_model_config(cfg)).eval()
    hf.load_state_dict(hf_state_dict(model.state_dict(), "pretraining"), strict=True)
    return hf


def batch(lengths=LENGTHS, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    waves = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        waves[i, :n] = torch.randn(n, generator=gen) * 0.1 + 0.01
    return waves, torch.tensor(lengths)


def hf_inputs(waves: torch.Tensor, lengths: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' own preprocessing: padded, normalised per item when the config says so."""
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=cfg.normalize_waveform, return_attention_mask=True)
    items = [w[:n].numpy() for w, n in zip(waves, lengths.tolist())]
    out = extractor(items, sampling_rate=16000, padding=True, return_tensors="pt")
    return out.input_values, out.attention_mask


def hf_hidden_states(hf_encoder, waves, lengths, cfg, per_item: bool = False) -> list[list[torch.Tensor]]:
    """Per item: [input to layer 1, layer 1, ..., final output] on valid frames, as ours lists them.

    transformers' pre-LN variant lists the last layer before its closing layer norm and
    returns the normed one as last_hidden_state; ours lists the normed one last.
    """
    def run(values, mask):
        out = hf_encoder(values, attention_mask=mask, output_hidden_states=True)
        return [*out.hidden_states[:-1], out.last_hidden_state]

    frames = hf_encoder._get_feat_extract_output_lengths(lengths)
    if per_item or cfg.conv_norm == "group":  # each item alone, no padding
        states = []
        for i, n in enumerate(lengths.tolist()):
            values, _ = hf_inputs(waves[i : i + 1], lengths[i : i + 1], cfg)
            states.append([h[0] for h in run(values, None)])
        return states
    values, mask = hf_inputs(waves, lengths, cfg)
    hidden = run(values, mask)
    return [[h[i, : frames[i]] for h in hidden] for i in range(len(lengths))]


def assert_layers_match(ours_encoder: Wav2Vec2Model, hf_encoder, cfg: ModelConfig, lengths=LENGTHS,
                        per_item: bool = False) -> None:
    waves, lengths = batch(lengths)
    with torch.no_grad():
        ours = ours_encoder(waves, lengths)
        reference = hf_hidden_states(hf_encoder, waves, lengths, cfg, per_item)
    assert len(ours.hidden_states) == cfg.num_layers + 1
    for i, ref in enumerate(reference):
        n = int(ours.lengths[i])
        assert len(ref) == len(ours.hidden_states)
        for layer, (a, b) in enumerate(zip(ours.hidden_states, ref)):
            assert b.shape == (n, cfg.hidden_size)
            diff = (a[i, :n] - b).abs().max().item()
            assert diff < TOL, f"item {i}, hidden state {layer}: max |diff| {diff:.2e}"


# --------------------------------------------------------------------------- forward parity


@pytest.mark.parametrize("name", ["tiny", "base-shaped", "large-style"])
def test_every_layer_matches_transformers(name):
    cfg = configs()[name]
    ours = ours_pretraining(cfg)
    assert_layers_match(ours.wav2vec2, hf_twin(ours, cfg).wav2vec2, cfg)


def test_config_round_trip():
    for cfg in configs().values():
        assert model_config_from_hf(hf_config_from_model_config(cfg), cfg.normalize_waveform) == cfg


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hidden_act", "relu", "hidden_act='relu'"),
        ("feat_extract_activation", "gelu_new", "feat_extract_activation='gelu_new'"),
        ("add_adapter", True, "add_adapter=True"),
        ("adapter_attn_dim", 16, "adapter_attn_dim is set"),
    ],
)
def test_unsupported_config_is_refused(field, value, message):
    hf_cfg = hf_config_from_model_config(tiny())
    setattr(hf_cfg, field, value)
    with pytest.raises(HfInteropError, match=message):
        model_config_from_hf(hf_cfg)


# --------------------------------------------------------------------------- export


def save_ours(path, model: torch.nn.Module, cfg: ModelConfig, metadata=None) -> None:
    save_checkpoint(path, Checkpoint(model.state_dict(), cfg, metadata or {}))


def test_export_pretraining_loads_in_transformers(tmp_path):
    cfg = configs()["tiny"]
    ours = ours_pretraining(cfg)
    save_ours(tmp_path / "ours.safetensors", ours, cfg)
    export_hf(tmp_path / "ours.safetensors", tmp_path / "hf")

    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["Wav2Vec2ForPreTraining"]
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["do_normalize"] is True
    hf = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf").eval()
    assert_layers_match(ours.wav2vec2, hf.wav2vec2, cfg)
    for name in ("quantizer.codevectors", "quantizer.weight_proj.weight", "project_hid.weight", "project_q.bias"):
        assert torch.equal(hf.state_dict()[name], ours.state_dict()[name])


def test_export_ctc_loads_in_transformers(tmp_path):
    cfg = configs()["large-style"]
    ours = ours_pretraining(cfg).wav2vec2
    head = torch.nn.Linear(cfg.hidden_size, len(VOCAB))
    jitter(head, 5)
    state = {f"wav2vec2.{k}": v for k, v in ours.state_dict().items()}
    state.update({"ctc_head.proj.weight": head.weight.detach(), "ctc_head.proj.bias": head.bias.detach()})
    save_checkpoint(tmp_path / "ctc.safetensors", Checkpoint(state, cfg, {"vocab": VOCAB}))
    export_hf(tmp_path / "ctc.safetensors", tmp_path / "hf")

    assert json.loads((tmp_path / "hf" / "vocab.json").read_text()) == {t: i for i, t in enumerate(VOCAB)}
    hf = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.vocab_size == len(VOCAB) and hf.config.pad_token_id == 0
    assert_layers_match(ours, hf.wav2vec2, cfg)
    waves, lengths = batch()
    values, mask = hf_inputs(waves, lengths, cfg)
    with torch.no_grad():
        out = ours(waves, lengths)
        logits = F.linear(out.last, head.weight, head.bias)
        ref = hf(values, attention_mask=mask).logits
    for i, n in enumerate(out.lengths.tolist()):
        assert (logits[i, :n] - ref[i, :n]).abs().max() < TOL


def test_export_bare_encoder_without_masking(tmp_path):
    """With masking off transformers builds no masked_spec_embed; export drops ours, import refills it."""
    cfg = dataclasses.replace(configs()["tiny"], mask_prob=0.0)
    ours = ours_pretraining(cfg).wav2vec2
    state = {f"wav2vec2.{k}": v for k, v in ours.state_dict().items()}
    save_checkpoint(tmp_path / "enc.safetensors", Checkpoint(state, cfg, {}))
    export_hf(tmp_path / "enc.safetensors", tmp_path / "hf")

    hf = transformers.Wav2Vec2Model.from_pretrained(tmp_path / "hf").eval()
    assert "masked_spec_embed" not in hf.state_dict()
    assert_layers_match(ours, hf, cfg)
    back = import_hf(tmp_path / "hf", tmp_path / "back.safetensors")
    assert back.model_config == cfg
    assert set(back.state_dict) == set(state)


def test_export_refuses_missing_head(tmp_path):
    cfg = configs()["tiny"]
    state = {f"wav2vec2.{k}": v for k, v in ours_pretraining(cfg).wav2vec2.state_dict().items()}
    save_checkpoint(tmp_path / "enc.safetensors", Checkpoint(state, cfg, {}))
    with pytest.raises(HfInteropError, match="needs a checkpoint with a CTC head"):
        export_hf(tmp_path / "enc.safetensors", tmp_path / "hf", layout="ctc")


# --------------------------------------------------------------------------- import


def hf_random(cls, cfg: ModelConfig, seed: int, **extra):
    torch.manual_seed(seed)
    model = cls(hf_config_from_model_config(cfg, **extra)).eval()
    jitter(model, seed)
    return model


def save_hf_folder(path, model, cfg: ModelConfig) -> None:
    model.save_pretrained(path)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=cfg.normalize_waveform).save_pretrained(path)


def load_ours(path) -> tuple[Checkpoint, Wav2Vec2Model]:
    ckpt = load_checkpoint(path)
    encoder = Wav2Vec2Model(ckpt.model_config).eval()
    load_into(encoder, ckpt.state_dict, prefix="wav2vec2.")
    return ckpt, encoder


def test_import_pretraining_then_our_model_matches(tmp_path):
    cfg = configs()["large-style"]
    hf = hf_random(transformers.Wav2Vec2ForPreTraining, cfg, seed=7)
    save_hf_folder(tmp_path / "hf", hf, cfg)
    import_hf(tmp_path / "hf", tmp_path / "ours.safetensors")

    ckpt = load_checkpoint(tmp_path / "ours.safetensors")
    assert ckpt.model_config == cfg
    model = Wav2Vec2ForPretraining(ckpt.model_config).eval()
    load_into(model, ckpt.state_dict)
    assert_layers_match(model.wav2vec2, hf.wav2vec2, cfg)
    assert torch.equal(model.quantizer.codevectors, hf.quantizer.codevectors)


def test_import_ctc_with_vocab(tmp_path):
    cfg = configs()["tiny"]
    hf = hf_random(transformers.Wav2Vec2ForCTC, cfg, seed=8, vocab_size=len(VOCAB), pad_token_id=0)
    save_hf_folder(tmp_path / "hf", hf, cfg)
    (tmp_path / "hf" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    import_hf(tmp_path / "hf", tmp_path / "ours.safetensors")

    ckpt, encoder = load_ours(tmp_path / "ours.safetensors")
    assert ckpt.metadata["vocab"] == VOCAB and ckpt.metadata["blank_id"] == 0
    assert torch.equal(ckpt.state_dict["ctc_head.proj.weight"], hf.lm_head.weight)
    assert_layers_match(encoder, hf.wav2vec2, cfg)


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_import_bare_model_with_legacy_weight_norm_names(tmp_path, weights_file):
    """A bare Wav2Vec2Model (no ``wav2vec2.`` prefix) saved by an older transformers:
    ``weight_g`` / ``weight_v`` instead of ``parametrizations.weight.original0/1``."""
    cfg = configs()["tiny"]
    hf = hf_random(transformers.Wav2Vec2Model, cfg, seed=9)
    folder = tmp_path / "hf"
    save_hf_folder(folder, hf, cfg)
    (folder / "model.safetensors").unlink()
    legacy = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    state = {}
    for key, tensor in hf.state_dict().items():
        for new, old in legacy.items():
            key = key.replace(new, old)
        state[key] = tensor
    assert "encoder.pos_conv_embed.conv.weight_g" in state
    if weights_file.endswith(".bin"):
        torch.save(state, folder / weights_file)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / weights_file))
    import_hf(folder, tmp_path / "ours.safetensors")

    ckpt, encoder = load_ours(tmp_path / "ours.safetensors")
    assert not any(k.startswith(("quantizer.", "ctc_head.")) for k in ckpt.state_dict)
    assert_layers_match(encoder, hf, cfg)


def test_import_refuses_wrong_shapes_and_unknown_weights(tmp_path):
    cfg = configs()["tiny"]
    hf = hf_random(transformers.Wav2Vec2Model, cfg, seed=10)
    save_hf_folder(tmp_path / "hf", hf, cfg)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["intermediate_size"] = 64
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    wrong = r"layers.0.feed_forward.intermediate_dense.weight has shape \(192, 96\), config.json implies \(64, 96\)"
    with pytest.raises(HfInteropError, match=wrong):
        import_hf(tmp_path / "hf", tmp_path / "x.safetensors")
    with pytest.raises(HfInteropError, match="no config.json"):
        import_hf(tmp_path, tmp_path / "x.safetensors")
    classifier = hf_random(transformers.Wav2Vec2ForSequenceClassification, cfg, seed=10, num_labels=3)
    classifier.save_pretrained(tmp_path / "cls")
    with pytest.raises(HfInteropError, match="no place for: classifier.bias, classifier.weight, projector.bias"):
        import_hf(tmp_path / "cls", tmp_path / "x.safetensors")


def test_export_then_import_is_identity(tmp_path):
    cfg = configs()["large-style"]
    ours = ours_pretraining(cfg)
    save_ours(tmp_path / "a.safetensors", ours, cfg, {"kind": "pretrain"})
    export_hf(tmp_path / "a.safetensors", tmp_path / "hf")
    back = import_hf(tmp_path / "hf", tmp_path / "b.safetensors")
    assert back.model_config == cfg
    original = ours.state_dict()
    assert set(back.state_dict) == set(original)
    for key, tensor in original.items():
        assert torch.equal(back.state_dict[key], tensor), key


# --------------------------------------------------------------------------- pretraining loss


def loss_inputs(model: Wav2Vec2ForPretraining, lengths: torch.Tensor, num_negatives: int):
    gen = torch.Generator().manual_seed(3)
    frames = model.wav2vec2.frame_lengths(lengths)
    mask = model.wav2vec2.time_mask(frames, gen)
    negatives = sample_negatives(mask, num_negatives, gen)  # (B, T, K) frame indices per utterance
    t = mask.shape[1]
    flat = negatives + (torch.arange(len(lengths)) * t)[:, None, None]  # transformers: indices into (B*T)
    return mask, negatives, flat


@pytest.mark.parametrize(("name", "lengths"), [("tiny", [12000, 12000]), ("large-style", [16000, 9000, 12800])])
@pytest.mark.parametrize("mode", ["eval", "train"])
@torch.no_grad()
def test_pretraining_loss_terms_match_transformers(name, lengths, mode):
    """Same weights, mask and distractors give the same loss terms as ``Wav2Vec2ForPreTraining``.

    transformers returns sums over masked frames: contrastive_sum and diversity * M, with
    loss = contrastive_sum + w * diversity * M. Ours are per masked frame (and add the
    feature penalty, weighted 0 here), so ours * M must equal theirs.
    eval: the quantizer takes the argmax; perplexity of the hard codes.
    train: Gumbel noise from torch's global RNG through ``F.gumbel_softmax`` on both sides
    (no generator given to ours); with every dropout at 0 that is the only draw in either
    forward pass, so reseeding before each gives both the same codes. Ours computes the
    perplexity as fairseq does, with log(p + 1e-7) where transformers uses xlogy, hence
    the looser tolerance on the soft perplexity.
    The group-norm model gets equal lengths (its padded batch differs in transformers).
    """
    no_dropout = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feature_dropout=0.0, layer_drop=0.0)
    cfg = dataclasses.replace(configs()[name], **no_dropout)
    ours = ours_pretraining(cfg, seed=4)
    hf = hf_twin(ours, cfg)
    ours.train(mode == "train")
    hf.train(mode == "train")
    waves, lengths = batch(lengths, seed=5)
    mask, negatives, flat = loss_inputs(ours, lengths, num_negatives=20)
    values, attention = hf_inputs(waves, lengths, cfg)

    torch.manual_seed(11)
    out = ours(waves, lengths, time_mask=mask, negatives=negatives, num_negatives=20, feature_penalty_weight=0.0)
    torch.manual_seed(11)
    ref = hf(values, attention_mask=attention, mask_time_indices=mask, sampled_negative_indices=flat)

    m = int(mask.sum())
    assert out.num_masked == m > 0
    ppl_tol = 1e-5 if mode == "eval" else 1e-4
    assert out.perplexity.item() == pytest.approx(ref.codevector_perplexity.item(), rel=ppl_tol)
    assert out.contrastive.item() * m == pytest.approx(ref.contrastive_loss.item(), rel=1e-4)
    assert out.diversity.item() * m == pytest.approx(ref.diversity_loss.item(), rel=1e-4)
    assert out.loss.item() * m == pytest.approx(ref.loss.item(), rel=1e-4)


# --------------------------------------------------------------------------- text parity

SPEECHSSL_STYLE = ["<blank>", "|", "'", "e", "t", "a", "o", "n"]


def transformers_text(tokenizer, logits: torch.Tensor) -> str:
    """transformers' greedy CTC text, special tokens skipped, in the project's lower case.

    The ASR pipeline decodes CTC with ``skip_special_tokens=False`` (with True, transformers
    drops the blanks before merging repeats); the special tokens it then leaves in the text
    are taken out here, as words of the text never hold them."""
    text = tokenizer.decode(logits.argmax(-1).tolist())
    for token in tokenizer.all_special_tokens:
        if token != tokenizer.pad_token:
            text = text.replace(token, "")
    return " ".join(text.lower().split())


@pytest.mark.parametrize("vocab, pad", [(VOCAB, "<pad>"), (SPEECHSSL_STYLE, "<blank>")])
def test_imported_ctc_transcribes_what_transformers_decodes(tmp_path, vocab, pad):
    import speechssl

    cfg = configs()["tiny"]
    hf = hf_random(transformers.Wav2Vec2ForCTC, cfg, seed=11, vocab_size=len(vocab), pad_token_id=vocab.index(pad))
    with torch.no_grad():
        hf.lm_head.weight.mul_(20)  # random weights: make each frame's choice decisive and varied
    save_hf_folder(tmp_path / "hf", hf, cfg)
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), pad_token=pad,
                                                  unk_token="<unk>" if "<unk>" in vocab else pad)
    tokenizer.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ours.safetensors")
    model = speechssl.load(tmp_path / "ours.safetensors", device="cpu")

    waves, lengths = batch([48000, 40000, 32000, 24000], seed=3)
    emitted = set()
    for i, n in enumerate(lengths.tolist()):
        values, _ = hf_inputs(waves[i : i + 1], lengths[i : i + 1], cfg)
        with torch.no_grad():
            logits = hf(values).logits[0]
        emitted |= {vocab[j] for j in logits.argmax(-1).tolist()}
        transcript = model.transcribe(waves[i, :n].numpy(), sample_rate=16000, timestamps=True)
        assert transcript.text == transformers_text(tokenizer, logits)
        assert [w.text for w in transcript.words] == transcript.text.split()
    assert len(emitted) >= len(vocab) - 1, f"the random head emitted only {sorted(emitted)}"


def tiny_char_ctc(path: Path) -> Path:
    """A conv-front-end CTC checkpoint in speechssl's own vocabulary, its random head made
    decisive, so greedy decoding spells varied text."""
    from speechssl.models.heads import CHAR_VOCAB

    cfg = configs()["tiny"]
    ours = ours_pretraining(cfg, seed=4).wav2vec2
    head = torch.nn.Linear(cfg.hidden_size, len(CHAR_VOCAB))
    jitter(head, 6)
    with torch.no_grad():
        head.weight.mul_(20)
    state = {f"wav2vec2.{k}": v for k, v in ours.state_dict().items()}
    state.update({"ctc_head.proj.weight": head.weight.detach(), "ctc_head.proj.bias": head.bias.detach()})
    save_checkpoint(path, Checkpoint(state, cfg, {"vocab": CHAR_VOCAB, "blank_id": 0}))
    return path


@pytest.mark.parametrize("which", ["shipped", "tiny"])
def test_exported_ctc_decodes_the_same_in_the_asr_pipeline(tmp_path, which):
    """export-hf, then transformers' ASR pipeline gives speechssl's (greedy) text. The shipped
    model exports when it has the waveform front end; a log-mel one has no transformers class,
    and export-hf says so."""
    import soundfile as sf

    import speechssl

    path = Path(speechssl.__file__).parent / "assets" / "default.safetensors"
    if which == "tiny":
        path = tiny_char_ctc(tmp_path / "tiny.safetensors")
    elif load_checkpoint(path).model_config.front_end != "conv":
        with pytest.raises(HfInteropError, match="front end has no transformers counterpart"):
            export_hf(path, tmp_path / "hf", layout="ctc")
        return
    export_hf(path, tmp_path / "hf", layout="ctc")
    processor = transformers.Wav2Vec2Processor.from_pretrained(tmp_path / "hf")
    assert processor.tokenizer.pad_token == "<blank>" and processor.tokenizer.word_delimiter_token == "|"
    asr = transformers.pipeline("automatic-speech-recognition", model=str(tmp_path / "hf"), device="cpu")
    model = speechssl.load(path, device="cpu")
    wave, rate = sf.read(FIXTURES / "speech.wav", dtype="float32")
    assert rate == 16000
    for clip in (wave, wave[: len(wave) // 2], wave[len(wave) // 3:]):
        ours = model.transcribe(clip, sample_rate=16000, timestamps=False, decoding="greedy").text
        assert ours and asr({"raw": clip, "sampling_rate": 16000})["text"] == ours


def test_a_cache_entry_and_serve_checkpoint_on_a_transformers_folder(tmp_path):
    """import-hf reads a transformers cache entry as it sits on disk (refs/main -> snapshot of
    symlinks to blobs); `serve --checkpoint <that folder>` imports it in memory, says so in
    /v1/models, and transcribes what transformers decodes."""
    import httpx

    from server.settings import Settings
    from tests.test_server import LiveServer, wav_bytes

    cfg = configs()["tiny"]
    hf = hf_random(transformers.Wav2Vec2ForCTC, cfg, seed=11, vocab_size=len(VOCAB), pad_token_id=0)
    with torch.no_grad():
        hf.lm_head.weight.mul_(20)
    save_hf_folder(tmp_path / "plain", hf, cfg)
    tokenizer_vocab = tmp_path / "vocab.json"
    tokenizer_vocab.write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(tokenizer_vocab), pad_token="<pad>", unk_token="<unk>")
    tokenizer.save_pretrained(tmp_path / "plain")
    entry = tmp_path / "hub" / "models--org--tiny-ctc"
    snapshot, blobs = entry / "snapshots" / "abc123", entry / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted((tmp_path / "plain").iterdir())):
        (blobs / f"blob{i}").write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / f"blob{i}")
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("abc123")
    assert import_hf(entry, tmp_path / "ours.safetensors").source == str(snapshot)

    waves, lengths = batch([32000], seed=3)
    values, _ = hf_inputs(waves, lengths, cfg)
    with torch.no_grad():
        expected = transformers_text(tokenizer, hf(values).logits[0])
    with LiveServer(Settings(checkpoint=str(entry), device="cpu", max_wait_ms=10, precision="fp32")) as live:
        card = httpx.get(live.url + "/v1/models").json()["data"][0]
        assert card["source"] == "transformers" and card["family"] == "wav2vec2" and card["heads"] == ["embeddings", "ctc"]
        audio = wav_bytes(waves[0].numpy(), 16000)
        answer = httpx.post(live.url + "/v1/audio/transcriptions", files={"file": ("a.wav", audio, "audio/wav")}, timeout=60)
    assert answer.status_code == 200 and answer.json()["text"] == expected
    with pytest.raises(HfInteropError, match="no config.json"):
        import_hf(tmp_path / "hub", tmp_path / "x.safetensors")


# --------------------------------------------------------------------------- other families


def family_random(config_class, cls, cfg: ModelConfig, seed: int, **extra):
    """A transformers model of another family (bare or CTC) with ``cfg``'s architecture, jittered
    weights; the shared config fields its config class has (HuBERT's has no codevector ones)."""
    from speechssl.interop.hf_config import CONFIG_FIELDS

    fields = {hf: getattr(cfg, ours) for ours, hf in CONFIG_FIELDS if hasattr(config_class, hf)}
    torch.manual_seed(seed)
    model = cls(config_class(**fields, feat_extract_activation="gelu", hidden_act="gelu", **extra)).eval()
    jitter(model, seed)
    return model


def hubert_random(cls, cfg: ModelConfig, seed: int, **extra):
    return family_random(transformers.HubertConfig, cls, cfg, seed, **extra)


@pytest.mark.parametrize("name", ["tiny", "large-style"])  # group norm + post-LN; layer norm + stable pre-LN
def test_hubert_imports_and_every_layer_matches(tmp_path, name):
    cfg = configs()[name]
    hf = hubert_random(transformers.HubertModel, cfg, seed=5)
    save_hf_folder(tmp_path / "hf", hf, cfg)
    ckpt = import_hf(tmp_path / "hf", tmp_path / "ours.safetensors")
    assert ckpt.metadata["source"]["family"] == "hubert"
    _, encoder = load_ours(tmp_path / "ours.safetensors")
    assert_layers_match(encoder, hf, cfg)


def assert_ctc_text_matches(tmp_path, hf, cfg, family: str) -> None:
    """An imported CTC folder transcribes what transformers decodes greedily (its head made
    decisive), in Python and through `serve --checkpoint <the folder>`, which names the family."""
    import httpx

    import speechssl
    from server.settings import Settings
    from tests.test_server import LiveServer, wav_bytes

    with torch.no_grad():
        hf.lm_head.weight.mul_(20)
    save_hf_folder(tmp_path / "hf", hf, cfg)
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), pad_token="<pad>", unk_token="<unk>")
    tokenizer.save_pretrained(tmp_path / "hf")
    model = speechssl.load(import_hf(tmp_path / "hf", tmp_path / "ours.safetensors"), device="cpu")
    waves, lengths = batch([40000, 24000], seed=4)
    for i, n in enumerate(lengths.tolist()):
        values, _ = hf_inputs(waves[i : i + 1], lengths[i : i + 1], cfg)
        with torch.no_grad():
            logits = hf(values).logits[0]
        assert model.transcribe(waves[i, :n].numpy(), sample_rate=16000).text == transformers_text(tokenizer, logits)
    with LiveServer(Settings(checkpoint=str(tmp_path / "hf"), device="cpu", max_wait_ms=10, precision="fp32")) as live:
        card = httpx.get(live.url + "/v1/models").json()["data"][0]
        answer = httpx.post(live.url + "/v1/audio/transcriptions", timeout=60,
                            files={"file": ("a.wav", wav_bytes(waves[0].numpy(), 16000), "audio/wav")})
    assert card["family"] == family and card["source"] == "transformers" and card["heads"] == ["embeddings", "ctc"]
    assert answer.status_code == 200 and answer.json()["text"] == model.transcribe(waves[0].numpy(), 16000).text


def test_hubert_ctc_transcribes_what_transformers_decodes(tmp_path):
    cfg = configs()["tiny"]
    hf = hubert_random(transformers.HubertForCTC, cfg, seed=13, vocab_size=len(VOCAB), pad_token_id=0)
    assert_ctc_text_matches(tmp_path, hf, cfg, "hubert")


def test_other_families_are_refused_by_name(tmp_path):
    transformers.SEWConfig().save_pretrained(tmp_path / "sew")  # the config is read, and refused, first
    with pytest.raises(HfInteropError, match="model_type='sew' \\(speechssl has the layout of wav2vec2, hubert, "
                                             "data2vec-audio, wavlm\\)"):
        import_hf(tmp_path / "sew", tmp_path / "x.safetensors")


def data2vec_random(cls, cfg: ModelConfig, seed: int, stack: int = 3, **extra):
    torch.manual_seed(seed)
    config = transformers.Data2VecAudioConfig(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.ffn_dim, conv_dim=cfg.conv_dims, conv_kernel=cfg.conv_kernels, conv_stride=cfg.conv_strides,
        conv_bias=cfg.conv_bias, num_conv_pos_embedding_groups=cfg.pos_conv_groups, conv_pos_kernel_size=cfg.pos_conv_kernel,
        num_conv_pos_embeddings=stack, feat_extract_activation="gelu", hidden_act="gelu", **extra)
    model = cls(config).eval()
    jitter(model, seed)
    return model


@pytest.mark.parametrize("kernel", [19, 16])  # Data2Vec's odd default, and an even one (a frame trimmed)
def test_data2vec_audio_imports_and_every_layer_matches(tmp_path, kernel):
    cfg = dataclasses.replace(configs()["tiny"], conv_norm="layer", conv_bias=True, pos_conv_kernel=kernel)
    hf = data2vec_random(transformers.Data2VecAudioModel, cfg, seed=9)
    save_hf_folder(tmp_path / "hf", hf, cfg)
    ckpt = import_hf(tmp_path / "hf", tmp_path / "ours.safetensors")
    assert ckpt.metadata["source"]["family"] == "data2vec-audio" and ckpt.model_config.pos_conv_stack == 3
    _, encoder = load_ours(tmp_path / "ours.safetensors")
    # transformers zeroes the padding once, before its first positional conv, so its padded batch
    # mixes padding into the frames near each item's end; ours zeroes it between the convs too.
    # So each of our batch's items is compared with transformers run on that item alone.
    assert_layers_match(encoder, hf, cfg, per_item=True)
    with pytest.raises(HfInteropError, match="stacked positional convs"):
        export_hf(tmp_path / "ours.safetensors", tmp_path / "back")


def test_data2vec_audio_ctc_transcribes_what_transformers_decodes(tmp_path):
    cfg = dataclasses.replace(configs()["tiny"], conv_norm="layer", conv_bias=True, pos_conv_kernel=19)
    hf = data2vec_random(transformers.Data2VecAudioForCTC, cfg, seed=15, vocab_size=len(VOCAB), pad_token_id=0)
    assert_ctc_text_matches(tmp_path, hf, cfg, "data2vec-audio")


@pytest.mark.parametrize(("buckets", "max_distance"), [(320, 800), (16, 20), (33, 50)])
def test_relative_position_buckets_match_transformers(buckets, max_distance):
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    from speechssl.models.transformer import relative_position_buckets

    theirs = WavLMAttention(8, 2, num_buckets=buckets, max_distance=max_distance)
    offsets = torch.arange(1200)[None, :] - torch.arange(1200)[:, None]
    assert torch.equal(relative_position_buckets(1200, buckets, max_distance), theirs._relative_positions_bucket(offsets))


def wavlm_random(cls, cfg: ModelConfig, seed: int, **extra):
    """A transformers WavLM model with ``cfg``'s architecture and bias buckets, its bias table made
    large (its init is N(0, 0.02)), so a wrong bucket or gate cannot hide under the tolerance."""
    model = family_random(transformers.WavLMConfig, cls, cfg, seed, num_buckets=cfg.rel_pos_buckets,
                          max_bucket_distance=cfg.rel_pos_max_distance, **extra)
    with torch.no_grad():
        (model.wavlm if hasattr(model, "wavlm") else model).encoder.layers[0].attention.rel_attn_embed.weight.mul_(50)
    return model


def wavlm_config(name: str) -> ModelConfig:
    """A ``configs()`` entry with WavLM's bias; few buckets, so the clips' 19-49 frames reach the
    logarithmic buckets and the clamped far ones, not only the exact near ones."""
    return dataclasses.replace(configs()[name], rel_pos_bias=True, rel_pos_buckets=16, rel_pos_max_distance=20)


@pytest.mark.parametrize("name", ["tiny", "large-style"])  # group norm + post-LN ("base"); layer norm + pre-LN ("large")
def test_wavlm_imports_and_every_layer_matches(tmp_path, name):
    cfg = wavlm_config(name)
    hf = wavlm_random(transformers.WavLMModel, cfg, seed=6)
    save_hf_folder(tmp_path / "hf", hf, cfg)
    ckpt = import_hf(tmp_path / "hf", tmp_path / "ours.safetensors")
    assert ckpt.metadata["source"]["family"] == "wavlm" and ckpt.model_config == cfg
    _, encoder = load_ours(tmp_path / "ours.safetensors")
    # our padded batch, item by item, against transformers on each item alone
    assert_layers_match(encoder, hf, cfg, per_item=True)
    with pytest.raises(HfInteropError, match="gated relative position bias \\(rel_pos_bias\\) is WavLM's"):
        export_hf(tmp_path / "ours.safetensors", tmp_path / "back")


def test_wavlm_ctc_transcribes_what_transformers_decodes_and_serves_as_wavlm(tmp_path):
    cfg = wavlm_config("tiny")
    hf = wavlm_random(transformers.WavLMForCTC, cfg, seed=17, vocab_size=len(VOCAB), pad_token_id=0)
    assert_ctc_text_matches(tmp_path, hf, cfg, "wavlm")
