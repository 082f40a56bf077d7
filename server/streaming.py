"""Streamed transcription: OpenAI's server-sent events, one text delta as each window is decoded.

``POST /v1/audio/transcriptions`` with ``stream=true`` answers ``text/event-stream``:
``{"type": "transcript.text.delta", "delta": ...}`` events as the batcher finishes the
file's windows in order (a word goes out once a word boundary follows it), then
``{"type": "transcript.text.done", "text": ...}``. The deltas joined equal the text of the
same request without ``stream``. Admission errors (busy, bad audio) are plain 4xx/5xx
responses; a failure after the first event is an ``error`` event, then the stream ends.
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

import numpy as np
from fastapi import Request
from fastapi.responses import StreamingResponse

from server.deps import admit, wait
from server.errors import ApiError
from speechssl.api import stitch
from speechssl.decode.ctc import GreedyTextStream


def event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def stream_transcription(request: Request, wave: np.ndarray) -> StreamingResponse:
    model = request.app.state.model
    info = model.info
    text = GreedyTextStream(model.vocab, info.blank_id, info.silent_ids())
    windows = model.windows(len(wave))
    deltas: asyncio.Queue[str] = asyncio.Queue()

    def on_progress(first: int, outputs: list) -> None:
        for window, out in zip(windows[first:], outputs):
            delta = text.feed(stitch([window], [out]))
            if delta:
                deltas.put_nowait(delta)

    jobs = admit(request, [(("transcribe",), wave)], on_progress)  # a busy server answers 503 here

    async def events() -> AsyncIterator[bytes]:
        result = asyncio.ensure_future(wait(request, jobs))
        try:
            while True:
                getter = asyncio.ensure_future(deltas.get())
                await asyncio.wait({getter, result}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield event({"type": "transcript.text.delta", "delta": getter.result()})
                    continue
                getter.cancel()
                while not deltas.empty():
                    yield event({"type": "transcript.text.delta", "delta": deltas.get_nowait()})
                try:
                    [transcript] = result.result()
                except ApiError as exc:
                    yield event({"type": "error", "error": {"message": exc.message, "code": exc.code}})
                    return
                except Exception:  # the batcher's own failure: logged there; the client learns it ended
                    yield event({"type": "error", "error": {"message": "transcription failed", "code": "server_error"}})
                    return
                rest = text.finish()
                if rest:
                    yield event({"type": "transcript.text.delta", "delta": rest})
                yield event({"type": "transcript.text.done", "text": transcript.text})
                return
        finally:
            result.cancel()  # the client left mid-stream: wait() cancels the job

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
