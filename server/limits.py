"""Limits enforced on the raw ASGI stream, before FastAPI parses anything.

The Content-Length check alone let a chunked upload with no length write 1.4 GB to the
temporary directory against a 1 MB limit. Here the body is counted as it streams and the
request ends at the limit, so at most the limit plus one received chunk is ever spooled;
a pause longer than ``body_timeout_s`` between chunks ends it too (a slow body cannot
hold a worker), and at most ``max_active_requests`` requests are in flight at once.
"""

from __future__ import annotations

import asyncio

from server.errors import error_response
from server.settings import Settings

UPLOADS = {"/v1/speakers/verify": 2}  # audio files per request, where more than one
MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and form fields around the files
LIGHT_PATHS = {"/health", "/ready", "/metrics"}  # answered however busy the server is


def body_limit(settings: Settings, path: str) -> int:
    return settings.max_upload_bytes * UPLOADS.get(path, 1) + MULTIPART_SLACK


class RequestLimits:
    """Pure ASGI middleware (outermost): body size while streaming, body pauses, requests in flight."""

    def __init__(self, app, settings: Settings, metrics=None):
        self.app, self.settings, self.metrics = app, settings, metrics
        self.active = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in LIGHT_PATHS:
            return await self.app(scope, receive, send)
        if self.active >= self.settings.max_active_requests:
            response = error_response(503, f"the server has {self.active} requests in flight, its limit; retry shortly",
                                      "server_error", "too_many_requests", {"Retry-After": "1", "Connection": "close"})
            return await response(scope, receive, send)
        self.active += 1
        # Set when the client goes away; routes read it as request.state.client_gone to drop
        # their queued work (once the body is in, only this watcher reads the receive channel).
        gone = scope.setdefault("state", {})["client_gone"] = asyncio.Event()
        cut = Cutoff(scope, receive, send, gone)
        try:
            await self.app(scope, self.limited(scope["path"], cut), cut.send)
        finally:
            self.active -= 1
            if cut.watcher is not None:
                cut.watcher.cancel()

    def limited(self, path: str, cut: "Cutoff"):
        limit, timeout = body_limit(self.settings, path), self.settings.body_timeout_s
        received, complete = 0, False

        async def limited_receive():
            nonlocal received, complete
            if complete or cut.answered:  # the body is in: only the watcher reads on, until the disconnect
                await cut.gone.wait()
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(cut.receive(), timeout)
            except asyncio.TimeoutError:
                return await cut.refuse(408, f"the request body stalled for over {timeout:g} s", "body_timeout")
            if message["type"] == "http.disconnect":
                cut.gone.set()
            elif message["type"] == "http.request":
                body = message.get("body", b"")
                received += len(body)
                if self.metrics is not None:
                    self.metrics.body_bytes.inc(len(body))
                if received > limit:
                    return await cut.refuse(413, f"request body exceeds the limit of {limit} bytes "
                                            f"({self.settings.max_upload_bytes} per file plus form overhead)",
                                            "upload_too_large")
                complete = not message.get("more_body", False)
                if complete:
                    cut.watch()
            return message

        return limited_receive


class Cutoff:
    """One request's raw channels: answers it early (413/408, connection closed) and then tells
    the app the client is gone, dropping whatever the app still tries to send."""

    def __init__(self, scope, receive, send, gone: asyncio.Event):
        self.scope, self.receive, self.raw_send, self.gone = scope, receive, send, gone
        self.answered = False
        self.watcher: asyncio.Task | None = None

    async def send(self, message) -> None:
        if not self.answered:
            await self.raw_send(message)

    async def refuse(self, status: int, message: str, code: str):
        # Raising from receive would reach FastAPI wrapped (a 400 "error parsing the body").
        response = error_response(status, message, "invalid_request_error", code, {"Connection": "close"})
        await response(self.scope, self.receive, self.raw_send)
        self.answered = True
        self.gone.set()
        return {"type": "http.disconnect"}

    def watch(self) -> None:
        async def until_disconnect() -> None:
            while (await self.receive())["type"] != "http.disconnect":
                pass
            self.gone.set()

        self.watcher = asyncio.ensure_future(until_disconnect())
