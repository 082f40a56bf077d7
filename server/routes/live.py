"""Live transcription over a WebSocket: ``/v1/audio/transcriptions/live``.

The client sends the audio as it is captured, in binary messages of little-endian 16-bit
mono PCM at ``sample_rate`` (query parameter, default 16000), then the text message
``{"type": "end"}``. While audio arrives, the server decodes each new 2 s (with 1 s of
audio on each side; ``speechssl.live``) greedily and sends the words that are settled as ``{"type": "transcript.text.delta", "delta": ...}``. After
``end`` it transcribes the whole recording exactly as ``POST /v1/audio/transcriptions``
would (``decoding`` query parameter, default auto) and sends
``{"type": "transcript.text.done", "text": ..., "duration": ...}``: the deltas are a
preview, the done text is the offline transcript. Then the server closes (1000).

A failure is ``{"type": "error", "error": {"message", "code"}}`` and a close: 1008 for a
bad request (auth, parameters, more than ``max_audio_seconds``, a pause longer than
``body_timeout_s``), 1013 when the server is busy. Every piece of work goes through the
batcher, so a live session shares the model fairly with uploads; at most
``max_live_sessions`` sessions are open at once. A session costs about 2.5x the offline
transcription of what it sent (the previews read each second 1.5 times, the final pass once).
"""

from __future__ import annotations

import asyncio
import hmac
import json

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from server import work
from server.batcher import QueueFull, ShuttingDown
from server.deps import cancel
from speechssl.api import HeadMissingError
from speechssl.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SAMPLE_RATE, AudioError, load_audio
from speechssl.live import LivePreviews, delta_event, done_event

router = APIRouter()
DECODINGS = ("auto", "greedy", "beam_lm")


class LiveError(Exception):
    def __init__(self, message: str, code: str, close: int = 1008):
        super().__init__(message)
        self.message, self.code, self.close = message, code, close


def authorised(websocket: WebSocket) -> bool:
    key = websocket.app.state.settings.api_key
    if not key:
        return True
    sent = websocket.headers.get("authorization", "").encode()
    return hmac.compare_digest(sent, f"Bearer {key}".encode())


def parameters(websocket: WebSocket) -> tuple[int, str]:
    query = websocket.query_params
    unknown = sorted(set(query) - {"sample_rate", "decoding", "model", "language"})
    if unknown:
        raise LiveError(f"unsupported query parameter {unknown[0]!r}; this route takes sample_rate, decoding, "
                        "model, language", "unsupported_field")
    try:
        rate = int(query.get("sample_rate", SAMPLE_RATE))
    except ValueError:
        raise LiveError("sample_rate must be an integer number of Hz", "invalid_sample_rate") from None
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise LiveError(f"sample_rate must be {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz, got {rate}", "invalid_sample_rate")
    decoding = query.get("decoding", "auto")
    if decoding not in DECODINGS:
        raise LiveError(f"decoding must be one of {', '.join(DECODINGS)}, got {decoding!r}", "invalid_decoding")
    if decoding == "beam_lm" and websocket.app.state.model.lm is None:
        raise LiveError("decoding=beam_lm: the served model carries no language model", "no_language_model")
    language = query.get("language")
    if language is not None and language.lower() not in ("en", "english"):
        raise LiveError(f"language {language!r} is not supported; this model transcribes English ('en')",
                        "unsupported_language")
    return rate, decoding


@router.websocket("/v1/audio/transcriptions/live")
async def live(websocket: WebSocket) -> None:
    app = websocket.app
    await websocket.accept()
    if app.state.live_sessions >= app.state.settings.max_live_sessions:
        return await refuse(websocket, LiveError(f"{app.state.live_sessions} live sessions are open, the limit; "
                                                 "retry shortly", "too_many_sessions", 1013))
    app.state.live_sessions += 1
    jobs: list = []
    try:
        if not authorised(websocket):
            raise LiveError("missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key")
        try:
            app.state.model.require("ctc")
        except HeadMissingError as exc:
            raise LiveError(str(exc), "head_missing") from None
        rate, decoding = parameters(websocket)
        await session(websocket, rate, decoding, jobs)
    except LiveError as exc:
        await refuse(websocket, exc)
    except WebSocketDisconnect:
        pass  # the client left: its queued work is cancelled below
    finally:
        cancel(jobs)
        app.state.live_sessions -= 1


async def session(websocket: WebSocket, rate: int, decoding: str, jobs: list) -> None:
    settings, model = websocket.app.state.settings, websocket.app.state.model
    max_input = int(settings.max_audio_seconds * rate)
    chunks: list[np.ndarray] = []  # the PCM as sent, for the final pass
    received = 0
    previews = LivePreviews(model, rate)
    windows: asyncio.Queue = asyncio.Queue()  # (job, window) in order; None after the last

    async def send_previews() -> None:
        while (item := await windows.get()) is not None:
            job, window = item
            if delta := previews.feed(window, await result(job)):
                await websocket.send_json(delta_event(delta))

    def queue_previews(pcm: np.ndarray, final: bool = False) -> None:
        for window, piece in previews.push(pcm, final):
            job = admit(websocket, piece)
            jobs.append(job)
            windows.put_nowait((job, window))

    sender = asyncio.ensure_future(send_previews())
    try:
        while True:
            receiver = asyncio.ensure_future(websocket.receive())
            await asyncio.wait({receiver, sender}, timeout=settings.body_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if sender.done():  # a preview failed: its error ends the session
                receiver.cancel()
                sender.result()
            if not receiver.done():
                receiver.cancel()
                raise LiveError(f"no audio for {settings.body_timeout_s:g} s; send audio or {{\"type\": \"end\"}}",
                                "idle_timeout")
            message = receiver.result()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if message.get("bytes") is not None:
                data = message["bytes"]
                if len(data) % 2:
                    raise LiveError("binary messages hold 16-bit PCM: an even number of bytes", "invalid_audio")
                pcm = np.frombuffer(data, dtype="<i2")
                received += len(pcm)
                if received > max_input:
                    raise LiveError(f"more than {settings.max_audio_seconds:g} s of audio in one session",
                                    "audio_too_long")
                chunks.append(pcm)
                queue_previews(pcm)
                continue
            try:
                control = json.loads(message.get("text") or "")
            except ValueError:
                control = None
            if not isinstance(control, dict) or control.get("type") != "end":
                raise LiveError('text messages must be {"type": "end"}; audio goes in binary messages',
                                "invalid_message")
            break
        if not chunks:
            raise LiveError("no audio was sent before end", "invalid_audio")
        queue_previews(np.zeros(0, np.int16), final=True)
        windows.put_nowait(None)
        await sender
    finally:
        sender.cancel()
    try:
        wave = await asyncio.to_thread(load_audio, np.concatenate(chunks), rate, max_seconds=settings.max_audio_seconds)
    except AudioError as exc:
        raise LiveError(str(exc), "invalid_audio") from None
    job = submit(websocket, ("transcribe", decoding), *work.plan(model, ("transcribe", decoding), wave))
    jobs.append(job)
    transcript = await result(job)
    if rest := previews.finish():
        await websocket.send_json(delta_event(rest))
    await websocket.send_json(done_event(transcript.text, transcript.duration))
    await websocket.close(1000)


def admit(websocket: WebSocket, piece: np.ndarray):
    """A preview's emissions, through the batcher like every other piece of work."""
    return submit(websocket, ("transcribe",), [piece], lambda outputs: outputs[0])


def submit(websocket: WebSocket, op, pieces: list[np.ndarray], finish):
    try:
        return websocket.app.state.batcher.submit(op, pieces, finish)
    except QueueFull:
        raise LiveError("the server is busy; retry shortly", "queue_full", 1013) from None
    except ShuttingDown:
        raise LiveError("the server is shutting down; retry shortly", "shutting_down", 1013) from None


async def result(job):
    try:
        return await job.future
    except work.NonFiniteOutput as exc:
        raise LiveError(str(exc), "non_finite_output") from None
    except Exception as exc:  # the batcher's deadline or its own failure
        raise LiveError(f"transcription failed: {exc}", "server_error", 1011) from None


async def refuse(websocket: WebSocket, exc: LiveError) -> None:
    try:
        await websocket.send_json({"type": "error", "error": {"message": exc.message, "code": exc.code}})
        await websocket.close(exc.close, exc.message[:120])
    except (RuntimeError, WebSocketDisconnect):
        pass  # the client has gone already
