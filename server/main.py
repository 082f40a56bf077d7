"""Run the app under uvicorn; flags override SPEECHSSL_* environment variables.

Every connection limit is set here, deliberately (``uvicorn_config``), and shutdown is
graceful in the sense clients see: queued work is refused with a JSON 503 at once and
running work that cannot finish in the grace period is refused before uvicorn's own
timeout would cancel it into a text/plain 500.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys

import uvicorn

from server.app import create_app
from server.protocol import LimitedH11Protocol
from server.settings import Settings

log = logging.getLogger("speechssl.server")
FD_RESERVE = 64  # descriptors kept for the model, logs, temp files and the listening socket


def app_from_env():
    """Factory for uvicorn workers (each process builds its own app from the environment)."""
    return create_app(Settings())


class WorkerProtocol(LimitedH11Protocol):
    """The protocol of `serve --workers N`. uvicorn pickles the protocol class by name into
    each worker process, so it must live at module level (a class made per call cannot be
    found there), and each worker's app factory sets its limits from the environment."""


def worker_app_from_env():
    """Factory for `serve --workers N`: this process's connection limits, then its app."""
    settings = Settings()
    WorkerProtocol.header_timeout_s = settings.header_timeout_s
    WorkerProtocol.max_connections = connection_cap(settings)
    return create_app(settings)


def connection_cap(settings: Settings) -> int:
    """``max_connections``, after raising the soft descriptor limit to the hard one, and kept under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return max(1, min(settings.max_connections, soft - FD_RESERVE) if soft != resource.RLIM_INFINITY
               else settings.max_connections)


def uvicorn_config(app, settings: Settings, **kwargs) -> uvicorn.Config:
    cap = connection_cap(settings)
    protocol = type("Protocol", (LimitedH11Protocol,), {"header_timeout_s": settings.header_timeout_s,
                                                         "max_connections": cap})
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        loop="asyncio",  # its accept loop backs off 1 s when out of descriptors
        http=protocol, timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=cap + 1,  # a backstop: the protocol already closes connections past the cap
        h11_max_incomplete_event_size=settings.max_header_bytes, backlog=settings.backlog,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        ws="websockets-sansio", ws_max_size=settings.max_message_bytes, **kwargs)


class GracefulServer(uvicorn.Server):
    async def shutdown(self, sockets=None) -> None:
        state = app_state(self.config.loaded_app)
        if state is not None and hasattr(state, "batcher"):
            state.ready = False
            # Margin: the last answers must be written before uvicorn cancels what remains.
            state.batcher.close(grace_s=max(0.0, self.config.timeout_graceful_shutdown - 2.0))
            await asyncio.sleep(0)  # let refused requests write their 503s before connections close
        await super().shutdown(sockets)


def app_state(app):
    """The FastAPI app's ``state`` under uvicorn's middleware wrappers."""
    for _ in range(10):
        if hasattr(app, "state"):
            return app.state
        app = getattr(app, "app", None)
    return None


def serve(flags: dict, workers: int = 1) -> None:
    for key, value in flags.items():  # workers are new processes: hand settings over through the environment
        os.environ[f"SPEECHSSL_{key.upper()}"] = str(value)
    settings = Settings()
    import speechssl

    speechssl.load(settings.checkpoint)  # fails here, as one line through the CLI, on a bad checkpoint
    if workers == 1:
        server = GracefulServer(uvicorn_config("server.main:app_from_env", settings, factory=True))
        server.run()
        if not server.started:
            sys.exit(3)  # uvicorn's STARTUP_FAILURE; it has logged why
        return
    # Several processes: uvicorn's supervisor builds plain uvicorn Servers, so queued work is
    # drained by the app's lifespan instead of refused at the start of shutdown.
    run = {k: v for k, v in vars(uvicorn_config(None, settings)).items() if k in RUN_KEYS}
    uvicorn.run("server.main:worker_app_from_env", factory=True, workers=workers, **{**run, "http": WorkerProtocol})


RUN_KEYS = {"host", "port", "log_level", "loop", "http", "timeout_keep_alive", "limit_concurrency",
            "h11_max_incomplete_event_size", "backlog", "timeout_graceful_shutdown", "ws", "ws_max_size"}
