"""Live transcription over a WebSocket, on a real uvicorn server over loopback.

The tiny random model's text is garbage but deterministic: the tests check the protocol
(previews arrive while audio is still being sent, the done text is the offline transcript)
and that bad sessions end with an error message and a close code, the server unharmed.
"""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from server.settings import Settings
from tests.test_server import AUTH, LiveServer, wav_bytes
from tests.test_server_heads import build_heads_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
LIVE = "/v1/audio/transcriptions/live"


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    path = build_heads_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("live") / "heads.safetensors", speaker=False)
    settings = Settings(checkpoint=str(path), device="cpu", max_audio_seconds=20, max_wait_ms=5, api_key="sekret",
                        body_timeout_s=2.0, header_timeout_s=1.0, max_live_sessions=2,
                        precision="fp32")  # the client test compares with the fp32 model loaded in-process
    with LiveServer(settings) as live:
        yield live


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    clip, rate = sf.read(FIXTURES / "speech.wav", dtype="int16")
    assert rate == 16000
    return np.resize(clip, 16000 * 12)


def ws_url(server, query: str = "") -> str:
    return server.url.replace("http://", "ws://") + LIVE + (f"?{query}" if query else "")


def offline_text(server, pcm: np.ndarray, rate: int = 16000) -> str:
    import httpx

    response = httpx.post(server.url + "/v1/audio/transcriptions", headers=AUTH, timeout=60,
                          files={"file": ("a.wav", wav_bytes(pcm.astype(np.float32) / 32768, rate))})
    assert response.status_code == 200, response.text
    return response.json()["text"]


def sessions_end(server) -> bool:
    """The server has let go of every session (its close runs just after the client's)."""
    deadline = time.monotonic() + 10
    while server.app.state.live_sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.app.state.live_sessions == 0


def messages(ws) -> list[dict]:
    """Everything the server sent until it closed."""
    out = []
    try:
        while True:
            out.append(json.loads(ws.recv(timeout=60)))
    except ConnectionClosed:
        return out


def test_previews_arrive_before_the_audio_ends_and_done_is_the_offline_text(server, audio):
    chunk = 1600  # 0.1 s
    early: list[dict] = []  # what arrived while audio was still being sent
    with connect(ws_url(server), additional_headers=AUTH) as ws:
        for start in range(0, len(audio), chunk):
            ws.send(audio[start:start + chunk].tobytes())
            if start == 8 * 16000:  # 8 s sent: previews of the first seconds are due; wait for one
                early.append(json.loads(ws.recv(timeout=30)))
            time.sleep(0.002)
        ws.send(json.dumps({"type": "end"}))
        rest = messages(ws)
        assert ws.close_code == 1000
    events = early + rest
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert early and early[0]["type"] == "transcript.text.delta" and early[0]["delta"].strip()
    done = events[-1]
    assert done["type"] == "transcript.text.done" and done["duration"] == pytest.approx(12.0, abs=0.01)
    assert done["text"] == offline_text(server, audio)
    assert len(deltas) >= 2 and "".join(deltas).split()  # previews: whole words, joined by their own spaces


def test_a_session_outlives_the_http_header_timeout(server, audio):
    """The upgraded connection is the WebSocket's: the HTTP header timer (1 s here) must not cut it."""
    with connect(ws_url(server), additional_headers=AUTH) as ws:
        for second in range(3):
            ws.send(audio[second * 16000:(second + 1) * 16000].tobytes())
            time.sleep(0.8)  # 2.4 s in all, each pause within body_timeout_s
        ws.send(json.dumps({"type": "end"}))
        events = messages(ws)
        assert ws.close_code == 1000
    assert events[-1]["type"] == "transcript.text.done" and events[-1]["duration"] == pytest.approx(3.0, abs=0.01)


def test_other_sample_rates_are_resampled_like_an_upload(server, audio):
    pcm = audio[: 16000 * 4]
    import soxr

    pcm8k = np.round(soxr.resample(pcm.astype(np.float32), 16000, 8000)).astype(np.int16)
    with connect(ws_url(server, "sample_rate=8000"), additional_headers=AUTH) as ws:
        for start in range(0, len(pcm8k), 800):
            ws.send(pcm8k[start:start + 800].tobytes())
        ws.send(json.dumps({"type": "end"}))
        done = messages(ws)[-1]
    assert done["type"] == "transcript.text.done" and done["text"] == offline_text(server, pcm8k, 8000)


@pytest.mark.parametrize("query, headers, send, code", [
    ("", {}, [b"\0\0" * 1600], "invalid_api_key"),
    ("sample_rate=1", AUTH, [], "invalid_sample_rate"),
    ("decoding=beam_lm", AUTH, [], "no_language_model"),
    ("language=fr", AUTH, [], "unsupported_language"),
    ("stream=true", AUTH, [], "unsupported_field"),
    ("", AUTH, [b"\0\0\0"], "invalid_audio"),                   # odd byte count is not 16-bit PCM
    ("", AUTH, ["hello"], "invalid_message"),
    ("", AUTH, [json.dumps({"type": "end"})], "invalid_audio"),  # end before any audio
    ("", AUTH, [b"\0\0" * 16000 * 21], "audio_too_long"),       # 21 s against max_audio_seconds 20
    ("", AUTH, [b"\0\0" * 1600, "wait"], "idle_timeout"),        # then silence longer than body_timeout_s
])
def test_bad_sessions_end_with_an_error_and_a_close(server, audio, query, headers, send, code):
    with connect(ws_url(server, query), additional_headers=headers, max_size=None) as ws:
        try:
            for message in send:
                if message == "wait":
                    time.sleep(2.5)
                    continue
                ws.send(message)
        except ConnectionClosed:
            pass
        events = messages(ws)
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == code, events
    assert ws.close_code == 1008
    assert sessions_end(server)
    assert offline_text(server, audio[:16000]) is not None  # the server still answers


def test_sessions_past_the_limit_are_refused_and_a_leaving_client_frees_its_place(server, audio):
    with connect(ws_url(server), additional_headers=AUTH) as first, connect(ws_url(server), additional_headers=AUTH) as second:
        first.send(audio[:16000].tobytes())
        second.send(audio[:16000].tobytes())
        time.sleep(0.2)
        with connect(ws_url(server), additional_headers=AUTH) as third:
            events = messages(third)
        assert events[-1]["error"]["code"] == "too_many_sessions" and third.close_code == 1013
    assert sessions_end(server)
    with connect(ws_url(server), additional_headers=AUTH) as ws:
        ws.send(audio[:16000].tobytes())
        ws.send(json.dumps({"type": "end"}))
        assert messages(ws)[-1]["type"] == "transcript.text.done"


def test_client_helper_and_the_cli_stream_a_file_and_stdin(server, audio, tmp_path):
    import subprocess
    import sys

    from speechssl.client import LiveSessionError, live_transcribe, pcm_chunks

    path = tmp_path / "talk.wav"
    path.write_bytes(wav_bytes(audio.astype(np.float32) / 32768, 16000))
    offline = offline_text(server, audio)
    events = list(live_transcribe(server.url, pcm_chunks(path), api_key="sekret"))
    assert events[-1] == {"type": "transcript.text.done", "text": offline, "duration": 12.0}
    assert sum(e["type"] == "transcript.text.delta" for e in events) >= 2
    with pytest.raises(LiveSessionError, match="invalid_api_key"):
        list(live_transcribe(server.url, pcm_chunks(path)))
    # The CLI through the server, from a file; then from raw PCM on stdin, with the model loaded here.
    cli = [sys.executable, "-m", "speechssl.cli", "transcribe", "--stream"]
    remote = subprocess.run([*cli, "--server", server.url, "--api-key", "sekret", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout.strip() == offline and remote.stderr.split()  # previews went to stderr
    checkpoint = server.app.state.settings.checkpoint
    local = subprocess.run([*cli, "--checkpoint", checkpoint, "--format", "json", "-"], input=audio.tobytes(),
                           capture_output=True, timeout=120)
    assert local.returncode == 0, local.stderr
    lines = [json.loads(line) for line in local.stdout.decode().splitlines()]
    assert lines[-1]["text"] == offline and lines[-1]["duration"] == 12.0
    assert "".join(e["delta"] for e in lines[:-1]) == "".join(e["delta"] for e in events[:-1])


def test_transcribe_live_in_python_holds_only_the_audio_it_still_needs(server, audio):
    from speechssl.live import LivePreviews

    model = server.app.state.model
    events = list(model.transcribe_live(audio[start:start + 800] for start in range(0, len(audio), 800)))
    assert events[-1]["text"] == model.transcribe(audio, sample_rate=16000).text
    previews, held = LivePreviews(model), []
    for start in range(0, len(audio), 800):
        for window, piece in previews.push(audio[start:start + 800]):
            previews.feed(window, model.emission_pieces([piece])[0])
        held.append(len(previews.audio))
    assert max(held) <= 16000 * 4.1  # a core and its context either side, plus one chunk, of 12 s sent
