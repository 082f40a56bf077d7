"""The model shipped in the package (speechssl/assets/default.safetensors, made by
`make default-model`): it loads with no path, transcribes synthesised speech, and a
`speechssl serve` with no checkpoint answers every head over real HTTP."""

import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import jiwer
import numpy as np
import pytest

import speechssl
from speechssl.api import DEFAULT_CHECKPOINT
from speechssl.data.synth import Speaker, render
from tests.conftest import FIXTURES

REAL = FIXTURES / "real"  # held-out real speakers and sentences, with their licences (README.md there)
# fmjc: the earlier fixtures; fash and mcel (the first female and male test speakers): their two clips nearest 3 s.
AN4_PAIRS = {"fmjc": ("an119-fmjc-b.flac", "an117-fmjc-b.flac"), "fash": ("an255-fash-b.flac", "cen1-fash-b.flac"),
             "mcel": ("cen1-mcel-b.flac", "cen2-mcel-b.flac")}
LJ_CLIPS = {"LJ002-0198.flac": "the office of marshal had been hereditary",
            "LJ002-0155.flac": "for which the costs were six shillings ten pence"}
from tests.test_server import free_port

# A voice of the recipe's training split (corpus seed 0) reading sentences that are not in
# any split of the corpus (they are not in the sentence pool's train part).
VOICE = Speaker("espeak", "en-us+m3", 65, 165)
SENTENCES = [
    "the old man walked to the market in the morning",
    "she gave the children some water and bread",
    "we will meet at the station after dinner",
]


@pytest.fixture(scope="module")
def model():
    assert DEFAULT_CHECKPOINT.is_file(), "the default model is missing: make default-model"
    return speechssl.load(device="cpu")


def test_shipped_model_is_small_and_complete(model):
    assert DEFAULT_CHECKPOINT.stat().st_size < 50e6
    assert model.name == "default" and model.heads == ["embeddings", "ctc", "speaker"]
    assert model.speaker_threshold is not None
    assert {"asr_synthetic_greedy", "asr_an4_beam_lm", "asr_lj_beam_lm", "asr_fsdd_beam_lm", "speaker_synthetic",
            "speaker_an4"} <= set(model.metadata["results"])
    # Self-supervised: the encoder is the pretraining run's; CTC reads its fine-tuned copy.
    assert model.ctc_encoder is not model.encoder and model.lm is not None
    assert model.metadata["pretraining"]["step"] >= 4500


def test_shipped_model_transcribes_synthesised_speech(model, tmp_path):
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed (make test installs it)")
    items = [(f"wav/{i}.wav", text) for i, text in enumerate(SENTENCES)]
    rendered = render(tmp_path, VOICE, items)
    assert all(seconds for _, seconds, _ in rendered)
    hyps = [t.text for t in model.transcribe([str(tmp_path / rel) for rel, _ in items], timestamps=False)]
    cer = jiwer.cer(SENTENCES, hyps)
    # docs/model-card.md has the measured figure.
    assert cer < 0.12, f"CER {cer:.3f}: {hyps}"  # measured 0.047 with beam + LM (v2: 0.062, v1: 0.178)


def test_speaker_vectors_of_the_shipped_model(model, tmp_path):
    a = model.speaker_vector(str(FIXTURES / "speech.wav"))
    assert a.shape == (model.speaker_head.dim,) and np.linalg.norm(a) == pytest.approx(1.0, abs=1e-4)
    b = model.speaker_vector(str(FIXTURES / "speech.flac"))
    assert float(np.dot(a, b)) > 0.95  # the same recording, losslessly re-encoded
    same = model.verify(str(FIXTURES / "speech.wav"), str(FIXTURES / "speech.flac"))
    assert same.scoring == "as-norm" and same.same_speaker  # against the shipped cohort


def test_serve_without_a_checkpoint_answers_every_head(tmp_path):
    """`speechssl serve` as a user starts it: a subprocess, the shipped model, loopback HTTP."""
    assert DEFAULT_CHECKPOINT.is_file(), "the default model is missing: make default-model"
    port = free_port()
    env = {**os.environ, "SPEECHSSL_DEVICE": "cpu"}
    env.pop("SPEECHSSL_CHECKPOINT", None)
    proc = subprocess.Popen([sys.executable, "-m", "speechssl.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if httpx.get(url + "/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        models = httpx.get(url + "/v1/models").json()["data"][0]
        assert models["heads"] == ["embeddings", "ctc", "speaker"]
        audio = (FIXTURES / "speech.wav").read_bytes()
        files = {"file": ("speech.wav", audio, "audio/wav")}
        text = httpx.post(url + "/v1/audio/transcriptions", files=files, timeout=60)
        assert text.status_code == 200 and text.json()["text"].strip()
        emb = httpx.post(url + "/v1/embeddings", files=files, timeout=60)
        assert emb.status_code == 200 and len(emb.json()["data"][0]["embedding"]) == models["hidden_size"]
        spk = httpx.post(url + "/v1/speakers/embed", files=files, timeout=60)
        assert spk.status_code == 200 and spk.json()["dim"] == len(spk.json()["embedding"])
        pair = {"file_a": ("a.wav", audio, "audio/wav"), "file_b": ("b.wav", audio, "audio/wav")}
        verify = httpx.post(url + "/v1/speakers/verify", files=pair, timeout=60)
        assert verify.status_code == 200 and verify.json()["same_speaker"] is True
        assert verify.json()["scoring"] == "as-norm"

        # Real voices the model never heard: LJ Speech test sentences (public domain) and
        # recordings of AN4 test speakers. docs/model-card.md has the measured figures.
        def clip(name):
            return (name, (REAL / name).read_bytes(), "audio/flac")

        hyps = [httpx.post(url + "/v1/audio/transcriptions", files={"file": clip(name)}, timeout=60).json()["text"]
                for name in LJ_CLIPS]
        cer = jiwer.cer(list(LJ_CLIPS.values()), hyps)
        assert cer < 0.6, f"CER {cer:.3f}: {hyps}"  # measured 0.236 (v4: 0.348, v3: 0.461; issue target 0.15: not met)
        # Speaker decisions on three held-out AN4 speakers (two clips each) and LJ: with a measured
        # EER of about 0.13 on AN4's held-out speakers a single pair can go either way, so the
        # bound is on the set: most decisions right, and same-speaker pairs score above the rest.
        def score(a, b):
            return httpx.post(url + "/v1/speakers/verify", timeout=60,
                              files={"file_a": clip(a), "file_b": clip(b)}).json()

        same = [score(a, b) for a, b in AN4_PAIRS.values()]
        speakers = list(AN4_PAIRS)
        other = [score(AN4_PAIRS[x][0], AN4_PAIRS[y][1]) for x, y in zip(speakers, speakers[1:] + speakers[:1])]
        other.append(score(AN4_PAIRS["fmjc"][0], "LJ002-0198.flac"))
        right = sum(r["same_speaker"] for r in same) + sum(not r["same_speaker"] for r in other)
        assert right >= 5, (same, other)  # of 7
        assert min(r["score"] for r in same) > np.mean([r["score"] for r in other]), (same, other)

        # Who spoke when: LJ, AN4 fmjc and an espeak voice taking turns.
        if shutil.which("espeak-ng"):
            audio, truth = conversation(tmp_path)
            body = httpx.post(url + "/v1/audio/transcriptions", timeout=120, data={"response_format": "diarized_json"},
                              files={"file": ("talk.wav", audio, "audio/wav")}).json()
            segments = body["segments"]
            assert len({s["speaker"] for s in segments}) == 3, segments
            starts = [s["start"] for s in segments]
            ends = [s["end"] for s in segments]
            for start, end, _ in truth:  # every turn's edges found within 0.5 s
                assert min(abs(start - x) for x in starts) <= 0.5 and min(abs(end - x) for x in ends) <= 0.5, segments
            # The same speaker's turns get the same label, different speakers' different ones.
            label: dict[str, set] = {}
            for a, _, who in truth:
                label.setdefault(who, set()).update(s["speaker"] for s in segments if abs(s["start"] - a) <= 0.5)
            assert all(len(v) == 1 for v in label.values()) and len(set().union(*label.values())) == 3, label
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def conversation(tmp_path):
    """WAV bytes of six turns by three voices with 0.6 s pauses, and (start, end, who) per turn."""
    import io

    import soundfile as sf

    from speechssl.audio import load_audio

    voice = Speaker("espeak", "en-us+f3", 60, 150)
    rendered = render(tmp_path, voice, [(f"wav/{voice.id}/e{i}.wav", text) for i, text in enumerate(SENTENCES[:2])])
    espeak = [load_audio(tmp_path / rel) for rel, _, _ in rendered]

    def trimmed(name):  # AN4 recordings hold silence: the turn is the voiced part
        wave = load_audio(REAL / name)
        loud = np.flatnonzero(np.abs(wave) > 0.1 * np.abs(wave).max())
        return wave[max(0, loud[0] - 800): loud[-1] + 800]

    turns = [(load_audio(REAL / "LJ002-0198.flac"), "lj"), (trimmed("an117-fmjc-b.flac"), "fmjc"),
             (espeak[0], "espeak"), (load_audio(REAL / "LJ002-0155.flac"), "lj"), (espeak[1], "espeak"),
             (trimmed("an119-fmjc-b.flac"), "fmjc")]
    parts, truth, pos = [np.zeros(8000, np.float32)], [], 0.5
    for wave, who in turns:
        parts += [wave, np.zeros(9600, np.float32)]
        truth.append((pos, pos + len(wave) / 16000, who))
        pos += len(wave) / 16000 + 0.6
    out = io.BytesIO()
    sf.write(out, np.concatenate(parts), 16000, format="WAV", subtype="PCM_16")
    return out.getvalue(), truth
