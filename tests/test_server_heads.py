"""Transcription (OpenAI-compatible) and speaker routes on a real uvicorn server over loopback.

The checkpoint is the tiny random encoder plus random CTC and speaker heads: the text is
garbage, so the tests check status codes, shapes and formats, not content.
"""

import asyncio
import re
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import torch
from prometheus_client.parser import text_string_to_metric_families

from server.settings import Settings
import speechssl
from speechssl.api import HeadMissingError, SpeechModel
from speechssl.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from speechssl.models import heads
from tests.conftest import require_fsdd
from tests.test_server import AUTH, LiveServer, wav_bytes

FIXTURES = Path(__file__).parent / "fixtures"
TRANSCRIBE, SPEAKER_EMBED, VERIFY = "/v1/audio/transcriptions", "/v1/speakers/embed", "/v1/speakers/verify"


LM_TEXTS = ["one two three", "two three four", "three four five six", "seven eight nine"]


def build_heads_checkpoint(encoder_checkpoint: Path, out: Path, speaker: bool, threshold: float | None = 0.5,
                           lm: bool = False) -> Path:
    """The tiny encoder plus a random CTC head (and a random speaker head, and a word n-gram
    of LM_TEXTS inside the file, when asked)."""
    ckpt = load_checkpoint(encoder_checkpoint)
    hidden = ckpt.model_config.hidden_size
    torch.manual_seed(1)
    ctc = heads.CtcHead(hidden, len(heads.CHAR_VOCAB))
    state = {**ckpt.state_dict, **{f"ctc_head.{k}": v for k, v in ctc.state_dict().items()}}
    metadata = {**ckpt.metadata, "vocab": heads.CHAR_VOCAB, "blank_id": 0}
    if speaker:
        head = heads.SpeakerHead(hidden, ckpt.model_config.num_layers)
        state.update({f"speaker_head.{k}": v for k, v in head.state_dict().items()})
        metadata["speaker_head"] = head.config()
        if threshold is not None:
            metadata["speaker_threshold"] = threshold
    if lm:
        import gzip

        from speechssl.checkpoint import LM_KEY
        from speechssl.decode.ngram import build_arpa

        arpa = gzip.compress(build_arpa(LM_TEXTS, order=2).encode())
        state[LM_KEY] = torch.frombuffer(bytearray(arpa), dtype=torch.uint8)
        metadata["lm"] = {"order": 2, "lm_weight": 2.0, "word_score": 0.0}
    save_checkpoint(out, Checkpoint(state, ckpt.model_config, metadata))
    return out


HAS_SPEAKER_HEAD = hasattr(heads, "SpeakerHead") and hasattr(SpeechModel, "speaker_vector")
needs_speaker_head = pytest.mark.skipif(not HAS_SPEAKER_HEAD, reason="speechssl has no speaker head yet")


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    path = build_heads_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("heads") / "heads.safetensors",
                                  speaker=HAS_SPEAKER_HEAD)
    settings = Settings(checkpoint=str(path), device="cpu", max_upload_bytes=2_000_000, max_audio_seconds=20,
                        max_wait_ms=30, api_key="sekret")
    with LiveServer(settings) as live:
        yield live


@pytest.fixture(scope="module")
def clips() -> list[Path]:
    return sorted(require_fsdd().glob("*.wav"))[:8]


@pytest.fixture(scope="module")
def speech(clips) -> bytes:
    return clips[0].read_bytes()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sekret", max_retries=0, timeout=60)


def test_models_lists_heads(server):
    card = httpx.get(server.url + "/v1/models", headers=AUTH).json()["data"][0]
    assert card["heads"] == ["embeddings", "ctc"] + ["speaker"] * HAS_SPEAKER_HEAD
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {TRANSCRIBE, SPEAKER_EMBED, VERIFY} <= set(paths)


def test_openai_client_json_text_and_verbose_words(client, clips):
    with open(clips[0], "rb") as f:
        plain = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert isinstance(plain.text, str) and plain.text
    with open(FIXTURES / "speech.flac", "rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text", language="en")
    assert isinstance(text, str) and text.endswith("\n")
    with open(clips[1], "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                     timestamp_granularities=["word"])
    assert verbose.duration == pytest.approx(sf.info(clips[1]).duration, abs=0.01)
    assert verbose.language == "english" and verbose.text
    words = verbose.words
    assert words and [w.word for w in words] == verbose.text.split()
    assert all(0 <= w.start <= w.end <= verbose.duration + 0.02 for w in words)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(words, words[1:]))
    assert all(0 < w.model_extra["probability"] <= 1 for w in words)
    assert verbose.segments and verbose.segments[0].start == words[0].start
    assert " ".join(s.text for s in verbose.segments) == verbose.text


def test_verbose_json_words_only_when_asked(server, speech):
    files = {"file": ("a.wav", speech, "audio/wav")}
    segments = httpx.post(server.url + TRANSCRIBE, files=files, headers=AUTH,
                          data={"response_format": "verbose_json"}).json()
    assert segments["task"] == "transcribe" and "words" not in segments
    assert {"id", "start", "end", "text"} <= set(segments["segments"][0])
    both = httpx.post(server.url + TRANSCRIBE, files=files, headers=AUTH,
                      data={"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}).json()
    assert both["words"] and both["segments"] == segments["segments"]


def test_srt_and_vtt(server, speech):
    files = {"file": ("a.wav", speech, "audio/wav")}
    srt = httpx.post(server.url + TRANSCRIBE, files=files, data={"response_format": "srt"}, headers=AUTH)
    assert srt.status_code == 200 and srt.headers["content-type"].startswith("text/plain")
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\S", srt.text), srt.text
    vtt = httpx.post(server.url + TRANSCRIBE, files=files, data={"response_format": "vtt"}, headers=AUTH)
    assert vtt.headers["content-type"].startswith("text/vtt")
    assert re.match(r"WEBVTT\n\n\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n\S", vtt.text), vtt.text


def test_concurrent_transcriptions_are_batched_and_match_sequential(server, clips):
    def post(client, path):
        return client.post(TRANSCRIBE, files={"file": (path.name, path.read_bytes(), "audio/wav")})

    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        alone = [post(client, p).json()["text"] for p in clips]

    async def together():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as client:
            return await asyncio.gather(*[post(client, p) for p in clips * 2])

    responses = asyncio.run(together())
    assert [r.json()["text"] for r in responses] == alone * 2
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in families["speechssl_requests"].samples
                if s.name == "speechssl_requests_total"}
    assert requests[(TRANSCRIBE, "200")] >= 3 * len(clips)
    sizes = {s.name: s.value for s in families["speechssl_batch_size"].samples}
    assert sizes["speechssl_batch_size_sum"] > sizes["speechssl_batch_size_count"], "no batch held two requests"


@needs_speaker_head
def test_speaker_embed_and_verify(server, clips):
    def embed(path):
        r = httpx.post(server.url + SPEAKER_EMBED, files={"file": (path.name, path.read_bytes())}, headers=AUTH)
        assert r.status_code == 200, r.text
        return r.json()

    vector = embed(clips[0])
    assert vector["dim"] == len(vector["embedding"]) and np.linalg.norm(vector["embedding"]) == pytest.approx(1, abs=1e-4)
    files = {"file_a": ("a.wav", clips[0].read_bytes()), "file_b": ("b.wav", clips[5].read_bytes())}
    verdict = httpx.post(server.url + VERIFY, files=files, headers=AUTH).json()
    assert -1 - 1e-5 <= verdict["score"] <= 1 + 1e-5 and verdict["threshold"] == pytest.approx(0.5)
    assert verdict["same_speaker"] == (verdict["score"] >= verdict["threshold"]) and verdict["scoring"] == "cosine"
    expected = float(np.dot(vector["embedding"], embed(clips[5])["embedding"]))
    assert verdict["score"] == pytest.approx(expected, abs=1e-4)
    same = httpx.post(server.url + VERIFY, headers=AUTH,
                      files={"file_a": ("a.wav", clips[0].read_bytes()), "file_b": ("b.wav", clips[0].read_bytes())})
    assert same.json()["score"] == pytest.approx(1.0, abs=1e-4) and same.json()["same_speaker"]
    # Several files in one request: a vector each, in order, equal to one file per request.
    several = httpx.post(server.url + SPEAKER_EMBED, headers=AUTH,
                         files=[("file", (p.name, p.read_bytes())) for p in (clips[5], clips[0])]).json()
    assert [d["index"] for d in several["data"]] == [0, 1] and several["embedding"] == several["data"][0]["embedding"]
    assert np.dot(several["data"][1]["embedding"], vector["embedding"]) == pytest.approx(1.0, abs=1e-4)
    too_many = httpx.post(server.url + SPEAKER_EMBED, headers=AUTH,
                          files=[("file", ("a.wav", clips[0].read_bytes()))] * 17)
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_files"


@needs_speaker_head
def test_verify_without_a_stored_threshold_says_so(tiny_checkpoint, tmp_path, speech):
    path = build_heads_checkpoint(tiny_checkpoint, tmp_path / "no-threshold.safetensors", speaker=True, threshold=None)
    with LiveServer(Settings(checkpoint=str(path), device="cpu")) as live:
        files = {"file_a": ("a.wav", speech), "file_b": ("b.wav", speech)}
        response = httpx.post(live.url + VERIFY, files=files)
        assert response.status_code == 400 and "no speaker_threshold" in response.json()["error"]["message"]
        assert httpx.post(live.url + SPEAKER_EMBED, files={"file": ("a.wav", speech)}).status_code == 200


# --- the bad-input battery, on every new route ---------------------------------------------------------

ROUTES = [TRANSCRIBE, pytest.param(SPEAKER_EMBED, marks=needs_speaker_head),
          pytest.param(VERIFY, marks=needs_speaker_head)]


def post_audio(server, route, content, data=None, headers=AUTH, filename="x.wav", content_type="audio/wav"):
    """The audio goes in `file`, or in `file_a` beside a good `file_b` for verification."""
    files = {"file_a" if route == VERIFY else "file": (filename, content, content_type)}
    if route == VERIFY:
        files["file_b"] = ("b.wav", (FIXTURES / "speech.wav").read_bytes(), "audio/wav")
    return httpx.post(server.url + route, files=files, data=data or {}, headers=headers, timeout=60)


BAD_AUDIO = [
    ("corrupt", b"RIFF\x00\x00garbage" * 50, 415, "could not decode audio"),
    ("empty", b"", 415, "audio is empty"),
    ("text file", b"hello, this is not audio\n" * 20, 415, "could not decode audio"),
    ("one sample", wav_bytes(np.zeros(1, np.float32), 16000), 400, "too short"),
    ("nan", wav_bytes(np.full(16000, np.nan, np.float32), 16000, "FLOAT"), 400, "NaN"),
    ("too long", wav_bytes(np.zeros(16000 * 25, np.float32), 16000), 413, "too long"),
    ("over-size", b"\x00" * 2_100_000, 413, "exceeds the limit"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name, content, status, message", BAD_AUDIO, ids=[case[0] for case in BAD_AUDIO])
def test_bad_audio_gets_4xx_json_and_server_survives(server, route, name, content, status, message):
    response = post_audio(server, route, content)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"] and error["code"]
    assert httpx.get(server.url + "/health").status_code == 200


ODD_BUT_VALID = {
    "stereo 48 kHz": (np.sin(np.linspace(0, 2000, 48000 * 2)).reshape(-1, 2).astype(np.float32) * 0.3, 48000, "PCM_16"),
    "8-bit": (np.sin(np.linspace(0, 800, 8000)).astype(np.float32) * 0.3, 8000, "PCM_U8"),
    "8 kHz": (np.sin(np.linspace(0, 800, 8000)).astype(np.float32) * 0.3, 8000, "PCM_16"),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("kind", ODD_BUT_VALID)
def test_odd_but_valid_formats_are_accepted(server, route, kind):
    response = post_audio(server, route, wav_bytes(*ODD_BUT_VALID[kind]))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("route", ROUTES)
def test_auth_missing_field_and_content_type(server, route, speech):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        denied = post_audio(server, route, speech, headers=headers)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    missing = httpx.post(server.url + route, data={"model": "x"} if route == TRANSCRIBE else None, headers=AUTH)
    assert missing.status_code == 422 and "file" in missing.json()["error"]["message"]
    as_json = httpx.post(server.url + route, json={"file": "a.wav"}, headers=AUTH)
    assert as_json.status_code == 422 and as_json.json()["error"]["code"] == "validation_error"
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize("data, status, message", [
    ({"response_format": "mp4"}, 422, "response_format"),
    ({"timestamp_granularities[]": "sentence"}, 422, "timestamp_granularities"),
    ({"timestamp_granularities[]": "word"}, 400, "needs response_format=verbose_json"),
    ({"language": "fr"}, 400, "not supported"),
    ({"temperature": "warm"}, 422, "temperature"),
    ({"decoding": "viterbi"}, 422, "decoding"),
    ({"include[]": "tokens"}, 422, "include"),
    ({"include[]": "logprobs", "response_format": "text"}, 400, "needs response_format=json"),
    ({"decoding": "beam_lm"}, 400, "carries no language model"),
    ({"decoding": "beam_lm", "stream": "true"}, 400, "carries no language model"),
])
def test_bad_transcription_parameters(server, speech, data, status, message):
    response = post_audio(server, TRANSCRIBE, speech, data=data)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


@pytest.mark.parametrize("route, extra", [(TRANSCRIBE, {"diarize": "true", "beam_size": "5"}),
                                           ("/v1/embeddings", {"model": "x"}),
                                           pytest.param(SPEAKER_EMBED, {"pooling": "mean"}, marks=needs_speaker_head)])
def test_fields_a_route_does_not_take_are_named_in_a_400(server, speech, route, extra):
    response = post_audio(server, route, speech, data=extra)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_field" and all(repr(k) in error["message"] for k in extra)
    assert post_audio(server, route, speech).status_code == 200  # the same request without them


def test_streamed_deltas_join_into_the_offline_text(client, server):
    clip, _ = sf.read(FIXTURES / "speech.wav", dtype="float32")
    long = wav_bytes(np.resize(clip, 16000 * 18), 16000)
    model = server.app.state.model
    saved, model.chunk_seconds = model.chunk_seconds, 12.0  # 6 s cores: three windows, as 60 s would give
    try:
        offline = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", long))
        events = list(client.audio.transcriptions.create(model="whisper-1", file=("a.wav", long), stream=True))
    finally:
        model.chunk_seconds = saved
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert [e.type for e in events][-1] == "transcript.text.done" and events[-1].text == offline.text
    assert len(deltas) >= 2 and "".join(deltas) == offline.text
    refused = post_audio(server, TRANSCRIBE, long, data={"stream": "true", "response_format": "srt"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_stream_format"


def test_translations_say_the_model_is_english_only(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.translations.create(model="whisper-1", file=("a.wav", (FIXTURES / "speech.wav").read_bytes()))
    assert "English-only" in caught.value.message


def test_openai_client_sees_errors_as_api_errors(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("x.wav", wav_bytes(np.zeros(1, np.float32), 16000)))
    assert "too short" in caught.value.message
    bad_key = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.audio.transcriptions.create(model="whisper-1", file=("a.wav", (FIXTURES / "speech.wav").read_bytes()))


def test_a_checkpoint_with_a_language_model_decodes_with_it_by_default(tiny_checkpoint, tmp_path, clips):
    """auto = beam + the file's own n-gram (only its words come out), through the API and the
    server alike; decoding=greedy gives the greedy text (the random head spells other words)."""
    path = build_heads_checkpoint(tiny_checkpoint, tmp_path / "lm.safetensors", speaker=False, lm=True)
    model = speechssl.load(path, device="cpu")
    words = {w for t in LM_TEXTS for w in t.split()}
    auto = [model.transcribe(str(c), timestamps=False).text for c in clips[:4]]
    greedy = [model.transcribe(str(c), timestamps=False, decoding="greedy").text for c in clips[:4]]
    assert all(set(t.split()) <= words for t in auto) and any(auto)
    assert any(set(t.split()) - words for t in greedy)
    with pytest.raises(HeadMissingError, match="no language model"):
        speechssl.load(tiny_checkpoint).decoder("beam_lm")
    with pytest.raises(ValueError, match="decoding must be one of"):
        model.decoder("viterbi")
    settings = Settings(checkpoint=str(path), device="cpu", max_wait_ms=10, precision="fp32")  # vs the fp32 API
    with LiveServer(settings) as live:
        for clip, text, plain in zip(clips, auto, greedy):
            for decoding, expected in (("auto", text), ("beam_lm", text), ("greedy", plain)):
                response = post_audio(live, TRANSCRIBE, clip.read_bytes(), data={"decoding": decoding}, headers={})
                assert response.status_code == 200 and response.json()["text"] == expected, (decoding, response.text)


def test_logprobs_and_segment_confidence_come_from_the_word_probabilities(server, clips):
    """include[]=logprobs: tokens join into the text, logprob = log(word probability); the
    verbose segments' avg_logprob is their words' mean log-probability."""
    import math

    for clip in clips[:3]:
        audio = clip.read_bytes()
        plain = post_audio(server, TRANSCRIBE, audio, data={"include[]": "logprobs"}).json()
        verbose = post_audio(server, TRANSCRIBE, audio, data={"response_format": "verbose_json",
                                                              "timestamp_granularities[]": ["word", "segment"]}).json()
        words = verbose["words"]
        assert "".join(t["token"] for t in plain["logprobs"]) == plain["text"] == verbose["text"]
        assert [t["logprob"] for t in plain["logprobs"]] == pytest.approx([math.log(w["probability"]) for w in words])
        assert all(t["bytes"] == list(t["token"].encode()) for t in plain["logprobs"])
        assert " ".join(s["text"] for s in verbose["segments"]) == verbose["text"]
        for seg in verbose["segments"]:
            inside = [w for w in words if seg["start"] <= w["start"] and w["end"] <= seg["end"]]
            assert seg["avg_logprob"] == pytest.approx(sum(math.log(w["probability"]) for w in inside) / len(inside))
            assert seg["compression_ratio"] > 0 and seg["temperature"] == 0 and seg["seek"] == round(seg["start"] * 100)
            assert len(seg["tokens"]) == len(seg["text"])
    assert "logprobs" not in post_audio(server, TRANSCRIBE, clips[0].read_bytes()).json()
