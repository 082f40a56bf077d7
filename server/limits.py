"""Limits enforced on the raw ASGI stream, before FastAPI parses anything.

The Content-Length check alone let a chunked upload with no length write 1.4 GB to the
temporary directory against a 1 MB limit. Here the body is counted as it streams and the
request ends at the limit, so at most the limit plus one received chunk is ever spooled;
a pause longer than ``body_timeout_s`` between chunks ends it too (a slow body cannot
hold a worker), and at most ``max_active_requests`` requests are in flight at once.
"""

from __future__ import annotations

import asyncio

from fastapi import HTTPException

from server.errors import error_response
from server.settings import Settings

UPLOADS = {"/v1/speakers/verify": 2}  # audio files per request, where more than one
MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and form fields around the files
LIGHT_PATHS = {"/health", "/ready", "/metrics"}  # answered however busy the server is


def body_limit(settings: Settings, path: str) -> int:
    return settings.max_upload_bytes * UPLOADS.get(path, 1) + MULTIPART_SLACK


class RequestLimits:
    """Pure ASGI middleware (outermost): body size while streaming, body pauses, requests in flight."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings
        self.active = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in LIGHT_PATHS:
            return await self.app(scope, receive, send)
        if self.active >= self.settings.max_active_requests:
            response = error_response(503, f"the server has {self.active} requests in flight, its limit; retry shortly",
                                      "server_error", "too_many_requests", {"Retry-After": "1", "Connection": "close"})
            return await response(scope, receive, send)
        self.active += 1
        try:
            await self.app(scope, self.limited(scope["path"], receive), send)
        finally:
            self.active -= 1

    def limited(self, path: str, receive):
        limit, timeout = body_limit(self.settings, path), self.settings.body_timeout_s
        received, complete = 0, False

        async def limited_receive():
            nonlocal received, complete
            if complete:  # the body is in: what remains is waiting for a disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                # fastapi's HTTPException: FastAPI re-raises it from body parsing instead of making a 400 of it.
                raise HTTPException(408, f"the request body stalled for over {timeout:g} s",
                                    headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > limit:
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes "
                                        f"({self.settings.max_upload_bytes} per file plus form overhead)",
                                        headers={"Connection": "close"})
            return message

        return limited_receive
