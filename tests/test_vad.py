"""Voice activity: speech timestamps on clips with inserted silences, through the library and
a real uvicorn server, and transcription chunked at the pauses (chunking_strategy)."""

import json
import re
import shutil

import httpx
import numpy as np
import openai
import pytest

from server.settings import Settings
from speechssl.audio import load_audio
from speechssl.data.voices import Speaker, render
from speechssl.vad import VadError, VadSettings, speech_segments, voiced_pieces
from tests.test_server import AUTH, LiveServer, wav_bytes
from tests.test_server_heads import build_heads_checkpoint

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
SENTENCES = ["the quick brown fox jumps over the lazy dog", "seven hundred and twelve boxes arrived on monday"]
SILENCES = (0.7, 1.2, 0.5)  # before, between, after


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """Two espeak sentences (trimmed by the synthesizer step) with known silences around them,
    under a -60 dBFS noise floor; the truth is where each sentence lies."""
    out = tmp_path_factory.mktemp("vad")
    speaker = Speaker("espeak", "en-us", 50, 160)
    rendered = render(out, speaker, [(f"wav/{speaker.id}/s{i}.wav", t) for i, t in enumerate(SENTENCES)])
    waves = [load_audio(out / path) for path, _, _ in rendered]
    parts, truth, pos = [], [], 0.0
    for gap, wave in zip(SILENCES, waves + [None]):
        parts.append(np.zeros(int(gap * 16000), np.float32))
        pos += gap
        if wave is not None:
            parts.append(wave)
            truth.append((pos, pos + len(wave) / 16000))
            pos += len(wave) / 16000
    audio = np.concatenate(parts)
    audio += np.random.default_rng(0).standard_normal(len(audio)).astype(np.float32) * 1e-3
    return audio, truth


def test_silero_timestamps_match_the_inserted_silences(clip):
    audio, truth = clip
    found = speech_segments(audio)
    assert len(found) == 2, found
    for seg, (start, end) in zip(found, truth):
        assert abs(seg.start - start) <= 0.1 and abs(seg.end - end) <= 0.1, (seg, start, end)
    padded = speech_segments(audio, VadSettings(prefix_padding_ms=300))
    assert padded[0].start == pytest.approx(max(0.0, found[0].start - 0.3), abs=0.002)
    assert [len(p) for _, p in voiced_pieces(audio, found)] == [int(s.end * 16000) - int(s.start * 16000) for s in found]


def test_energy_detector_and_silence_and_bad_settings(clip):
    audio, truth = clip
    found = speech_segments(audio, VadSettings(backend="energy", silence_duration_ms=400))
    assert len(found) == 2 and all(abs(s.start - t[0]) <= 0.2 and abs(s.end - t[1]) <= 0.2 for s, t in zip(found, truth))
    quiet = np.random.default_rng(1).standard_normal(32000).astype(np.float32) * 1e-3
    assert speech_segments(quiet) == [] and speech_segments(quiet, VadSettings(backend="energy")) == []
    with pytest.raises(VadError, match="threshold must be between 0 and 1"):
        speech_segments(audio, VadSettings(threshold=1.5))
    with pytest.raises(VadError, match="backend must be one of silero, energy"):
        speech_segments(audio, VadSettings(backend="webrtc"))


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    path = build_heads_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("vadsrv") / "heads.safetensors", speaker=False)
    with LiveServer(Settings(checkpoint=str(path), device="cpu", max_audio_seconds=30, api_key="sekret")) as live:
        yield live


def test_voice_activity_route(server, clip):
    audio, truth = clip
    response = httpx.post(server.url + "/v1/audio/voice_activity", headers=AUTH, timeout=60,
                          files={"file": ("a.wav", wav_bytes(audio, 16000))})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["backend"] == "silero" and body["duration"] == pytest.approx(len(audio) / 16000, abs=0.001)
    assert len(body["segments"]) == 2
    assert all(abs(s["start"] - a) <= 0.1 and abs(s["end"] - b) <= 0.1 for s, (a, b) in zip(body["segments"], truth))
    bad = httpx.post(server.url + "/v1/audio/voice_activity", headers=AUTH, data={"threshold": "2"},
                     files={"file": ("a.wav", wav_bytes(audio, 16000))})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_vad_settings"


def test_chunking_strategy_transcribes_the_voiced_segments(server, clip):
    audio, truth = clip
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sekret")
    upload = ("a.wav", wav_bytes(audio, 16000))
    plain = client.audio.transcriptions.create(model="m", file=upload, response_format="verbose_json",
                                               timestamp_granularities=["word"])
    for strategy in ("auto", {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 100,
                              "silence_duration_ms": 300}):
        chunked = client.audio.transcriptions.create(model="m", file=upload, response_format="verbose_json",
                                                     timestamp_granularities=["word"], chunking_strategy=strategy)
        assert chunked.duration == plain.duration
        # Every word lies in a voiced segment (with its padding): the silences were never read.
        pad = 0.3 if strategy == "auto" else 0.1
        assert chunked.words and all(any(a - pad - 0.05 <= w.start and w.end <= b + 0.05 for a, b in truth)
                                     for w in chunked.words)
    as_json = httpx.post(server.url + "/v1/audio/transcriptions", headers=AUTH, files={"file": upload},
                         data={"chunking_strategy": json.dumps({"type": "server_vad", "silence_duration_ms": 300})})
    assert as_json.status_code == 200, as_json.text
    for data, message in [({"chunking_strategy": "sometimes"}, 'must be "auto" or'),
                          ({"chunking_strategy": json.dumps({"type": "server_vad", "eagerness": 1})}, "unknown key 'eagerness'"),
                          ({"chunking_strategy[threshold]": "0.4"}, "chunking_strategy\\[type\\] is missing"),
                          ({"chunking_strategy": "auto", "stream": "true"}, "cannot stream")]:
        refused = httpx.post(server.url + "/v1/audio/transcriptions", headers=AUTH, files={"file": upload}, data=data)
        assert refused.status_code == 400, refused.text
        assert re.search(message, refused.json()["error"]["message"]), refused.json()
    silence = wav_bytes(np.zeros(32000, np.float32), 16000)
    empty = httpx.post(server.url + "/v1/audio/transcriptions", headers=AUTH, files={"file": ("s.wav", silence)},
                       data={"chunking_strategy": "auto"})
    assert empty.status_code == 200 and empty.json()["text"] == ""
