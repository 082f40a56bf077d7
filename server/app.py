"""``create_app(settings)``: load the checkpoint once, warm it up, then serve."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response

from server import errors, logs, work
from server.batcher import Batcher
from server.limits import RequestLimits, body_limit
from server.metrics import Metrics
from server.routes import diarization, embeddings, health, live, speakers, transcriptions, vad
from server.settings import Settings

log = logging.getLogger("speechssl.server")


def load_model(settings: Settings):
    """The checkpoint to serve: a speechssl file, the shipped model, or a transformers folder
    (or cache entry), imported in memory."""
    import speechssl

    source = settings.checkpoint
    if source is not None and Path(source).is_dir():
        from speechssl.interop.hf import checkpoint_from_hf

        log.info("importing the transformers folder %s in memory (speechssl import-hf saves it as one file)", source)
        source = checkpoint_from_hf(source)
    return speechssl.load(source, settings.device, settings.quantize, serving_precision(settings))


def serving_precision(settings: Settings) -> str:
    """``auto`` serves bf16 on a GPU and on a CPU with native bf16 (there it runs about 3x
    fp32 on BASE at a CER cost of at most 0.02 points on the shipped model: docs/benchmarks.md),
    fp32 on other CPUs."""
    from speechssl.device import native_bf16, resolve_device

    if settings.precision == "auto" and resolve_device(settings.device).type == "cpu" and native_bf16():
        return "bf16"
    return settings.precision


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import torch

        if settings.threads:
            torch.set_num_threads(settings.threads)
        model = await asyncio.to_thread(load_model, settings)
        model.max_batch_seconds = settings.batch_seconds(model.device.type)
        if settings.max_padding is not None:
            model.max_padding = None if settings.max_padding == float("inf") else settings.max_padding
        await asyncio.to_thread(work.warm_up, model)
        limit = logs.RateLimit()
        logs.install_filters(limit)
        asyncio.get_running_loop().set_exception_handler(logs.loop_exception_handler(limit))
        app.state.model = model
        app.state.vad_worker = asyncio.Semaphore(1)
        workers, threads = settings.model_threads(model.device.type, torch.get_num_threads())
        app.state.batcher = Batcher(
            work.run_batch(model), max_batch_seconds=model.max_batch_seconds, max_batch_items=settings.max_batch_items,
            max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
            deadline_s=settings.deadline_seconds(model.device.type), on_batch=app.state.metrics.observe_batch,
            workers=workers, worker_init=lambda: torch.set_num_threads(threads),
        )
        app.state.batcher.start()
        app.state.ready = True
        log.info("serving %s on %s (%s%s; %d model thread%s of %d torch thread%s)", model.name, model.device,
                 model.precision, f", {settings.quantize} matmuls" if settings.quantize else "",
                 workers, "s" if workers > 1 else "", threads, "s" if threads > 1 else "")
        yield
        app.state.ready = False
        await app.state.batcher.drain()

    app = FastAPI(title="speechssl", version="0.1.0", lifespan=lifespan,
                  description="Self-supervised speech representations over HTTP: embeddings, "
                  "transcription (OpenAI-compatible) and speaker verification.")
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.ready = False
    app.state.live_sessions = 0
    errors.install(app)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        if hasattr(app.state, "batcher"):
            app.state.metrics.queue_depth.set(app.state.batcher.depth)
        return Response(app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.include_router(health.router)
    app.include_router(embeddings.router)
    app.include_router(transcriptions.router)
    app.include_router(speakers.router)
    app.include_router(live.router)
    app.include_router(vad.router)
    app.include_router(diarization.router)
    app.add_middleware(Observe, settings=settings, metrics=app.state.metrics)
    app.add_middleware(RequestLimits, settings=settings, metrics=app.state.metrics)  # added last: outermost, sees the raw body
    return app


OPEN_PATHS = {"/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"}


class Observe:
    """Pure ASGI middleware: a request id, the API key and declared size checked before the body
    is read, then the request's metrics and log line. (Starlette's ``@app.middleware`` runs each
    request in an extra task with a memory stream: a sixth of the event loop's time under load.)"""

    def __init__(self, app, settings: Settings, metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.monotonic(), 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            denied = check_request(request, self.settings)
            await (denied or self.app)(scope, receive, send_with_id)
        finally:  # an exception becomes ServerErrorMiddleware's 500 outside: counted as one here
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.monotonic() - started)
            log.info("%s %s %s %d %.1f ms", request_id, scope["method"], scope["path"], status,
                     1000 * (time.monotonic() - started))


def check_request(request: Request, settings: Settings) -> Response | None:
    """API key and declared upload size, checked before the body is read."""
    if settings.api_key and request.url.path not in OPEN_PATHS:
        sent = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(sent, f"Bearer {settings.api_key}".encode()):  # no timing side channel
            return errors.error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                         "authentication_error", "invalid_api_key")
    length = request.headers.get("content-length")
    limit = body_limit(settings, request.url.path)  # a chunked or lying body is cut by RequestLimits
    if length and length.isdigit() and int(length) > limit:
        return errors.error_response(413, f"upload of {int(length)} bytes exceeds the limit of "
                                     f"{settings.max_upload_bytes} bytes", "invalid_request_error", "upload_too_large")
    return None
