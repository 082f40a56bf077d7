"""Server settings from SPEECHSSL_* environment variables (and `speechssl serve` flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPEECHSSL_", extra="ignore")

    checkpoint: str | None = Field(None, description="checkpoint to serve; None serves the shipped default model")
    device: str = Field("auto", description="auto (GPU when available), cpu, cuda, cuda:N")
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = Field(None, description="when set, requests need 'Authorization: Bearer <key>'")
    max_upload_bytes: int = Field(25 * 1024 * 1024, gt=0)
    max_audio_seconds: float = Field(600.0, gt=0, description="audio per request, all its files together")
    max_files: int = Field(16, ge=1, description="file parts per /v1/embeddings request (they share the upload and audio limits)")
    max_batch_seconds: float | None = Field(None, gt=0, description="padded audio seconds per device batch; "
                                            "default 120 on a GPU, 32 on a CPU (where big padded batches run slower "
                                            "than small ones: docs/benchmarks-serving.md)")
    max_batch_items: int = Field(64, ge=1, description="1 disables batching")
    max_padding: float | None = Field(None, ge=0, description="a device batch is split where its padding would pass "
                                      "this fraction of its audio; default: the model's (0.1 on a CPU, where padding "
                                      "costs as much as audio; none on a GPU); inf disables")
    max_wait_ms: float = Field(10.0, ge=0, description="how long the first request of a batch waits for company")
    max_queue: int = Field(256, ge=1, description="queued requests before 503 + Retry-After")
    request_timeout_s: float | None = Field(None, gt=0, description="per-request deadline in the queue and on "
                                            "the device, then 504; default 120 on a CPU, 60 on a GPU")
    keep_alive_s: float = Field(5.0, gt=0, description="idle connections (before or between requests) close after this")
    header_timeout_s: float = Field(10.0, gt=0, description="a request's headers must arrive within this")
    body_timeout_s: float = Field(15.0, gt=0, description="longest pause allowed while a request body streams, then 408")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="request line + headers (h11_max_incomplete_event_size)")
    max_connections: int = Field(1000, ge=1, description="open connections; more are closed on arrival "
                                 "(also uvicorn's limit_concurrency); capped below the process's file limit")
    max_active_requests: int = Field(64, ge=1, description="requests being uploaded or computed at once "
                                     "(health, ready and metrics aside) before 503 + Retry-After")
    max_live_sessions: int = Field(16, ge=1, description="open WebSocket live-transcription sessions at once")
    max_message_bytes: int = Field(1024 * 1024, ge=1024, description="largest WebSocket message (live audio comes in many)")
    backlog: int = Field(512, ge=1, description="listen backlog: connections the kernel holds before accept")
    shutdown_grace_s: float = Field(30.0, gt=0, description="on SIGTERM, work still running after this "
                                    "(less a margin) is refused with 503 so every client gets JSON")
    threads: int | None = Field(None, description="torch intra-op threads")
    model_workers: int | None = Field(None, ge=1, description="batches computed side by side, each in its own "
                                      "thread with an equal share of the torch threads; default 2 on a CPU with "
                                      "2 or more threads, 1 on a GPU (docs/benchmarks-serving.md)")
    quantize: Literal["int8"] | None = Field(None, description="int8: int8 weights for the encoder's matmuls "
                                             "(CPU only; faster, CER +0.05 points on the shipped model's test split: docs/benchmarks.md)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16: bfloat16 autocast (a GPU, or a CPU with native bf16: avx512_bf16/AMX); "
                            "auto: bf16 on a GPU and on a CPU with native bf16, else fp32")
    log_level: str = "info"

    def deadline_seconds(self, device_type: str) -> float:
        return self.request_timeout_s or (60.0 if device_type == "cuda" else 120.0)

    def model_threads(self, device_type: str, threads: int) -> tuple[int, int]:
        """(model workers, torch threads each) out of ``threads`` torch threads."""
        workers = self.model_workers or (2 if device_type == "cpu" and threads >= 2 else 1)
        return workers, max(1, threads // workers)

    def batch_seconds(self, device_type: str) -> float:
        return self.max_batch_seconds or (120.0 if device_type == "cuda" else 32.0)
