"""Speech-to-text: decoding, LM, timestamps, chunking, fine-tuning and evaluation."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from speechssl.decode.align import word_timestamps
from speechssl.decode.chunks import windows
from speechssl.decode.ctc import BeamDecoder, BeamSettings, DecodeError, encode_text, greedy_decode
from speechssl.decode.ngram import build_arpa, english_words, write_arpa
from speechssl.models.heads import CHAR_VOCAB as V

BLANK, SEP = 0, V.index("|")


def emission(path: list, peak: float = 0.0, floor: float = -12.0) -> torch.Tensor:
    """(frames, vocab) log-probs; each frame puts its mass on one label (a char, "|" or blank)."""
    ids = [BLANK if p is None else SEP if p == " " else V.index(p) for p in path]
    e = torch.full((len(ids), len(V)), floor)
    e[range(len(ids)), ids] = peak
    return e.log_softmax(-1)


# "hello world": the double l needs a blank between, repeats merge, blanks vanish.
HELLO = [None, "h", "h", "e", None, "l", None, "l", "o", "o", " ", None, "w", "o", "r", "r", "l", "d", None]


def test_greedy_merges_repeats_drops_blanks_keeps_double_letters():
    assert greedy_decode(emission(HELLO), V) == "hello world"


def test_greedy_apostrophes_and_boundaries():
    path = [" ", "d", "o", "n", "'", "t", None, " ", " ", "g", "o", " "]
    assert greedy_decode(emission(path), V) == "don't go"
    assert greedy_decode(emission([None] * 5), V) == ""


def test_beam_agrees_with_greedy_on_peaked_emissions():
    decoder = BeamDecoder(V, BeamSettings(beam_size=8))
    assert decoder(emission(HELLO)) == "hello world"


def test_beam_with_lm_resolves_an_ambiguous_vowel(tmp_path):
    # "the c?t sat": the acoustics cannot tell a from o; an LM that knows "the cat" can.
    lm = tmp_path / "lm.arpa"
    write_arpa(["the cat sat on the mat", "the cat sat", "a cat sat there"] * 5, lm, order=3)
    path = ["t", "h", "e", " ", "c", "a", "t", " ", "s", "a", "t"]
    e = emission(path)
    e[5] = torch.full((len(V),), -12.0)
    e[5, V.index("a")] = e[5, V.index("o")] = 0.0
    e = e.log_softmax(-1)
    e[5, V.index("o")] += 1e-3  # the acoustics lean, barely, the wrong way
    assert BeamDecoder(V, BeamSettings(beam_size=16))(e) == "the cot sat"
    assert BeamDecoder(V, BeamSettings(beam_size=16, lm=str(lm), lm_weight=1.0))(e) == "the cat sat"


def test_lexicon_beam_guesses_a_half_heard_word_but_keeps_silence_empty(tmp_path):
    # "ix" with a faint "s": the cheapest lexicon path is the empty sentence, yet the greedy path
    # emits letters, so the best hypothesis that has words ("six") is the transcript.
    lm = tmp_path / "lm.arpa"
    write_arpa(["six", "seven", "eight", "one two"] * 3, lm, order=2)

    def frame(scores: dict) -> torch.Tensor:
        e = torch.full((len(V),), -12.0)
        for label, score in scores.items():
            e[BLANK if label is None else V.index(label)] = score
        return e.log_softmax(-1)

    half = torch.stack([frame({None: 0}), frame({"s": -7, None: 0}), frame({"i": 0, None: -2}),
                        frame({"x": 0, None: -2}), frame({None: 0})])
    one_hypothesis = BeamDecoder(V, BeamSettings(beam_size=16, lm=str(lm), lm_weight=1.0, nbest=1))
    decoder = BeamDecoder(V, BeamSettings(beam_size=16, lm=str(lm), lm_weight=1.0))
    assert one_hypothesis(half) == ""  # what the beam's best alone says
    assert decoder(half) == "six"
    assert decoder(torch.stack([frame({None: 0})] * 6)) == ""


def read_arpa(arpa: str) -> tuple[dict, dict]:
    """(probabilities, backoff weights) by n-gram tuple, as plain numbers."""
    probs, backoff, section = {}, {}, None
    for line in arpa.splitlines():
        if line.endswith("-grams:"):
            section = int(line[1])
        elif section and line.strip() and not line.startswith("\\"):
            parts = line.split("\t")
            probs[tuple(parts[1].split())] = 10 ** float(parts[0])
            if len(parts) > 2:
                backoff[tuple(parts[1].split())] = 10 ** float(parts[2])
    return probs, backoff


@pytest.mark.parametrize("background", [None, {"b": 5.0, "zebra": 2.0, "yak": 1.0}])
def test_arpa_probabilities_sum_to_one(background):
    arpa = build_arpa(["a b c", "a b d", "b c a", "c c"], order=2, background=background,
                      background_weight=0.3 if background else 0.0)
    probs, backoff = read_arpa(arpa)
    vocab = [g[0] for g in probs if len(g) == 1 and g[0] != "<s>"]
    assert math.isclose(sum(probs[(w,)] for w in vocab), 1.0, abs_tol=1e-5)
    for history in ("a", "b", "<s>"):
        total = sum(probs.get((history, w), backoff[(history,)] * probs[(w,)]) for w in vocab)
        assert math.isclose(total, 1.0, abs_tol=1e-5)
    if background:  # the background's words get its weight in their frequencies' proportions
        assert probs[("zebra",)] == pytest.approx(2 * probs[("yak",)], rel=1e-4)
        assert probs[("yak",)] == pytest.approx(0.3 / 8, rel=1e-4)
    with pytest.raises(ValueError):
        build_arpa(["", "  "], order=2)
    with pytest.raises(ValueError, match="background"):
        build_arpa(["a b"], order=2, background_weight=0.5)


def test_a_background_word_list_lets_the_lexicon_beam_spell_new_words(tmp_path):
    path = ["t", "h", "e", " ", "y", "a", "k", " ", "s", "a", "t"]
    closed, open_ = tmp_path / "closed.arpa", tmp_path / "open.arpa"
    write_arpa(["the cat sat", "the dog sat"] * 3, closed, order=2)
    write_arpa(["the cat sat", "the dog sat"] * 3, open_, order=2, background={"yak": 1.0, "zebra": 1.0},
               background_weight=0.3)
    settings = dict(beam_size=16, lm_weight=1.0)
    assert "yak" not in BeamDecoder(V, BeamSettings(lm=str(closed), **settings))(emission(path))
    assert BeamDecoder(V, BeamSettings(lm=str(open_), **settings))(emission(path)) == "the yak sat"


def test_english_words_are_frequent_first_and_spellable():
    words = english_words(300)
    assert len(words) == 300 and list(words)[0] == "the"
    assert all(set(w) <= set(V) - {"|"} for w in words)
    assert words["the"] > words[list(words)[-1]] > 0


def test_decoder_bad_settings(tmp_path):
    with pytest.raises(DecodeError, match="lm file not found"):
        BeamDecoder(V, BeamSettings(lm=str(tmp_path / "missing.arpa")))
    with pytest.raises(DecodeError):
        BeamDecoder(["a", "b"])
    with pytest.raises(DecodeError, match="not in the vocabulary"):
        encode_text("naïve", V)


def test_word_timestamps_monotone_inside_audio():
    e = emission(HELLO)
    words = word_timestamps(e, "hello world", V, frame_seconds=0.02)
    assert [w.text for w in words] == ["hello", "world"]
    duration = len(HELLO) * 0.02
    assert 0 <= words[0].start < words[0].end <= words[1].start < words[1].end <= duration
    # "h" is first emitted in frame 1, "d" last in frame 17.
    assert words[0].start == pytest.approx(0.02) and words[1].end == pytest.approx(0.36)
    with pytest.raises(ValueError, match="needs"):
        word_timestamps(emission(["a", "b"]), "a much longer transcript", V, frame_seconds=0.02)
    assert word_timestamps(e, "", V, frame_seconds=0.02) == []


@pytest.mark.parametrize("seed", range(5))
def test_streamed_greedy_text_joins_into_the_whole_decode(seed):
    from speechssl.decode.ctc import GreedyTextStream

    gen = torch.Generator().manual_seed(seed)
    # Long runs of one label, so that seams fall inside repeats and inside words.
    labels = torch.randint(0, len(V), (60,), generator=gen)
    labels[torch.rand(60, generator=gen) < 0.25] = SEP  # words of about four letters
    labels = labels.repeat_interleave(torch.randint(1, 6, (60,), generator=gen))
    e = torch.full((len(labels), len(V)), -10.0)
    e[range(len(labels)), labels] = 0.0
    cuts = [len(labels) * k // 5 + int(torch.randint(0, 5, (), generator=gen)) for k in range(1, 5)]
    stream = GreedyTextStream(V)
    deltas = [stream.feed(e[a:b]) for a, b in zip([0, *cuts], [*cuts, len(labels)])] + [stream.finish()]
    assert "".join(deltas) == greedy_decode(e, V)
    assert sum(bool(d) for d in deltas) >= 2


def test_word_probability_is_lower_where_the_emissions_are_unsure():
    sure = emission(HELLO)
    unsure = sure.clone()
    unsure[12:18] = emission(HELLO[12:18], floor=-1.0)[:]  # "world": each frame's label barely ahead
    for e in (sure, unsure):
        assert all(0 < w.probability <= 1 for w in word_timestamps(e, "hello world", V, frame_seconds=0.02))
    hello, world = word_timestamps(unsure, "hello world", V, frame_seconds=0.02)
    assert hello.probability > 0.99 and world.probability < 0.2
    assert hello.probability == pytest.approx(word_timestamps(sure, "hello world", V, frame_seconds=0.02)[0].probability)


@pytest.mark.parametrize("seconds", [0.03, 1.0, 29.99, 30.0, 30.02, 61.3, 95.0, 600.0])
def test_chunk_windows_tile_every_frame_once(seconds):
    FRAME_SAMPLES = 320
    n = int(seconds * 16000)
    total = (n - 400) // FRAME_SAMPLES + 1
    chunk, context = 30 * 16000, 3 * 16000
    covered = []
    for w in windows(n, total, chunk, context, FRAME_SAMPLES):
        assert 0 <= w.start < w.end <= n and w.end - w.start <= chunk
        window_frames = (w.end - w.start - 400) // FRAME_SAMPLES + 1
        assert w.keep_from + w.keep <= window_frames  # the window really produces what is kept
        first = w.start // FRAME_SAMPLES + w.keep_from
        covered.extend(range(first, first + w.keep))
    assert covered == list(range(total))


@pytest.fixture(scope="module")
def ctc_checkpoint(tmp_path_factory):
    """One real fine-tuning run: 4 steps of the tiny preset on the synthetic fixture speech."""
    from speechssl.train.ctc import run_finetune_ctc
    from tests.conftest import FIXTURES

    root = tmp_path_factory.mktemp("ctc")
    rows = [{"id": f"u{i}", "path": str(FIXTURES / "speech.wav"), "duration": 1.0, "text": "hello world"}
            for i in range(4)]
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_finetune_ctc(None, [
        "model.preset=tiny", "data.crop_seconds=null", f"data.train=[{manifest}]", f"data.valid=[{manifest}]", "data.max_batch_seconds=2",
        "optim.max_steps=4", "optim.warmup_steps=1", "freeze_transformer_steps=2", f"run.out_dir={root / 'run'}",
        "run.valid_every=2", "run.checkpoint_every=2", "run.progress=false",
    ])
    assert summary.step == 4
    return root / "run" / "best.safetensors", manifest


def test_finetune_writes_a_loadable_ctc_checkpoint(ctc_checkpoint):
    import speechssl
    from speechssl.checkpoint import load_checkpoint

    path, _ = ctc_checkpoint
    ckpt = load_checkpoint(path)
    assert ckpt.metadata["vocab"] == V and ckpt.metadata["kind"] == "ctc"
    model = speechssl.load(path, device="cpu")
    assert model.heads == ["embeddings", "ctc"]
    curves = path.parent / "curves.png"
    assert curves.stat().st_size > 1000
    valid = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
    assert {"wer", "cer"} <= set(next(r for r in valid if r["split"] == "valid"))


def test_transcribe_returns_words_inside_the_audio(ctc_checkpoint):
    import speechssl
    from tests.conftest import FIXTURES

    model = speechssl.load(ctc_checkpoint[0], device="cpu")
    wave = np.tile(speechssl.api.load_audio(FIXTURES / "speech.wav"), 5)  # 5 s
    one = model.transcribe(wave, sample_rate=16000)
    assert one.duration == pytest.approx(5.0)
    for a, b in zip(one.words, one.words[1:]):
        assert a.start <= a.end <= b.start
    assert all(0 <= w.start <= w.end <= one.duration for w in one.words)
    model.chunk_seconds, model.chunk_context = 2.0, 0.5  # the same clip, now in windows
    chunked = model.transcribe(wave, sample_rate=16000)
    assert model.emissions([wave])[0].shape[0] == int(model.encoder.frame_lengths(torch.tensor([len(wave)])))
    assert isinstance(chunked.text, str)
    batch = model.transcribe([wave[:16000], wave], sample_rate=16000)
    assert len(batch) == 2 and batch[0].duration == pytest.approx(1.0)


def test_evaluate_asr_cli_prints_json(ctc_checkpoint):
    path, manifest = ctc_checkpoint
    out = subprocess.run([sys.executable, "-m", "speechssl.cli", "evaluate", "asr", "--checkpoint", str(path),
                          "--manifest", str(manifest)], capture_output=True, text=True, check=True)
    scores = json.loads(out.stdout)
    assert scores["utterances"] == 4 and scores["audio_seconds"] == pytest.approx(4.0)
    assert scores["cer"] >= 0 and scores["wer"] >= 0 and scores["real_time_factor"] > 0  # insertions can pass 1


def test_transcribe_errors(ctc_checkpoint, tiny_checkpoint, tmp_path):
    import speechssl
    from speechssl.api import HeadMissingError
    from speechssl.audio import AudioError

    with pytest.raises(HeadMissingError, match="no CTC"):
        speechssl.load(tiny_checkpoint, device="cpu").transcribe(np.zeros(16000, dtype=np.float32), 16000)
    model = speechssl.load(ctc_checkpoint[0], device="cpu")
    with pytest.raises(AudioError):
        model.transcribe(b"not audio at all")
    with pytest.raises(AudioError):
        model.transcribe(np.zeros(10, dtype=np.float32), 16000)
    bad = subprocess.run([sys.executable, "-m", "speechssl.cli", "transcribe", "--checkpoint", str(tiny_checkpoint),
                          str(tmp_path / "x.wav")], capture_output=True, text=True)
    assert bad.returncode == 2 and "error" in bad.stderr
    missing_lm = subprocess.run([sys.executable, "-m", "speechssl.cli", "evaluate", "asr", "--checkpoint",
                                 str(ctc_checkpoint[0]), "--manifest", str(ctc_checkpoint[1]), "--lm", "nope.arpa"],
                                capture_output=True, text=True)
    assert missing_lm.returncode == 2 and "lm file not found" in missing_lm.stderr


def test_config_errors():
    from speechssl.config import ConfigError, load_config
    from speechssl.train.ctc import CtcConfig

    with pytest.raises(ConfigError, match="crop_seconds"):
        load_config(CtcConfig, None, ["data.train=[x.jsonl]", "data.crop_seconds=4"])
    with pytest.raises(ConfigError, match="data.train"):
        load_config(CtcConfig, None, [])
    with pytest.raises(ConfigError, match="fine-tuning keys"):
        load_config(CtcConfig, None, ["data.train=[x.jsonl]", "init_from=a.safetensors", "model.num_layers=3"])
    with pytest.raises(ConfigError, match="encoder_lr_scale"):
        load_config(CtcConfig, None, ["data.train=[x.jsonl]", "data.crop_seconds=null", "encoder_lr_scale=0"])


def test_encoder_lr_scale_slows_the_encoder_not_the_head(tmp_path):
    """Two real updates at the same lr: with encoder_lr_scale the encoder moves that much less."""
    from speechssl.config import load_config
    from speechssl.train.ctc import CtcConfig, CtcTask, run_finetune_ctc
    from tests.conftest import FIXTURES

    rows = [{"id": f"u{i}", "path": str(FIXTURES / "speech.wav"), "duration": 1.0, "text": "hello"} for i in range(2)]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def moved(scale: float) -> tuple[float, float]:
        out = tmp_path / f"scale{scale}"
        common = ["model.preset=tiny", "data.crop_seconds=null", f"data.train=[{manifest}]", f"data.valid=[{manifest}]",
                  "data.max_batch_seconds=2", "optim.max_steps=2", "optim.warmup_steps=1", "optim.schedule=linear",
                  "freeze_feature_encoder=false", "model.mask_prob=0", "run.valid_every=2", "run.progress=false",
                  f"encoder_lr_scale={scale}"]
        config = load_config(CtcConfig, None, common)
        torch.manual_seed(config.run.seed)  # as run_finetune_ctc seeds it: the same initial weights
        before = {k: v.clone() for k, v in CtcTask(config).module.state_dict().items()}
        run_finetune_ctc(None, [*common, f"run.out_dir={out}"])
        after = torch.load(out / "resume.pt", weights_only=False)["model"]
        change = {k: float((after[k] - before[k]).abs().max()) for k in before if before[k].is_floating_point()}
        encoder = max(v for k, v in change.items() if k.startswith("wav2vec2."))
        head = max(v for k, v in change.items() if k.startswith("ctc_head."))
        return encoder, head

    full_encoder, full_head = moved(1.0)
    slow_encoder, slow_head = moved(0.01)
    assert full_encoder > 0 and slow_encoder < full_encoder * 0.05
    assert slow_head == pytest.approx(full_head, rel=0.2)


def test_finetune_reads_each_manifest_train_repeats_times_and_perturbs_the_copies(tmp_path):
    """data.train_repeats and data.augment reach CTC fine-tuning (they were read by pretraining
    only, so the recipe's data mix was silently ignored): copies of the labelled draw, per
    manifest, after it; without repeats the list is the draw itself."""
    from speechssl.config import load_config
    from speechssl.data.dataset import AudioDataset
    from speechssl.train.ctc import CtcConfig, labeled_subset, run_finetune_ctc, training_utterances
    from tests.conftest import FIXTURES

    paths = []
    for name, count in (("a", 3), ("b", 2)):
        rows = [{"id": f"{name}{i}", "path": str(FIXTURES / "speech.wav"), "duration": 1.0, "text": "hello"}
                for i in range(count)]
        paths.append(tmp_path / f"{name}.jsonl")
        paths[-1].write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["model.preset=tiny", "data.crop_seconds=null", f"data.train=[{paths[0]},{paths[1]}]",
              f"data.valid=[{paths[0]}]", "data.max_batch_seconds=2", "run.progress=false"]
    augment = "data.augment={speeds: [1.1], noise_prob: 1.0}"

    labeled, copies = training_utterances(load_config(CtcConfig, None, [*common, "data.train_repeats=[1, 3]", augment]))
    assert [u.id for u in labeled] == [u.id for u in labeled_subset(labeled, None)]
    assert sorted(u.id for u in copies) == ["b0#copy2", "b0#copy3", "b1#copy2", "b1#copy3"]
    draw, draw_copies = training_utterances(load_config(CtcConfig, None, [*common, "data.train_repeats=[2, 1]", augment,
                                                                         "labeled_hours=0.0006"]))
    assert len(draw) == 3 and sorted(u.id for u in draw_copies) == sorted(f"{u.id}#copy2" for u in draw if u.id[0] == "a")
    plain, none = training_utterances(load_config(CtcConfig, None, common))
    assert none == [] and [u.id for u in plain] == ["a0", "a1", "a2", "b0", "b1"]

    config = load_config(CtcConfig, None, [*common, "data.train_repeats=[1, 3]", augment])
    data = AudioDataset(labeled + copies, augment=config.data.augment)
    assert len(data[len(labeled)].wave) < len(data[0].wave)  # a copy, 1.1x faster
    summary = run_finetune_ctc(None, [*common, "data.train_repeats=[1, 3]", augment, "optim.max_steps=2",
                                      "optim.warmup_steps=1", f"run.out_dir={tmp_path / 'run'}", "run.valid_every=2"])
    assert summary.step == 2


def test_init_head_goes_on_from_a_ctc_checkpoint(ctc_checkpoint, tiny_checkpoint, tmp_path):
    """init_head starts the head, not only the encoder, from a CTC checkpoint (a second phase of
    fine-tuning); without it the head is new. A checkpoint without a head is refused."""
    from speechssl.checkpoint import load_checkpoint
    from speechssl.config import ConfigError, load_config
    from speechssl.train.ctc import CtcConfig, CtcTask

    path, manifest = ctc_checkpoint
    common = [f"init_from={path}", "data.crop_seconds=null", f"data.train=[{manifest}]", f"data.valid=[{manifest}]"]
    saved = load_checkpoint(path).state_dict
    go_on = CtcTask(load_config(CtcConfig, None, [*common, "init_head=true"])).module.state_dict()
    fresh = CtcTask(load_config(CtcConfig, None, common)).module.state_dict()
    assert all(torch.equal(go_on[k], saved[k].float()) for k in saved)
    assert not torch.equal(fresh["ctc_head.proj.weight"], saved["ctc_head.proj.weight"].float())
    assert torch.equal(fresh["wav2vec2.feature_projection.projection.weight"],
                       saved["wav2vec2.feature_projection.projection.weight"].float())
    with pytest.raises(ConfigError, match="holds no CTC head"):
        CtcTask(load_config(CtcConfig, None, [*common[1:], f"init_from={tiny_checkpoint}", "init_head=true"]))
    with pytest.raises(ConfigError, match="init_head needs init_from"):
        load_config(CtcConfig, None, [*common[1:], "init_head=true"])


def test_padded_copies_count_their_silence_in_the_batch_budget(tmp_path):
    from speechssl.config import load_config
    from speechssl.train.ctc import CtcConfig, training_utterances
    from tests.conftest import FIXTURES

    manifest = tmp_path / "a.jsonl"
    manifest.write_text(json.dumps({"id": "a", "path": str(FIXTURES / "speech.wav"), "duration": 1.0, "text": "hi"}) + "\n")
    common = ["model.preset=tiny", "data.crop_seconds=null", f"data.train=[{manifest}]", "data.train_repeats=[2]"]
    _, plain = training_utterances(load_config(CtcConfig, None, [*common, "data.augment={noise_prob: 0.0}"]))
    _, padded = training_utterances(load_config(CtcConfig, None, [*common, "data.augment={pad_prob: 0.5, pad_seconds: 0.4}"]))
    assert plain[0].duration == 1.0 and padded[0].duration == pytest.approx(1.2)


@pytest.fixture(scope="module")
def frozen_finetune(tiny_checkpoint, tmp_path_factory):
    """Three real updates from the tiny pretrained checkpoint with frozen_layers=1."""
    from speechssl.train.ctc import run_finetune_ctc
    from tests.conftest import FIXTURES

    root = tmp_path_factory.mktemp("frozen")
    rows = [{"id": f"u{i}", "path": str(FIXTURES / "speech.wav"), "duration": 1.0, "text": "hello"} for i in range(2)]
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_finetune_ctc(None, [
        f"init_from={tiny_checkpoint}", "frozen_layers=1", "freeze_feature_encoder=false", "data.crop_seconds=null",
        f"data.train=[{manifest}]", f"data.valid=[{manifest}]", "data.max_batch_seconds=2", "optim.max_steps=3",
        "optim.warmup_steps=1", "optim.lr=1e-2", f"run.out_dir={root / 'run'}", "run.valid_every=3",
        "run.progress=false"])
    return root / "run" / "checkpoint.safetensors"


def test_frozen_layers_keep_the_pretrained_hidden_states(tiny_checkpoint, frozen_finetune):
    """Hidden states 0 and 1 stay the init's, bit for bit (a speaker head on them reads the
    pretrained features); the layers above do learn."""
    from speechssl.audio import load_audio
    from speechssl.models import build
    from tests.conftest import FIXTURES

    wave = torch.from_numpy(load_audio(FIXTURES / "speech.wav"))[None]
    with torch.no_grad():
        before = build.encoder(tiny_checkpoint).eval()(wave).hidden_states
        after = build.encoder(frozen_finetune).eval()(wave).hidden_states
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert not torch.allclose(before[2], after[2])


def test_one_file_serves_pretrained_embeddings_and_fine_tuned_text(tiny_checkpoint, frozen_finetune, tmp_path):
    """with_ctc_encoder: embeddings from the pretrained encoder, CTC from the fine-tuned top
    layers, which alone are stored twice; the packaged file loads both."""
    import speechssl
    from speechssl.audio import load_audio
    from speechssl.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
    from speechssl.models import build
    from tests.conftest import FIXTURES

    ssl, tuned = load_checkpoint(tiny_checkpoint), load_checkpoint(frozen_finetune)
    state = build.with_ctc_encoder(ssl, tuned)
    branch = sorted({k.split(".")[3] for k in state if k.startswith("ctc_encoder.encoder.layers.")})
    assert branch == ["1"]  # tiny has 2 layers; layer 0 was frozen
    assert not any(k.startswith("ctc_encoder.feature") for k in state)
    save_checkpoint(tmp_path / "both.safetensors", Checkpoint(state, tuned.model_config, tuned.metadata))

    wave = load_audio(FIXTURES / "speech.wav")
    model = speechssl.load(tmp_path / "both.safetensors")
    assert np.allclose(model.embed(wave, 16000), speechssl.load(tiny_checkpoint).embed(wave, 16000), atol=1e-5)
    module, _ = build.load_ctc_model(frozen_finetune)
    with torch.no_grad():
        expected, _ = module(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
    assert torch.allclose(model.emissions([wave])[0], expected[0], atol=1e-4)
    packaged, _ = build.load_ctc_model(tmp_path / "both.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(packaged.state_dict().values(), module.state_dict().values()))

    other = load_checkpoint(tiny_checkpoint)
    other.state_dict = {k: v[:1] if k.endswith("layer_norm.weight") else v for k, v in other.state_dict.items()}
    with pytest.raises(CheckpointError, match="not a fine-tune"):
        build.with_ctc_encoder(other, tuned)


def test_frozen_layers_config_errors(tiny_checkpoint):
    from speechssl.config import ConfigError, load_config
    from speechssl.train.ctc import CtcConfig, CtcTask

    common = ["data.train=[x.jsonl]", "data.crop_seconds=null"]
    with pytest.raises(ConfigError, match="frozen_layers needs pretrained weights"):
        load_config(CtcConfig, None, [*common, "frozen_layers=1"])
    with pytest.raises(ConfigError, match="frozen_layers"):
        CtcTask(load_config(CtcConfig, None, [*common, f"init_from={tiny_checkpoint}", "frozen_layers=2"]))
