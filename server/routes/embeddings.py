from __future__ import annotations

from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from server.deps import known_fields_only, read_upload, submit
from server.errors import ApiError
from server.schemas import Embedding, EmbeddingList
from speechssl.audio import SAMPLE_RATE

router = APIRouter(dependencies=[Depends(known_fields_only)])


@router.post("/v1/embeddings", response_model=EmbeddingList, summary="encoder features of an audio file")
async def embeddings(
    request: Request,
    file: UploadFile = File(..., description="audio: wav, flac, ogg, mp3, ..."),
    pooling: Literal["mean", "none"] = Form("mean", description="mean: one vector; none: one per 20 ms frame"),
    layer: int | None = Form(None, description="transformer layer, 0..N (default: last)"),
    normalize: bool = Form(False, description="scale each vector to unit length"),
) -> EmbeddingList:
    model = request.app.state.model
    if layer is not None and not 0 <= layer <= model.num_layers:
        raise ApiError(400, f"layer must be between 0 and {model.num_layers}, got {layer}", code="invalid_layer")
    wave = await read_upload(request, file)
    frames = await submit(request, ("embed", layer), wave)  # (T, dim)
    vectors = frames.mean(0, keepdims=True) if pooling == "mean" else frames
    if normalize:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    payload = vectors[0].tolist() if pooling == "mean" else vectors.tolist()
    return EmbeddingList(data=[Embedding(embedding=payload)], model=model.name, layer=model.num_layers if layer is None else layer,
                         pooling=pooling, frames=int(frames.shape[0]), duration=len(wave) / SAMPLE_RATE)
