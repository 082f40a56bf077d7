"""Run the app under uvicorn; flags override SPEECHSSL_* environment variables."""

from __future__ import annotations

import os

import uvicorn

from server.app import create_app
from server.settings import Settings


def app_from_env():
    """Factory for uvicorn workers (each process builds its own app from the environment)."""
    return create_app(Settings())


def serve(flags: dict, workers: int = 1) -> None:
    for key, value in flags.items():  # workers are new processes: hand settings over through the environment
        os.environ[f"SPEECHSSL_{key.upper()}"] = str(value)
    settings = Settings()
    if settings.checkpoint is None:
        import speechssl

        speechssl.load(None)  # fails early, with its message, when no default model ships
    uvicorn.run("server.main:app_from_env", factory=True, host=settings.host, port=settings.port,
                workers=workers, log_level=settings.log_level, timeout_graceful_shutdown=30)
