"""Speaker vectors and verification (needs a checkpoint with a speaker head)."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends, File, Request, UploadFile

from server.deps import known_fields_only, read_upload, require_head, submit, submit_all
from server.errors import ApiError
from server.schemas import SpeakerEmbedding, SpeakerVerification

router = APIRouter(dependencies=[Depends(known_fields_only)])


@router.post("/v1/speakers/embed", response_model=SpeakerEmbedding, summary="a unit-length speaker vector")
async def embed(request: Request, file: UploadFile = File(..., description="audio of one speaker")) -> SpeakerEmbedding:
    require_head(request, "speaker")
    vector = await submit(request, ("speaker",), await read_upload(request, file))
    return SpeakerEmbedding(embedding=vector.tolist(), dim=int(vector.shape[0]))


@router.post("/v1/speakers/verify", response_model=SpeakerVerification,
             summary="do two recordings hold the same speaker?")
async def verify(request: Request, file_a: UploadFile = File(...), file_b: UploadFile = File(...)) -> SpeakerVerification:
    model = require_head(request, "speaker")
    threshold = model.speaker_threshold
    if threshold is None:
        raise ApiError(400, f"checkpoint {model.name!r} has a speaker head but no speaker_threshold to verify "
                       "against; use /v1/speakers/embed and compare the vectors", code="head_missing")
    wave_a = await read_upload(request, file_a)
    wave_b = await read_upload(request, file_b)
    # Both vectors go through the batcher at once, so they usually share one forward pass.
    a, b = await submit_all(request, [(("speaker",), wave_a), (("speaker",), wave_b)])
    score = float(np.dot(a, b))  # unit vectors: the cosine, as SpeechModel.verify computes it
    return SpeakerVerification(score=score, threshold=threshold, same_speaker=score >= threshold)
