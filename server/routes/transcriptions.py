"""OpenAI-compatible speech-to-text: POST /v1/audio/transcriptions.

The official ``openai`` client works against it unchanged (``base_url=.../v1``). The
``model`` field is accepted and ignored (one model is served), as are ``prompt`` and
``temperature``; the CTC head decodes greedily. ``stream=true`` answers server-sent
events (server/streaming.py). Fields this route does not declare (OpenAI's
``chunking_strategy``, ``include[]`` ...) get a 400 naming them.
``/v1/audio/translations`` answers a 400: the model is English-only.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse

from server.deps import known_fields_only, read_upload, require_head, submit
from server.errors import ApiError
from server.schemas import Transcription, TranscriptionSegment, TranscriptionVerbose, TranscriptionWord
from server.streaming import stream_transcription
from speechssl.transcript import Transcript, to_srt, to_vtt

router = APIRouter(dependencies=[Depends(known_fields_only)])

ENGLISH = {"en", "english"}  # the character vocabulary is a-z and the apostrophe

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


@router.post(
    "/v1/audio/transcriptions", summary="transcribe an audio file (OpenAI-compatible)",
    responses={200: {"model": TranscriptionVerbose, "content": {"text/plain": {}, "text/vtt": {}},
                     "description": "json: {text}; verbose_json: as shown; text and srt: text/plain; vtt: text/vtt"}},
)
async def transcriptions(
    request: Request,
    file: UploadFile = File(..., description="audio: wav, flac, ogg, mp3, ..."),
    model: str | None = Form(None, description="accepted for OpenAI compatibility; the served model answers"),
    language: str | None = Form(None, description="ISO-639-1 code; only 'en' is supported"),
    prompt: str | None = Form(None, description="accepted and ignored"),
    temperature: float | None = Form(None, description="accepted and ignored (greedy decoding)"),
    response_format: ResponseFormat = Form("json"),
    timestamp_granularities: list[Literal["word", "segment"]] = Form(
        [], alias="timestamp_granularities[]", description="with verbose_json: word and/or segment (default segment)"),
    stream: bool = Form(False, description="server-sent events: transcript.text.delta per decoded window, "
                                           "then transcript.text.done (response_format json or text)"),
):
    require_head(request, "ctc")
    if language is not None and language.lower() not in ENGLISH:
        raise ApiError(400, f"language {language!r} is not supported; this model transcribes English ('en')",
                       code="unsupported_language")
    if timestamp_granularities and response_format != "verbose_json":
        raise ApiError(400, "timestamp_granularities[] needs response_format=verbose_json",
                       code="invalid_timestamp_granularities")
    if stream and response_format not in ("json", "text"):
        raise ApiError(400, f"stream=true gives text deltas; response_format {response_format!r} cannot stream "
                       "(use json or text)", code="invalid_stream_format")
    wave = await read_upload(request, file)
    if stream:
        return stream_transcription(request, wave)
    transcript: Transcript = await submit(request, ("transcribe",), wave)
    if response_format == "text":
        return PlainTextResponse(transcript.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(to_srt(transcript))
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(transcript), media_type="text/vtt")
    if response_format == "json":
        return Transcription(text=transcript.text)
    verbose = TranscriptionVerbose(
        duration=transcript.duration, text=transcript.text,
        segments=[TranscriptionSegment(id=i, start=start, end=end, text=text)
                  for i, (start, end, text) in enumerate(transcript.cues())],
        words=[TranscriptionWord(word=w.text, start=w.start, end=w.end, probability=w.probability) for w in transcript.words]
        if "word" in timestamp_granularities else None,
    )
    return JSONResponse(verbose.model_dump(exclude_none=True))


@router.post("/v1/audio/translations", summary="not served: this model transcribes English only",
             responses={400: {"description": "always: use /v1/audio/transcriptions"}})
async def translations() -> None:
    # OpenAI's route exists so that a client calling it gets a reason, not a 404.
    raise ApiError(400, "this model is English-only and does not translate; use /v1/audio/transcriptions",
                   code="translation_not_supported")
