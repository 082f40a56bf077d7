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
    max_audio_seconds: float = Field(600.0, gt=0)
    max_batch_seconds: float | None = Field(None, gt=0, description="padded audio seconds per device batch; "
                                            "default 120 on a GPU, 32 on a CPU (where big padded batches run slower "
                                            "than small ones: docs/benchmarks-serving.md)")
    max_batch_items: int = Field(64, ge=1, description="1 disables batching")
    max_wait_ms: float = Field(10.0, ge=0, description="how long the first request of a batch waits for company")
    max_queue: int = Field(256, ge=1, description="queued requests before 503 + Retry-After")
    threads: int | None = Field(None, description="torch intra-op threads")
    quantize: Literal["int8"] | None = Field(None, description="int8: int8 weights for the encoder's matmuls "
                                             "(CPU only; faster, CER +0.05 points on the shipped model's test split: docs/benchmarks.md)")
    log_level: str = "info"

    def batch_seconds(self, device_type: str) -> float:
        return self.max_batch_seconds or (120.0 if device_type == "cuda" else 32.0)
