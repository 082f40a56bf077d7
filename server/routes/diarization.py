"""Who spoke when: ``POST /v1/audio/diarization`` (JSON or RTTM), and the steps that
``response_format=diarized_json`` on the transcription route shares.

The pipeline is ``speechssl.diarize``'s: voice activity (the VAD worker), a speaker vector
per window (the batcher, like every other device job), clustering (a thread). Enrolled
speakers come as OpenAI sends them: ``known_speaker_names[]`` with one
``known_speaker_references[]`` each, a data URL of a short audio clip
(``data:audio/wav;base64,...``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse

from server.deps import known_fields_only, read_upload, require_head, submit_all
from server.errors import ApiError
from server.routes.vad import detect
from server.schemas import Diarization, SpeakerTurn
from speechssl.audio import SAMPLE_RATE, load_audio
from speechssl.diarize import DiarizationError, Turn, assign, to_rttm, windows
from speechssl.vad import VadSettings

router = APIRouter(dependencies=[Depends(known_fields_only)])
MAX_KNOWN = 4  # OpenAI's limit on enrolled speakers
MAX_REFERENCE_SECONDS = 30.0


async def known_speakers(request: Request, names: list[str], references: list[str]) -> dict[str, np.ndarray] | None:
    """The enrolled speakers' vectors, or None when none are given."""
    if not names and not references:
        return None
    if len(names) != len(references):
        raise ApiError(400, f"{len(names)} known_speaker_names[] but {len(references)} known_speaker_references[]; "
                       "give one reference clip per name", code="invalid_known_speakers")
    if len(names) > MAX_KNOWN or len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise ApiError(400, f"known_speaker_names[]: at most {MAX_KNOWN} distinct, non-empty names",
                       code="invalid_known_speakers")
    waves = []
    for name, reference in zip(names, references):
        head, _, data = reference.partition(",")
        if not head.startswith("data:") or not head.endswith(";base64"):
            raise ApiError(400, f"known speaker {name!r}: the reference must be a data URL "
                           "(data:audio/wav;base64,...)", code="invalid_known_speakers")
        try:
            audio = base64.b64decode(data, validate=True)
            waves.append(await asyncio.to_thread(load_audio, audio, None, max_seconds=MAX_REFERENCE_SECONDS))
        except (binascii.Error, ValueError) as exc:  # AudioError is a ValueError: bad or undecodable audio
            raise ApiError(400, f"known speaker {name!r}: {exc}", code="invalid_known_speakers") from None
    vectors = await submit_all(request, [(("speaker",), wave) for wave in waves])
    return dict(zip(names, vectors))


async def speaker_turns(request: Request, wave: np.ndarray, num_speakers: int | None,
                        known: dict[str, np.ndarray] | None) -> list[Turn]:
    model = request.app.state.model
    segments = await detect(request, wave, VadSettings())
    spans = windows(segments)
    if not spans:
        return []
    vectors = await submit_all(request, [(("speaker",), wave[int(a * SAMPLE_RATE): int(b * SAMPLE_RATE)])
                                         for a, b in spans])
    try:
        return await asyncio.to_thread(assign, segments, spans, np.stack(vectors), model.speaker_threshold,
                                       num_speakers, known)
    except DiarizationError as exc:
        raise ApiError(400, str(exc), code="invalid_num_speakers") from None


@router.post("/v1/audio/diarization", response_model=Diarization, summary="who spoke when (JSON or RTTM)",
             responses={200: {"content": {"text/plain": {}}, "description": "json as shown; rttm: NIST RTTM lines"}})
async def diarization(
    request: Request,
    file: UploadFile = File(..., description="audio: wav, flac, ogg, mp3, ..."),
    num_speakers: int | None = Form(None, description="how many speakers; estimated when absent"),
    response_format: Literal["json", "rttm"] = Form("json"),
    known_speaker_names: list[str] = Form([], alias="known_speaker_names[]", description="enrolled speakers' names"),
    known_speaker_references: list[str] = Form([], alias="known_speaker_references[]",
                                               description="one data URL audio clip per name"),
):
    require_head(request, "speaker")
    wave = await read_upload(request, file)
    known = await known_speakers(request, known_speaker_names, known_speaker_references)
    turns = await speaker_turns(request, wave, num_speakers, known)
    if response_format == "rttm":
        return PlainTextResponse(to_rttm(turns, (file.filename or "audio").rsplit(".", 1)[0].replace(" ", "_")))
    return Diarization(duration=round(len(wave) / SAMPLE_RATE, 3), speakers=list(dict.fromkeys(t.speaker for t in turns)),
                       turns=[SpeakerTurn(start=t.start, end=t.end, speaker=t.speaker) for t in turns])
