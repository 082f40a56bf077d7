"""The HTTP service on a real uvicorn server over loopback."""

import asyncio
import io
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from server.main import GracefulServer, uvicorn_config
from server.settings import Settings
from speechssl.config import tiny
from tests.conftest import require_fsdd


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, settings: Settings):
        self.port = free_port()
        settings = settings.model_copy(update={"host": "127.0.0.1", "port": self.port, "log_level": "warning"})
        self.app = create_app(settings)
        self.server = GracefulServer(uvicorn_config(self.app, settings))  # the limits `speechssl serve` sets
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return str(tiny_checkpoint)


@pytest.fixture(scope="module")
def server(checkpoint):
    # fp32: these tests compare the server with the Python API's fp32 (serve's auto is bf16 on a
    # CPU with native bf16: test_serve_auto_precision_is_bf16_where_the_cpu_has_it).
    settings = Settings(checkpoint=checkpoint, device="cpu", max_upload_bytes=2_000_000, max_audio_seconds=20,
                        max_wait_ms=30, api_key="sekret", precision="fp32")
    with LiveServer(settings) as live:
        yield live


AUTH = {"Authorization": "Bearer sekret"}


def wav_bytes(wave: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


@pytest.fixture(scope="module")
def speech() -> bytes:
    return sorted(require_fsdd().glob("*.wav"))[0].read_bytes()


def test_health_ready_models_docs(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready").json() == {"status": "ready"}
    models = httpx.get(server.url + "/v1/models", headers=AUTH).json()
    assert models["data"][0]["hidden_size"] == tiny().hidden_size
    assert httpx.get(server.url + "/docs").status_code == 200
    assert "/v1/embeddings" in httpx.get(server.url + "/openapi.json").json()["paths"]


def test_embeddings_mean_frames_and_layer(server, speech):
    files = {"file": ("a.wav", speech, "audio/wav")}
    mean = httpx.post(server.url + "/v1/embeddings", files=files, headers=AUTH).json()
    assert mean["object"] == "list" and len(mean["data"][0]["embedding"]) == tiny().hidden_size
    frames = httpx.post(server.url + "/v1/embeddings", files=files, data={"pooling": "none", "layer": "1"},
                        headers=AUTH).json()
    matrix = np.array(frames["data"][0]["embedding"])
    assert matrix.shape == (frames["frames"], tiny().hidden_size) and frames["layer"] == 1
    unit = httpx.post(server.url + "/v1/embeddings", files=files, data={"normalize": "true"}, headers=AUTH).json()
    assert np.linalg.norm(unit["data"][0]["embedding"]) == pytest.approx(1.0, abs=1e-4)


def test_several_files_in_one_embeddings_request(server):
    """OpenAI's shape: data[i] per file part, in order, each equal to that file alone; base64
    is the float32 bytes of the same vector; usage counts the frames. The files share the
    request's audio limit (20 s here) and at most max_files may come."""
    import base64

    clips = [p.read_bytes() for p in sorted(require_fsdd().glob("*.wav"))[:3]]
    files = [("file", (f"{i}.wav", c, "audio/wav")) for i, c in enumerate(clips)]
    many = httpx.post(server.url + "/v1/embeddings", files=files, headers=AUTH).json()
    packed = httpx.post(server.url + "/v1/embeddings", files=files, data={"encoding_format": "base64"},
                        headers=AUTH).json()
    assert [d["index"] for d in many["data"]] == [0, 1, 2]
    for clip, item, b64 in zip(clips, many["data"], packed["data"]):
        alone = httpx.post(server.url + "/v1/embeddings", files={"file": ("a.wav", clip, "audio/wav")},
                           headers=AUTH).json()["data"][0]
        assert np.allclose(item["embedding"], alone["embedding"], atol=1e-4) and item["frames"] == alone["frames"]
        decoded = np.frombuffer(base64.b64decode(b64["embedding"]), dtype="<f4")
        assert np.allclose(decoded, item["embedding"], atol=1e-6)
    assert many["frames"] == many["usage"]["prompt_tokens"] == sum(d["frames"] for d in many["data"])
    long = wav_bytes(np.zeros(16000 * 8, np.float32) + 0.01, 16000)
    too_long = httpx.post(server.url + "/v1/embeddings", headers=AUTH,
                          files=[("file", (f"{i}.wav", long, "audio/wav")) for i in range(3)])
    assert too_long.status_code == 413, too_long.text  # 24 s in all, against 20
    tiny_clip = wav_bytes(np.zeros(1600, np.float32) + 0.01, 16000)
    too_many = httpx.post(server.url + "/v1/embeddings", headers=AUTH,
                          files=[("file", (f"{i}.wav", tiny_clip, "audio/wav")) for i in range(17)])
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_files"


def test_concurrent_requests_are_batched(server, speech):
    async def many():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as client:
            return await asyncio.gather(*[
                client.post("/v1/embeddings", files={"file": ("a.wav", speech, "audio/wav")}) for _ in range(64)])

    responses = asyncio.run(many())
    assert [r.status_code for r in responses] == [200] * 64
    first = responses[0].json()["data"][0]["embedding"]
    for r in responses[1:]:
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], first, atol=1e-5)
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    sizes = families["speechssl_batch_size"]
    count = next(s.value for s in sizes.samples if s.name.endswith("_count"))
    total = next(s.value for s in sizes.samples if s.name.endswith("_sum"))
    assert total / count > 1.0, "no batch held more than one request"


@pytest.mark.parametrize("name, content, extra, status, message", [
    ("corrupt", b"RIFF\x00\x00garbage" * 50, {}, 415, "could not decode audio"),
    ("empty", b"", {}, 415, "audio is empty"),
    ("one sample", wav_bytes(np.zeros(1, np.float32), 16000), {}, 400, "too short"),
    ("nan", wav_bytes(np.full(16000, np.nan, np.float32), 16000, "FLOAT"), {}, 400, "NaN"),
    ("too long", wav_bytes(np.zeros(16000 * 25, np.float32), 16000), {}, 413, "too long"),
    ("over-size", b"\x00" * 2_100_000, {}, 413, "exceeds the limit"),
    ("bad layer", None, {"layer": "99"}, 400, "layer must be between"),
    ("bad pooling", None, {"pooling": "max"}, 422, "pooling"),
])
def test_bad_input_gets_4xx_json_and_server_survives(server, speech, name, content, extra, status, message):
    files = {"file": ("x.wav", speech if content is None else content, "audio/wav")}
    response = httpx.post(server.url + "/v1/embeddings", files=files, data=extra, headers=AUTH)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize("wave, rate, subtype", [
    (np.sin(np.linspace(0, 2000, 48000 * 2)).reshape(-1, 2).astype(np.float32) * 0.3, 48000, "PCM_16"),
    (np.sin(np.linspace(0, 800, 8000)).astype(np.float32) * 0.3, 8000, "PCM_U8"),
    (np.sin(np.linspace(0, 800, 8000)).astype(np.float32) * 0.3, 8000, "PCM_16"),
])
def test_odd_but_valid_formats_are_accepted(server, wave, rate, subtype):
    files = {"file": ("odd.wav", wav_bytes(wave, rate, subtype), "audio/wav")}
    assert httpx.post(server.url + "/v1/embeddings", files=files, headers=AUTH).status_code == 200


def test_auth_missing_field_and_content_type(server, speech):
    no_key = httpx.post(server.url + "/v1/embeddings", files={"file": ("a.wav", speech)})
    wrong = httpx.post(server.url + "/v1/embeddings", files={"file": ("a.wav", speech)}, headers={"Authorization": "Bearer no"})
    assert no_key.status_code == wrong.status_code == 401 and "API key" in no_key.json()["error"]["message"]
    missing = httpx.post(server.url + "/v1/embeddings", data={"pooling": "mean"}, headers=AUTH)
    assert missing.status_code == 422 and "file" in missing.json()["error"]["message"]
    as_json = httpx.post(server.url + "/v1/embeddings", json={"file": "a.wav"}, headers=AUTH)
    assert as_json.status_code == 422
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize("route, files, head", [
    ("/v1/audio/transcriptions", ["file"], "CTC"),
    ("/v1/speakers/embed", ["file"], "speaker"),
    ("/v1/speakers/verify", ["file_a", "file_b"], "speaker"),
])
def test_route_whose_head_is_missing_says_so(server, speech, route, files, head):
    response = httpx.post(server.url + route, files={name: ("a.wav", speech, "audio/wav") for name in files}, headers=AUTH)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "head_missing" and head in error["message"] and "it holds: embeddings" in error["message"]
    assert httpx.get(server.url + "/v1/models", headers=AUTH).json()["data"][0]["heads"] == ["embeddings"]


def test_int8_server_stays_close_to_fp32(server, checkpoint, speech):
    """SPEECHSSL_QUANTIZE=int8 (`serve --int8`): a real server with int8 matmul weights answers
    what the fp32 one does, up to quantization; an unknown mode is refused at start."""
    files = {"file": ("a.wav", speech, "audio/wav")}
    fp32 = np.array(httpx.post(server.url + "/v1/embeddings", files=files, headers=AUTH).json()["data"][0]["embedding"])
    with LiveServer(Settings(checkpoint=checkpoint, device="cpu", quantize="int8")) as live:
        int8 = np.array(httpx.post(live.url + "/v1/embeddings", files=files).json()["data"][0]["embedding"])
    cosine = fp32 @ int8 / (np.linalg.norm(fp32) * np.linalg.norm(int8))
    assert cosine > 0.98 and not np.allclose(fp32, int8)
    with pytest.raises(ValueError, match="quantize"):
        Settings(quantize="int4")


def test_max_padding_setting_reaches_the_model_and_changes_no_answer(server, checkpoint, speech):
    """SPEECHSSL_MAX_PADDING: the served model splits batches at the model's CPU default (0.1)
    unless told otherwise; inf lifts the bound. Either way a request gets the same embedding."""
    files = {"file": ("a.wav", speech, "audio/wav")}
    bounded = np.array(httpx.post(server.url + "/v1/embeddings", files=files, headers=AUTH).json()["data"][0]["embedding"])
    assert server.app.state.model.max_padding == 0.1
    with LiveServer(Settings(checkpoint=checkpoint, device="cpu", precision="fp32", max_padding=float("inf"))) as live:
        assert live.app.state.model.max_padding is None
        unbounded = np.array(httpx.post(live.url + "/v1/embeddings", files=files).json()["data"][0]["embedding"])
    np.testing.assert_allclose(bounded, unbounded, atol=1e-5)
    with pytest.raises(ValueError, match="max_padding"):
        Settings(max_padding=-0.5)


def test_serve_auto_precision_is_bf16_where_the_cpu_has_it(monkeypatch):
    """`serve`'s default (precision auto): bf16 on a CPU with native bf16; on one without, auto
    stays auto (SpeechModel computes fp32 on a CPU); an explicit setting is kept either way."""
    import speechssl.device
    from server.app import serving_precision

    for native in (True, False):
        monkeypatch.setattr(speechssl.device, "native_bf16", lambda: native)
        assert serving_precision(Settings(device="cpu")) == ("bf16" if native else "auto")  # auto: fp32 on a CPU
        assert serving_precision(Settings(device="cpu", precision="fp32")) == "fp32"
        assert serving_precision(Settings(device="cpu", precision="bf16")) == "bf16"


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    from speechssl.device import native_bf16

    cpuinfo = tmp_path / "cpuinfo"
    for flags, expected in (("fpu sse2 avx512f avx512_bf16 avx512_vnni", True), ("fpu sse2 amx_bf16", True),
                            ("fpu sse2 avx2 avx512f", False)):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert native_bf16(str(cpuinfo)) is expected
    assert native_bf16(str(tmp_path / "missing")) is False


def test_bf16_server_stays_close_to_fp32_and_says_what_it_computes(server, checkpoint, speech):
    """SPEECHSSL_PRECISION=bf16 (`serve --precision bf16`): bfloat16 autocast on the CPU."""
    files = {"file": ("a.wav", speech, "audio/wav")}
    fp32 = np.array(httpx.post(server.url + "/v1/embeddings", files=files, headers=AUTH).json()["data"][0]["embedding"])
    assert httpx.get(server.url + "/v1/models", headers=AUTH).json()["data"][0]["precision"] == "fp32"
    with LiveServer(Settings(checkpoint=checkpoint, device="cpu", precision="bf16")) as live:
        bf16 = np.array(httpx.post(live.url + "/v1/embeddings", files=files).json()["data"][0]["embedding"])
        card = httpx.get(live.url + "/v1/models").json()["data"][0]
    assert card["precision"] == "bf16" and card["quantize"] is None
    cosine = fp32 @ bf16 / (np.linalg.norm(fp32) * np.linalg.norm(bf16))
    assert cosine > 0.99 and not np.allclose(fp32, bf16)
    with pytest.raises(ValueError, match="precision"):
        Settings(precision="fp16")
