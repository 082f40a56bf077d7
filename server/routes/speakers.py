"""Speaker vectors and verification (needs a checkpoint with a speaker head)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Request, UploadFile

from server.deps import known_fields_only, read_upload, read_uploads, require_head, submit_all
from server.errors import ApiError
from server.schemas import SpeakerEmbedding, SpeakerVector, SpeakerVerification

router = APIRouter(dependencies=[Depends(known_fields_only)])


@router.post("/v1/speakers/embed", response_model=SpeakerEmbedding, summary="unit-length speaker vectors")
async def embed(request: Request, file: list[UploadFile] = File(
        ..., description="audio of one speaker; repeat the part for several files (at most max_files, "
                         "sharing the upload and audio limits)")) -> SpeakerEmbedding:
    require_head(request, "speaker")
    waves = await read_uploads(request, file)
    vectors = await submit_all(request, [(("speaker",), wave) for wave in waves])  # batched together
    return SpeakerEmbedding(embedding=vectors[0].tolist(), dim=int(vectors[0].shape[0]),
                            data=[SpeakerVector(index=i, embedding=v.tolist()) for i, v in enumerate(vectors)])


@router.post("/v1/speakers/verify", response_model=SpeakerVerification,
             summary="do two recordings hold the same speaker?")
async def verify(request: Request, file_a: UploadFile = File(...), file_b: UploadFile = File(...)) -> SpeakerVerification:
    model = require_head(request, "speaker")
    if model.verify_threshold is None:
        raise ApiError(400, f"checkpoint {model.name!r} has a speaker head but no speaker_threshold to verify "
                       "against; use /v1/speakers/embed and compare the vectors", code="head_missing")
    wave_a = await read_upload(request, file_a)
    wave_b = await read_upload(request, file_b)
    # Both vectors go through the batcher at once, so they usually share one forward pass.
    a, b = await submit_all(request, [(("speaker",), wave_a), (("speaker",), wave_b)])
    return SpeakerVerification(**model.verification(a, b).to_dict())
