"""Request plumbing shared by routes: read an upload into a waveform, submit to the batcher."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Hashable

import numpy as np
from fastapi import Request, UploadFile

from server import work
from server.batcher import DeadlineExceeded, QueueFull, ShuttingDown
from server.errors import ApiError, library_error
from speechssl.api import HeadMissingError
from speechssl.audio import SAMPLE_RATE, AudioError, load_audio

POLL_S = 0.25  # how often a waiting request checks that its client is still there


async def read_upload(request: Request, upload: UploadFile, max_seconds: float | None = None) -> np.ndarray:
    """One uploaded file as 16 kHz audio, at most ``max_seconds`` (default: the setting) long."""
    settings = request.app.state.settings
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, f"upload exceeds the limit of {settings.max_upload_bytes} bytes", code="upload_too_large")
    try:
        return await asyncio.to_thread(load_audio, data, None,
                                       max_seconds=settings.max_audio_seconds if max_seconds is None else max_seconds)
    except AudioError as exc:
        raise library_error(exc) from None


async def read_uploads(request: Request, uploads: list[UploadFile]) -> list[np.ndarray]:
    """Several files of one request: at most ``max_files``, sharing ``max_audio_seconds``."""
    settings = request.app.state.settings
    if len(uploads) > settings.max_files:
        raise ApiError(400, f"{len(uploads)} files in one request; the limit is {settings.max_files}",
                       code="too_many_files")
    waves, left = [], settings.max_audio_seconds
    for upload in uploads:
        if left <= 0:
            raise ApiError(413, f"the files hold more than {settings.max_audio_seconds:g} s of audio in all",
                           code="audio_too_long")
        waves.append(await read_upload(request, upload, max_seconds=left))
        left -= len(waves[-1]) / SAMPLE_RATE
    return waves


async def submit(request: Request, op: Hashable, wave: np.ndarray) -> Any:
    [result] = await submit_all(request, [(op, wave)])
    return result


async def submit_all(request: Request, work_items: list[tuple[Hashable, np.ndarray]]) -> list[Any]:
    """Queue every (op, wave) and wait for all of them. A client that disconnects has its
    jobs cancelled (the batcher drops them before their next piece); past the deadline, 504."""
    return await wait(request, admit(request, work_items))


def admit(request: Request, work_items: list[tuple[Hashable, np.ndarray]], on_progress=None) -> list:
    """The batcher's jobs for every (op, wave), or a 503 (queue full, shutting down) admitting none.
    ``on_progress(first piece, outputs)`` hears of each job's pieces as they are done."""
    batcher, model = request.app.state.batcher, request.app.state.model
    jobs = []
    try:
        for op, wave in work_items:
            jobs.append(batcher.submit(op, *work.plan(model, op, wave), on_progress=on_progress))
    except QueueFull:
        cancel(jobs)
        raise ApiError(503, "the server is busy; retry shortly", "server_error", "queue_full", {"Retry-After": "1"}) from None
    except ShuttingDown:
        cancel(jobs)
        raise shutting_down() from None
    return jobs


async def wait(request: Request, jobs: list) -> list[Any]:
    """The admitted jobs' results; cancelled when the client leaves, 504 past the deadline."""
    if not jobs:  # e.g. chunking_strategy on audio without speech
        return []
    batcher = request.app.state.batcher
    futures = [job.future for job in jobs]
    deadline = max(job.deadline for job in jobs) + 1.0  # the batcher's own deadline check comes first
    try:
        while not all(f.done() for f in futures):
            await asyncio.wait([f for f in futures if not f.done()], timeout=POLL_S,
                               return_when=asyncio.FIRST_EXCEPTION)
            if any(f.done() and not f.cancelled() and f.exception() for f in futures):
                break
            if client_gone(request):
                cancel(jobs)
                raise ApiError(499, "client closed the request", code="client_closed")
            if time.monotonic() > deadline:
                raise DeadlineExceeded
        return [f.result() for f in futures]
    except DeadlineExceeded:
        raise ApiError(504, f"the request did not finish within the {batcher.deadline_s:g} s deadline; "
                       "send shorter audio or retry when the server is less busy", "server_error",
                       "deadline_exceeded") from None
    except ShuttingDown:
        raise shutting_down() from None
    except work.NonFiniteOutput as exc:
        raise ApiError(422, f"{exc}; the audio may be extreme or the checkpoint damaged", code="non_finite_output") from None
    finally:
        cancel(jobs)


def client_gone(request: Request) -> bool:
    gone = getattr(request.state, "client_gone", None)  # set by server.limits.RequestLimits
    return gone is not None and gone.is_set()


def cancel(jobs) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.cancel()


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down; retry on another replica or shortly",
                    "server_error", "shutting_down", {"Retry-After": "1"})


async def known_fields_only(request: Request) -> None:
    """A 400 naming any form field the route does not declare, instead of dropping it silently:
    a client that sends OpenAI's ``stream`` or ``chunking_strategy`` learns they are not served."""
    route = request.scope.get("route")
    if route is None or not request.headers.get("content-type", "").startswith(("multipart/form-data",
                                                                                 "application/x-www-form-urlencoded")):
        return
    declared = {param.alias for param in route.dependant.body_params}
    if not declared:  # a route without a form (translations) refuses the request itself
        return
    unknown = sorted(set((await request.form()).keys()) - declared)  # parsed once already: cached
    if unknown:
        raise ApiError(400, f"unsupported field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                       f"this route takes {', '.join(sorted(declared))}", code="unsupported_field")


def require_head(request: Request, head: str):
    """The model, when its checkpoint holds ``head`` ("ctc", "speaker"); else a 400 naming the heads it has."""
    model = request.app.state.model
    try:
        model.require(head)
    except HeadMissingError as exc:
        raise library_error(exc) from None
    return model
