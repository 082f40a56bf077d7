"""Request plumbing shared by routes: read an upload into a waveform, submit to the batcher."""

from __future__ import annotations

import asyncio
from typing import Hashable

import numpy as np
from fastapi import Request, UploadFile

from server.batcher import QueueFull
from server.errors import ApiError, audio_error
from speechssl.api import HeadMissingError
from speechssl.audio import AudioError, load_audio


async def read_upload(request: Request, upload: UploadFile) -> np.ndarray:
    settings = request.app.state.settings
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, f"upload exceeds the limit of {settings.max_upload_bytes} bytes", code="upload_too_large")
    try:
        return await asyncio.to_thread(load_audio, data, None, max_seconds=settings.max_audio_seconds)
    except AudioError as exc:
        raise audio_error(exc) from None


async def submit(request: Request, op: Hashable, wave: np.ndarray):
    try:
        return await request.app.state.batcher.submit(op, wave)
    except QueueFull:
        raise ApiError(503, "the server is busy; retry shortly", "server_error", "queue_full", {"Retry-After": "1"}) from None


def require_head(request: Request, head: str):
    """The model, when its checkpoint holds ``head`` ("ctc", "speaker"); else a 400 naming the heads it has."""
    model = request.app.state.model
    try:
        model.require(head)
    except HeadMissingError as exc:
        raise ApiError(400, str(exc), code="head_missing") from None
    return model
