"""OpenAI-compatible speech-to-text: POST /v1/audio/transcriptions.

The official ``openai`` client works against it unchanged (``base_url=.../v1``). The
``model`` field is accepted and ignored (one model is served), as are ``prompt`` and
``temperature``. ``decoding`` (speechssl's own field): ``auto`` is beam search with the
model's word n-gram when the checkpoint carries one, else greedy; ``greedy``; ``beam_lm``.
``stream=true`` answers server-sent events (server/streaming.py), decoded greedily window
by window. ``include[]=logprobs`` adds each word's
log-probability (json). verbose_json segments carry OpenAI's fields: ``avg_logprob`` and
``compression_ratio`` measured, ``tokens`` the CTC ids, ``seek`` the start in centiseconds,
``temperature`` and ``no_speech_prob`` constant 0. ``chunking_strategy`` (``auto`` or
``server_vad``) transcribes each voiced segment alone (server/routes/vad.py). Fields this
route does not declare get a 400 naming them. ``response_format=diarized_json`` (needs a
speaker head too) is OpenAI's diarized shape: each speaker turn (server/routes/diarization.py)
transcribed alone, with ``known_speaker_names[]``/``known_speaker_references[]`` enrolment.
``/v1/audio/translations`` answers a 400: the model is English-only.
"""

from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse

from server.deps import known_fields_only, read_upload, require_head, submit, submit_all
from server.routes.diarization import known_speakers, speaker_turns
from server.routes.vad import detect, vad_settings
from server.errors import ApiError
from server.schemas import DiarizedSegment, Transcription, TranscriptionDiarized, TranscriptionSegment, TranscriptionVerbose, TranscriptionWord
from server.streaming import stream_transcription
from speechssl.audio import MIN_SAMPLES, SAMPLE_RATE
from speechssl.decode.ctc import encode_text
from speechssl.vad import VadSettings, voiced_pieces
from speechssl.transcript import Transcript, to_srt, to_vtt

router = APIRouter(dependencies=[Depends(known_fields_only)])

ENGLISH = {"en", "english"}  # the character vocabulary is a-z and the apostrophe

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json"]


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
    chunking_strategy: str | None = Form(
        None, description='"auto" (voiced segments, 300 ms prefix, 500 ms pauses), or a JSON object '
                          '{"type": "server_vad", "threshold", "prefix_padding_ms", "silence_duration_ms"}'),
    vad_type: Literal["server_vad"] | None = Form(None, alias="chunking_strategy[type]",
                                                  description="the openai client's form of the object"),
    vad_threshold: float | None = Form(None, alias="chunking_strategy[threshold]"),
    vad_prefix_padding_ms: int | None = Form(None, alias="chunking_strategy[prefix_padding_ms]"),
    vad_silence_duration_ms: int | None = Form(None, alias="chunking_strategy[silence_duration_ms]"),
    known_speaker_names: list[str] = Form([], alias="known_speaker_names[]",
                                          description="diarized_json: enrolled speakers' names"),
    known_speaker_references: list[str] = Form([], alias="known_speaker_references[]",
                                               description="diarized_json: one data URL audio clip per name"),
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
    if response_format == "diarized_json":
        require_head(request, "speaker")
        if stream or include or timestamp_granularities:
            raise ApiError(400, "diarized_json takes neither stream, include[] nor timestamp_granularities[]",
                           code="invalid_diarized_request")
    elif known_speaker_names or known_speaker_references:
        raise ApiError(400, "known_speaker_names[] and known_speaker_references[] need response_format=diarized_json",
                       code="invalid_known_speakers")
    vad = chunking(chunking_strategy, vad_type, vad_threshold, vad_prefix_padding_ms, vad_silence_duration_ms)
    if stream and vad is not None:
        raise ApiError(400, "stream=true reads the file window by window; chunking_strategy cannot stream",
                       code="invalid_stream_chunking")
    wave = await read_upload(request, file)
    if stream:
        return stream_transcription(request, wave)
    if response_format == "diarized_json":
        return await diarized(request, wave, decoding, known_speaker_names, known_speaker_references)
    if vad is None:
        transcript: Transcript = await submit(request, ("transcribe", decoding), wave)
    else:  # each voiced segment alone, through the batcher together; the pauses are never encoded
        pieces = voiced_pieces(wave, await detect(request, wave, vad))
        parts = await submit_all(request, [(("transcribe", decoding), piece) for _, piece in pieces])
        transcript = Transcript.join([(start / SAMPLE_RATE, part) for (start, _), part in zip(pieces, parts)],
                                     round(len(wave) / SAMPLE_RATE, 3))
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


async def diarized(request: Request, wave, decoding: str, names: list[str], references: list[str]) -> JSONResponse:
    """OpenAI's diarized_json: each speaker turn transcribed on its own."""
    turns = await speaker_turns(request, wave, None, await known_speakers(request, names, references))
    pieces = [wave[int(t.start * SAMPLE_RATE): int(t.end * SAMPLE_RATE)] for t in turns]
    kept = [(t, p) for t, p in zip(turns, pieces) if len(p) >= MIN_SAMPLES]
    parts = await submit_all(request, [(("transcribe", decoding), p) for _, p in kept])
    segments = [DiarizedSegment(id=f"seg_{i}", start=t.start, end=t.end, speaker=t.speaker, text=part.text)
                for i, ((t, _), part) in enumerate(zip(kept, parts))]
    body = TranscriptionDiarized(duration=round(len(wave) / SAMPLE_RATE, 3),
                                 text=" ".join(seg.text for seg in segments if seg.text), segments=segments)
    return JSONResponse(body.model_dump())


# OpenAI's server_vad defaults; "auto" waits longer before it ends a segment, since each
# segment is decoded alone and a cut inside a sentence costs its words their context.
SERVER_VAD = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200}
AUTO_VAD = {**SERVER_VAD, "silence_duration_ms": 500}


def chunking(strategy: str | None, kind: str | None, threshold: float | None, prefix_padding_ms: int | None,
             silence_duration_ms: int | None) -> VadSettings | None:
    """The VAD settings that chunking_strategy asks for (None: none), in either of its forms."""
    given = {"threshold": threshold, "prefix_padding_ms": prefix_padding_ms, "silence_duration_ms": silence_duration_ms}
    if strategy is not None and (kind is not None or any(v is not None for v in given.values())):
        raise ApiError(400, "send chunking_strategy either as one field or as chunking_strategy[...] fields",
                       code="invalid_chunking_strategy")
    if strategy is not None and strategy.strip() == "auto":
        return vad_settings(**AUTO_VAD)
    if strategy is not None:
        try:
            given = json.loads(strategy)
        except ValueError:
            given = None
        if not isinstance(given, dict) or given.get("type") != "server_vad":
            raise ApiError(400, 'chunking_strategy must be "auto" or {"type": "server_vad", ...}',
                           code="invalid_chunking_strategy")
        kind = given.pop("type")
        unknown = sorted(set(given) - set(SERVER_VAD))
        if unknown:
            raise ApiError(400, f"chunking_strategy: unknown key {unknown[0]!r}; server_vad takes "
                           f"{', '.join(SERVER_VAD)}", code="invalid_chunking_strategy")
    elif kind is None:
        if any(v is not None for v in given.values()):
            raise ApiError(400, "chunking_strategy[type] is missing (server_vad)", code="invalid_chunking_strategy")
        return None
    return vad_settings(**{**SERVER_VAD, **{k: v for k, v in given.items() if v is not None}})


@router.post("/v1/audio/translations", summary="not served: this model transcribes English only",
             responses={400: {"description": "always: use /v1/audio/transcriptions"}})
async def translations() -> None:
    # OpenAI's route exists so that a client calling it gets a reason, not a 404.
    raise ApiError(400, "this model is English-only and does not translate; use /v1/audio/transcriptions",
                   code="translation_not_supported")
