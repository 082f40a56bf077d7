"""Voice activity: ``POST /v1/audio/voice_activity`` returns where speech is in a recording.

The detector (``speechssl.vad``, Silero VAD by default) runs in one worker thread beside the
model's: requests queue for it in arrival order, so a burst of them cannot take both cores
from transcription. ``chunking_strategy`` on the transcription route uses the same worker.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from server.deps import known_fields_only, read_upload
from server.errors import ApiError
from server.schemas import SpeechTimestamps, SpeechTimestamp
from speechssl.audio import SAMPLE_RATE
from speechssl.vad import SpeechSegment, VadError, VadSettings, speech_segments

router = APIRouter(dependencies=[Depends(known_fields_only)])


async def detect(request: Request, wave: np.ndarray, settings: VadSettings) -> list[SpeechSegment]:
    worker: asyncio.Semaphore = request.app.state.vad_worker
    async with worker:
        return await asyncio.to_thread(speech_segments, wave, settings)


def vad_settings(**values) -> VadSettings:
    """Validated detector settings from form values (None: the default), or a 400 naming the problem."""
    try:
        return VadSettings(**{k: v for k, v in values.items() if v is not None}).validate()
    except VadError as exc:
        raise ApiError(400, str(exc), code="invalid_vad_settings") from None


@router.post("/v1/audio/voice_activity", response_model=SpeechTimestamps, summary="where speech is (VAD)")
async def voice_activity(
    request: Request,
    file: UploadFile = File(..., description="audio: wav, flac, ogg, mp3, ..."),
    threshold: float | None = Form(None, description="speech probability above which a frame is speech (0.5)"),
    silence_duration_ms: int | None = Form(None, description="pauses shorter than this do not end a segment (200)"),
    min_speech_ms: int | None = Form(None, description="shorter bursts are dropped (250)"),
    prefix_padding_ms: int | None = Form(None, description="audio kept before each segment (0)"),
    backend: Literal["silero", "energy"] | None = Form(None, description="silero (default) or energy"),
) -> SpeechTimestamps:
    settings = vad_settings(threshold=threshold, silence_duration_ms=silence_duration_ms, min_speech_ms=min_speech_ms,
                            prefix_padding_ms=prefix_padding_ms, backend=backend)
    wave = await read_upload(request, file)
    segments = await detect(request, wave, settings)
    return SpeechTimestamps(duration=round(len(wave) / SAMPLE_RATE, 3), backend=settings.backend,
                            segments=[SpeechTimestamp(start=s.start, end=s.end) for s in segments])
