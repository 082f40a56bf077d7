"""Issue 16: the service under abuse, each finding against a real uvicorn on loopback."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from server.settings import Settings
from tests.test_server import LiveServer, wav_bytes
from tests.test_server_heads import build_heads_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
EMBED, TRANSCRIBE = "/v1/embeddings", "/v1/audio/transcriptions"


def raw_wav(rate: int, samples: int = 600, channels: int = 1, fmt: int = 1, bits: int = 16,
            data: bytes | None = None) -> bytes:
    """A wav whose header says whatever the attacker likes (soundfile would refuse to write it)."""
    data = data if data is not None else bytes(samples * channels * bits // 8)
    block = channels * bits // 8
    fmt_chunk = struct.pack("<IHHIIHH", 16, fmt, channels, rate, rate * block, block, bits)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + fmt_chunk + b"data" + struct.pack("<I", len(data)) + data


def speech_seconds(seconds: float) -> bytes:
    """Real speech (the fixture clip) repeated to ``seconds``, as 16-bit wav bytes."""
    clip, _ = sf.read(FIXTURES / "speech.wav", dtype="float32")
    return wav_bytes(np.resize(clip, int(seconds * 16000)), 16000)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def heads_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    return build_heads_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("abuse") / "heads.safetensors", speaker=True)


@pytest.fixture(scope="module")
def server(heads_checkpoint):
    settings = Settings(checkpoint=str(heads_checkpoint), device="cpu", max_upload_bytes=12_000_000,
                        max_wait_ms=5, keep_alive_s=1.0, header_timeout_s=2.0, body_timeout_s=2.0,
                        max_connections=1500, threads=1)
    with LiveServer(settings) as live:
        yield live


def post(url: str, route: str, audio: bytes, timeout: float = 60, **data) -> httpx.Response:
    return httpx.post(url + route, files={"file": ("a.wav", audio, "audio/wav")}, data=data, timeout=timeout)


# --- 1 and 8: cost bounded by the decoded audio; inputs that gave a 500 or a wrong 200 ------------

SLOW_S = 1.0  # seconds: what 'answered at once' may take on a busy 2-core machine


def test_1hz_upload_is_refused_fast_and_200_of_them_leave_memory_and_health_alone(server):
    bomb = raw_wav(1, samples=600)  # 1,244 bytes declaring 600 s at 1 Hz
    assert len(bomb) < 1300
    times = []
    with httpx.Client(base_url=server.url) as client:
        for _ in range(5):
            started = time.monotonic()
            reply = client.post(EMBED, files={"file": ("a.wav", bomb)})
            times.append(time.monotonic() - started)
            assert reply.status_code == 400 and "sample rate 1 Hz" in reply.json()["error"]["message"]
    # Bounds far above the quiet figures (a few ms) so a loaded machine passes, far below the
    # failure they guard against (96 s of CPU per upload, a server that stopped answering).
    assert sorted(times)[2] < SLOW_S, times
    before = rss_mb()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: post(server.url, EMBED, bomb).status_code, range(200)))
    assert statuses == [400] * 200
    assert rss_mb() - before < 200
    assert server.app.state.batcher.depth == 0
    started = time.monotonic()
    assert httpx.get(server.url + "/health").status_code == 200
    assert time.monotonic() - started < SLOW_S


@pytest.mark.parametrize("audio, message", [
    (raw_wav(0), "sample rate 0 Hz"),
    (raw_wav(16000, samples=100, channels=40), "40 channels"),
    (raw_wav(16000, fmt=3, bits=32, data=np.full(16000, 1e38, "<f4").tobytes()), "samples reach 1e+38"),
    (raw_wav(16000, fmt=3, bits=32, data=np.full(16000, 3e4, "<f4").tobytes()), "full scale 1.0"),
])
def test_bad_headers_and_extreme_samples_get_400_and_the_connection_lives(server, audio, message):
    with httpx.Client(base_url=server.url) as client:  # one keep-alive connection for both requests
        reply = client.post(EMBED, files={"file": ("a.wav", audio)})
        assert reply.status_code == 400, reply.text
        assert message in reply.json()["error"]["message"]
        good = client.post(EMBED, files={"file": ("a.wav", speech_seconds(1))})
        assert good.status_code == 200 and np.isfinite(good.json()["data"][0]["embedding"]).all()


# --- 2, 3: abandoned work is dropped; short requests pass long ones ----------------------------

def chunk_time(url: str) -> float:
    """Seconds of one 30 s chunk (the longest piece) through the embeddings route, best of 2."""
    audio = speech_seconds(30)
    times = []
    for _ in range(2):
        started = time.monotonic()
        assert post(url, EMBED, audio).status_code == 200
        times.append(time.monotonic() - started)
    return min(times)


def test_a_short_request_during_a_300s_embedding_waits_about_one_chunk(server):
    chunk = chunk_time(server.url)
    long = threading.Thread(target=lambda: post(server.url, EMBED, speech_seconds(300), timeout=120))
    long.start()
    # Under way: admitted (its upload and decoding take longer than a chunk on a fast path), then
    # one chunk in. A fixed sleep outlasted the whole job once bf16 made the chunks fast.
    deadline = time.monotonic() + 60
    while server.app.state.batcher.depth == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(chunk)
    waits = {}
    for route in (EMBED, TRANSCRIBE):
        started = time.monotonic()
        assert post(server.url, route, speech_seconds(1)).status_code == 200
        waits[route] = time.monotonic() - started
    assert server.app.state.batcher.depth == 1, "the long job should still be running"
    long.join(120)
    for route, wait in waits.items():
        assert wait < 2 * chunk + 0.5, (route, wait, chunk)


def test_abandoned_jobs_stop_within_a_chunk(server):
    chunk = chunk_time(server.url)
    audio = speech_seconds(300)

    def give_up():
        with pytest.raises(httpx.ReadTimeout):
            post(server.url, EMBED, audio, timeout=max(1.0, 2 * chunk))

    threads = [threading.Thread(target=give_up) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    time.sleep(chunk + 0.5)  # the piece running when the clients left, and the poll
    batches = metric(server.url, "speechssl_batch_size_count")
    assert server.app.state.batcher.depth == 0
    time.sleep(max(1.0, 2 * chunk))
    assert metric(server.url, "speechssl_batch_size_count") == batches  # no more device work for them
    started = time.monotonic()
    assert post(server.url, EMBED, speech_seconds(1)).status_code == 200
    assert time.monotonic() - started < chunk + 0.5


def test_deadline_gives_504_json(heads_checkpoint):
    settings = Settings(checkpoint=str(heads_checkpoint), device="cpu", request_timeout_s=0.3, threads=1,
                        max_upload_bytes=12_000_000)
    with LiveServer(settings) as live:
        reply = post(live.url, EMBED, speech_seconds(300))
        assert reply.status_code == 504 and reply.json()["error"]["code"] == "deadline_exceeded"
        assert live.app.state.batcher.depth == 0
        assert post(live.url, EMBED, speech_seconds(1)).status_code == 200


# --- 4: long embeddings in chunks ---------------------------------------------------------------

def test_long_embeddings_are_stitched_from_chunks_and_match_the_api(server):
    model = server.app.state.model
    wave = sf.read(io.BytesIO(speech_seconds(70)), dtype="float32")[0]
    frames = model.embed(wave, sample_rate=16000, pooling="none")
    plan = model.windows(len(wave))
    assert len(plan) > 1 and frames.shape[0] == sum(w.keep for w in plan)
    # each core is its window's own output: the documented stitching
    second = plan[1]
    alone = model.encode_pieces([wave[second.start : second.end]])[0]
    offset = plan[0].keep
    np.testing.assert_allclose(frames[offset : offset + second.keep], alone[second.keep_from : second.keep_from + second.keep])
    np.testing.assert_allclose(model.embed(wave, sample_rate=16000), frames.mean(0), rtol=1e-5, atol=1e-6)
    # audio that fits one chunk: encoded whole, exactly as before chunking
    short = wave[: 16000 * 20]
    np.testing.assert_array_equal(model.embed(short, sample_rate=16000, pooling="none"), model.encode_pieces([short])[0])
    served = post(server.url, EMBED, speech_seconds(70), pooling="none").json()
    assert served["frames"] == frames.shape[0]
    np.testing.assert_allclose(np.array(served["data"][0]["embedding"]), frames, rtol=1e-4, atol=1e-4)


# --- 5, 6: the body counted while it streams; connection and header timeouts --------------------

@pytest.fixture(scope="module")
def small_server(tiny_checkpoint):
    settings = Settings(checkpoint=str(tiny_checkpoint), device="cpu", max_upload_bytes=1_000_000,
                        body_timeout_s=1.0, header_timeout_s=1.0, keep_alive_s=1.0, max_connections=20, threads=1)
    with LiveServer(settings) as live:
        yield live


def test_chunked_upload_without_length_is_cut_at_the_limit(small_server):
    before = metric(small_server.url, "speechssl_request_body_bytes_total")
    sent = 0

    def body():
        nonlocal sent
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"
        for _ in range(1500):  # 1.5 GB offered
            sent += 1 << 20
            yield bytes(1 << 20)

    with _maybe_reset():
        reply = httpx.post(small_server.url + EMBED, content=body(), timeout=30,
                           headers={"content-type": "multipart/form-data; boundary=x"})
        assert reply.status_code == 413 and reply.json()["error"]["code"] == "upload_too_large"
    received = metric(small_server.url, "speechssl_request_body_bytes_total") - before
    assert received <= 1_000_000 + 64 * 1024 + 65536 + (1 << 20), received  # the limit plus one buffer
    assert sent < 64 << 20, sent  # the client was stopped, not drained of 1.5 GB


class _maybe_reset:
    """The server may close while the client is still writing: a reset is a cut-off too."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError))


def test_stalled_body_gets_408(small_server):
    with socket.create_connection(("127.0.0.1", small_server.port)) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                     b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n")
        sock.settimeout(10)
        reply = b""
        while chunk := sock.recv(4096):  # until the server closes
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b"stalled" in reply


def test_idle_and_half_sent_connections_are_closed(server):
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(1000)]
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    try:
        deadline = time.monotonic() + 15
        for sock in socks + [slow]:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            assert sock.recv(1) == b""  # closed by the server, not by us
    finally:
        for sock in socks + [slow]:
            sock.close()
    started = time.monotonic()
    assert httpx.get(server.url + "/health").status_code == 200
    assert time.monotonic() - started < SLOW_S


def test_connections_past_the_cap_are_closed_on_arrival(small_server):
    socks = [socket.create_connection(("127.0.0.1", small_server.port)) for _ in range(30)]
    try:
        time.sleep(0.3)
        closed = 0
        for sock in socks:
            sock.settimeout(0.05)
            try:
                closed += sock.recv(1) == b""
            except (TimeoutError, socket.timeout):
                pass
        assert closed >= 10
    finally:
        for sock in socks:
            sock.close()
    time.sleep(1.5)
    assert httpx.get(small_server.url + "/health").status_code == 200


def test_a_flood_of_one_log_message_is_rate_limited():
    import logging

    from server.logs import RateLimit

    limit, passed = RateLimit(burst=5, window_s=60), 0
    for _ in range(10_000):
        record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource", None, None)
        passed += limit.filter(record)
    assert passed == 5


# --- 7: shutdown -------------------------------------------------------------------------------

def test_shutdown_answers_queued_work_with_json_503(heads_checkpoint):
    settings = Settings(checkpoint=str(heads_checkpoint), device="cpu", shutdown_grace_s=4.0, threads=1,
                        max_upload_bytes=12_000_000, max_batch_items=1)
    live = LiveServer(settings).__enter__()
    audio, replies = speech_seconds(300), []

    def call():
        try:
            replies.append(post(live.url, EMBED, audio, timeout=30))
        except httpx.TransportError as exc:
            replies.append(exc)

    threads = [threading.Thread(target=call) for _ in range(13)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while live.app.state.batcher.depth < 13 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Round robin may have started several jobs (a piece each): those get the grace period.
    # The ones not started when shutdown reaches the batcher must be refused, not computed.
    batcher, waiting = live.app.state.batcher, []
    close = batcher.close

    def counting_close(grace_s):
        waiting.append(sum(not job.started for job in batcher.jobs))
        close(grace_s)

    batcher.close = counting_close
    started = time.monotonic()
    live.__exit__(None, None, None)
    for t in threads:
        t.join(30)
    assert time.monotonic() - started < 4.0 + 2
    assert len(replies) == 13
    for reply in replies:
        assert isinstance(reply, httpx.Response), reply
        assert reply.status_code in (200, 503), reply.text
        assert reply.headers["content-type"] == "application/json"
    assert waiting and waiting[0] >= 6
    assert sum(r.status_code == 503 for r in replies) >= waiting[0]


# --- 8, 9: checkpoints, the API key, the docs ---------------------------------------------------

def test_redoc_is_open_like_docs_and_a_wrong_key_of_any_length_is_401(tiny_checkpoint):
    with LiveServer(Settings(checkpoint=str(tiny_checkpoint), device="cpu", api_key="sekret", threads=1)) as live:
        assert httpx.get(live.url + "/docs").status_code == 200
        assert httpx.get(live.url + "/redoc").status_code == 200
        for key in ("Bearer x", "Bearer sekret-and-more", "Bearer sekre\u00e9t".encode(), ""):
            reply = httpx.post(live.url + EMBED, headers={"Authorization": key}, files={"file": ("a.wav", b"x")})
            assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"


def rewrite(source: Path, out: Path, header: dict | None = None, nan_weight: bool = False) -> Path:
    """``source`` with its safetensors header fields replaced: the checkpoints item 8 names."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), framework="pt") as f:
        meta = {**f.metadata(), **(header or {})}
    tensors = load_file(str(source))
    if nan_weight:
        name = sorted(tensors)[0]
        tensors[name] = tensors[name].clone().fill_(float("nan"))
    save_file(tensors, str(out), metadata=meta)
    return out


@pytest.mark.parametrize("header, nan, message", [
    ({"metadata": '{"speaker_threshold": "high"}'}, False, "speaker_threshold must be a finite number, got 'high'"),
    ({"metadata": '{"speaker_threshold": NaN}'}, False, "speaker_threshold must be a finite number"),
    ({"metadata": "[1, 2]"}, False, "metadata must be a JSON object, got list"),
    ({"format_version": "abc"}, False, "format_version 'abc' is not a whole number"),
    ({"model_config": "[]"}, False, "bad model config in metadata: expected a JSON object"),
    (None, True, "holds NaN or infinite values"),
])
def test_bad_checkpoints_fail_to_load_in_one_line(tiny_checkpoint, tmp_path, header, nan, message):
    import speechssl
    from speechssl.checkpoint import CheckpointError

    bad = rewrite(tiny_checkpoint, tmp_path / "bad.safetensors", header, nan)
    with pytest.raises(CheckpointError, match=message) as info:
        speechssl.load(str(bad), device="cpu")
    assert "\n" not in str(info.value)


def test_serve_with_a_bad_checkpoint_prints_one_line(tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    bad = rewrite(tiny_checkpoint, tmp_path / "bad.safetensors", {"format_version": "abc"})
    done = subprocess.run([sys.executable, "-m", "speechssl.cli", "serve", "--checkpoint", str(bad), "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"speechssl: error: {bad}: format_version 'abc' is not a whole number"]


def test_pickled_resume_file_empty_manifest_and_stale_temps(tmp_path):
    import pickle

    import torch

    from speechssl.checkpoint import CheckpointError, remove_stale_temps
    from speechssl.data.manifest import ManifestError
    from speechssl.train.batches import BatchStream
    from speechssl.train.loop import load_resume
    from speechssl.train.settings import DataConfig

    resume = tmp_path / "resume.pt"
    torch.save({"model": {}, "step": 1, "trap": pickle.PickleError("not a tensor")}, resume)
    with pytest.raises(CheckpointError, match="pickled objects beyond tensors") as info:
        load_resume(resume, torch.nn.Linear(1, 1), torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1), None)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
    with pytest.raises(ManifestError, match="no utterances"):
        BatchStream([], DataConfig(), seed=0, rank=0, world=1)
    (tmp_path / ".checkpoint.safetensors.abc123.tmp").write_bytes(b"half")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".checkpoint.safetensors.abc123.tmp"]
    assert resume.exists()


@pytest.mark.slow
def test_soak_has_no_5xx_and_loses_nothing(tmp_path):
    """benchmarks/soak.py for one minute (the full 16 x 10 min soak is run by hand: docs/abuse.md)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "soak.json"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "benchmarks" / "soak.py"), "--clients", "4", "--minutes", "1",
                    "--out", str(out)], check=True, timeout=600, capture_output=True)
    result = json.loads(out.read_text())
    assert result["5xx"] == 0 and result["lost"] == 0
    assert result["rss_mb_end"] - result["rss_mb_after_warmup"] < 300


@pytest.mark.parametrize("env, flag, message", [({"SPEECHSSL_WORKERS": "two"}, [], "SPEECHSSL_WORKERS must be a whole number >= 1, got 'two'"),
                                                ({}, ["--workers", "0"], "workers must be >= 1, got 0")])
def test_serve_refuses_a_bad_worker_count_in_one_line(env, flag, message):
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "speechssl.cli", "serve", "--port", "0", *flag],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"speechssl: error: {message}"]


def test_serve_with_two_worker_processes_answers_and_keeps_its_limits(tiny_checkpoint):
    """`serve --workers 2`: uvicorn starts each worker by pickling its config, protocol class
    included; the workers answer, and a connection that never sends its headers is closed
    after SPEECHSSL_HEADER_TIMEOUT_S, as in one process."""
    import os
    import subprocess
    import sys

    from tests.test_server import free_port

    port = free_port()
    env = {**os.environ, "SPEECHSSL_CHECKPOINT": str(tiny_checkpoint), "SPEECHSSL_DEVICE": "cpu",
           "SPEECHSSL_HEADER_TIMEOUT_S": "1", "SPEECHSSL_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "speechssl.cli", "serve", "--port", str(port), "--workers", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the workers never became ready"
            try:
                if httpx.get(url + "/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        for _ in range(4):  # new connections each: both workers take some
            reply = httpx.post(url + EMBED, files={"file": ("a.wav", speech_seconds(1.0), "audio/wav")},
                               timeout=60)
            assert reply.status_code == 200, reply.text
        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.settimeout(10)
            started = time.monotonic()
            assert idle.recv(1024) == b""  # closed by the server, not by our 10 s timeout
            assert time.monotonic() - started < 5
    finally:
        proc.terminate()
        proc.wait(timeout=30)
