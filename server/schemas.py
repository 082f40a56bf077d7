"""Wire types of the HTTP API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "speechssl"
    hidden_size: int
    num_layers: int
    sample_rate: int
    heads: list[str]
    family: str = Field(description="the architecture: wav2vec2 (trained here or imported), or the transformers "
                        "family it was imported from: hubert, data2vec-audio, wavlm")
    source: str = Field(description="speechssl (trained here), or transformers (imported from a folder)")
    precision: Literal["fp32", "bf16"] = Field(description="the encoder's compute: fp32, or bf16 autocast")
    quantize: Literal["int8"] | None = Field(None, description="int8: int8 matmul weights (CPU)")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class Embedding(BaseModel):
    object: str = "embedding"
    index: int = 0  # the file's place among the request's file parts
    embedding: list[float] | list[list[float]] | str = Field(
        description="floats; with encoding_format=base64 the float32 little-endian bytes (frames x dim when pooling=none)")
    frames: int
    duration: float


class Usage(BaseModel):
    prompt_tokens: int = Field(description="encoder frames (20 ms each) of all the files")
    total_tokens: int


class EmbeddingList(BaseModel):
    object: str = "list"
    data: list[Embedding]
    model: str
    layer: int
    pooling: str
    frames: int  # all the files together
    duration: float
    usage: Usage


class Health(BaseModel):
    status: str


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class Transcription(BaseModel):
    text: str
    logprobs: list[TokenLogprob] | None = None  # with include[]=logprobs: one entry per word


class TranscriptionWord(BaseModel):
    word: str
    start: float
    end: float
    probability: float = Field(description="in (0, 1]: geometric mean of the letters' CTC posteriors")


class TranscriptionSegment(BaseModel):
    id: int
    seek: int = Field(description="the segment's start in centiseconds (Whisper's 10 ms frames)")
    start: float
    end: float
    text: str
    tokens: list[int] = Field(description="the CTC vocabulary ids that spell the text (word boundaries included)")
    temperature: float = Field(0.0, description="always 0: CTC decoding does not sample")
    avg_logprob: float = Field(description="mean natural log of the words' probabilities")
    compression_ratio: float = Field(description="text bytes over their zlib size, as Whisper reports it")
    no_speech_prob: float = Field(0.0, description="always 0: a segment exists only where words were decoded")


class TranscriptionVerbose(BaseModel):
    task: str = "transcribe"
    language: str = "english"
    duration: float
    text: str
    segments: list[TranscriptionSegment]
    words: list[TranscriptionWord] | None = None  # only when word timestamps were asked for, as OpenAI does


class SpeakerVector(BaseModel):
    index: int  # the file's position in the request
    embedding: list[float]


class SpeakerEmbedding(BaseModel):
    embedding: list[float]  # the first file's vector
    dim: int
    data: list[SpeakerVector]  # every file's, in order


class SpeakerVerification(BaseModel):
    score: float  # cosine of the two speaker vectors, or its cohort normalisation ("scoring")
    threshold: float
    same_speaker: bool
    scoring: str  # "cosine" or "as-norm" (speechssl.metrics.ScoreNorm)


class SpeechTimestamp(BaseModel):
    start: float  # seconds
    end: float


class SpeechTimestamps(BaseModel):
    duration: float  # seconds of audio
    backend: str  # the detector: silero or energy
    segments: list[SpeechTimestamp]


class SpeakerTurn(BaseModel):
    start: float  # seconds
    end: float
    speaker: str  # A, B, ... in order of first appearance, or an enrolled speaker's name


class Diarization(BaseModel):
    duration: float
    speakers: list[str]
    turns: list[SpeakerTurn]


class DiarizedSegment(BaseModel):
    """OpenAI's TranscriptionDiarizedSegment: one speaker turn and what was said in it."""
    id: str
    type: Literal["transcript.text.segment"] = "transcript.text.segment"
    start: float
    end: float
    speaker: str
    text: str


class TranscriptionDiarized(BaseModel):
    task: Literal["transcribe"] = "transcribe"
    duration: float
    text: str
    segments: list[DiarizedSegment]
