"""OpenAI-compatible speech-to-text: POST /v1/audio/transcriptions.

The official ``openai`` client works against it unchanged (``base_url=.../v1``). The
``model`` field is accepted and ignored (one model is served), as are ``prompt`` and
``temperature``. ``decoding`` (speechssl's own field): ``auto`` is beam search with the
model's word n-gram when the checkpoint carries one, else greedy; ``greedy``; ``beam_lm``.
``stream=true`` answers server-sent events (server/streaming.py), decoded greedily window
by window. ``include[]=logprobs`` adds each word's
log-probability (json). verbose_json segments carry OpenAI's fields: ``avg_logprob`` and
``compression_ratio`` measured, ``tokens`` the CTC ids, ``seek`` the start in centiseconds,
``temperature`` and ``no_speech_prob`` constant 0. Fields this route does not declare
(OpenAI's ``chunking_strategy`` ...) get a 400 naming them.
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
from speechssl.decode.ctc import encode_text
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
                                           "then transcript.text.done (response_format json or text); greedy"),
    decoding: Literal["auto", "greedy", "beam_lm"] = Form(
        "auto", description="auto: beam search with the model's word n-gram when it carries one, else greedy"),
    include: list[Literal["logprobs"]] = Form(
        [], alias="include[]", description="logprobs: each word's log-probability (response_format json)"),
):
    require_head(request, "ctc")
    if language is not None and language.lower() not in ENGLISH:
        raise ApiError(400, f"language {language!r} is not supported; this model transcribes English ('en')",
                       code="unsupported_language")
    if timestamp_granularities and response_format != "verbose_json":
        raise ApiError(400, "timestamp_granularities[] needs response_format=verbose_json",
                       code="invalid_timestamp_granularities")
    if include and (response_format != "json" or stream):
        raise ApiError(400, "include[]=logprobs needs response_format=json without stream, as OpenAI defines it",
                       code="invalid_include")
    if stream and response_format not in ("json", "text"):
        raise ApiError(400, f"stream=true gives text deltas; response_format {response_format!r} cannot stream "
                       "(use json or text)", code="invalid_stream_format")
    if decoding == "beam_lm" and request.app.state.model.lm is None:
        raise ApiError(400, "decoding=beam_lm: the served model carries no language model (use greedy or auto)",
                       code="no_language_model")
    if stream and decoding == "beam_lm":
        raise ApiError(400, "stream=true decodes greedily, window by window; decoding=beam_lm cannot stream",
                       code="invalid_stream_decoding")
    wave = await read_upload(request, file)
    if stream:
        return stream_transcription(request, wave)
    transcript: Transcript = await submit(request, ("transcribe", decoding), wave)
    if response_format == "text":
        return PlainTextResponse(transcript.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(to_srt(transcript))
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(transcript), media_type="text/vtt")
    if response_format == "json":
        logprobs = transcript.logprobs() if include else None
        return JSONResponse(Transcription(text=transcript.text, logprobs=logprobs).model_dump(exclude_none=True))
    vocab = request.app.state.model.vocab
    verbose = TranscriptionVerbose(
        duration=transcript.duration, text=transcript.text,
        segments=[TranscriptionSegment(id=seg.id, seek=round(seg.start * 100), start=seg.start, end=seg.end,
                                       text=seg.text, tokens=encode_text(seg.text, vocab), avg_logprob=seg.avg_logprob,
                                       compression_ratio=seg.compression_ratio)
                  for seg in transcript.segments()],
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
