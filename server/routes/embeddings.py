"""POST /v1/embeddings: encoder features of one or more audio files, in OpenAI's embeddings
shape (``data[i].embedding`` with ``index``, ``usage``, ``encoding_format=float|base64``).

Several ``file`` parts give one entry each, in order (at most ``max_files``; together they
share the request's upload and audio limits), computed in the same device batches.
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from server.deps import known_fields_only, read_uploads, submit_all
from server.errors import ApiError
from server.schemas import Embedding, EmbeddingList, Usage
from speechssl.audio import SAMPLE_RATE

router = APIRouter(dependencies=[Depends(known_fields_only)])


@router.post("/v1/embeddings", response_model=EmbeddingList, summary="encoder features of audio files")
async def embeddings(
    request: Request,
    file: list[UploadFile] = File(..., description="audio: wav, flac, ogg, mp3, ...; repeat the part for several files"),
    pooling: Literal["mean", "none"] = Form("mean", description="mean: one vector; none: one per 20 ms frame"),
    layer: int | None = Form(None, description="transformer layer, 0..N (default: last)"),
    normalize: bool = Form(False, description="scale each vector to unit length"),
    encoding_format: Literal["float", "base64"] = Form("float", description="base64: float32 little-endian bytes"),
) -> EmbeddingList:
    model = request.app.state.model
    if layer is not None and not 0 <= layer <= model.num_layers:
        raise ApiError(400, f"layer must be between 0 and {model.num_layers}, got {layer}", code="invalid_layer")
    waves = await read_uploads(request, file)
    results = await submit_all(request, [(("embed", layer), wave) for wave in waves])  # (T, dim) each
    data = []
    for index, (wave, frames) in enumerate(zip(waves, results)):
        vectors = frames.mean(0, keepdims=True) if pooling == "mean" else frames
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        vectors = vectors[0] if pooling == "mean" else vectors
        payload = (base64.b64encode(vectors.astype("<f4").tobytes()).decode() if encoding_format == "base64"
                   else vectors.tolist())
        data.append(Embedding(index=index, embedding=payload, frames=int(frames.shape[0]),
                              duration=len(wave) / SAMPLE_RATE))
    total = sum(e.frames for e in data)
    return EmbeddingList(data=data, model=model.name, layer=model.num_layers if layer is None else layer,
                         pooling=pooling, frames=total, duration=sum(e.duration for e in data),
                         usage=Usage(prompt_tokens=total, total_tokens=total))
