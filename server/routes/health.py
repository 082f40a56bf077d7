from __future__ import annotations

from fastapi import APIRouter, Request

from server.errors import ApiError
from server.schemas import Health, ModelCard, ModelList
from speechssl.audio import SAMPLE_RATE

router = APIRouter()


@router.get("/health", response_model=Health, summary="liveness")
async def health() -> Health:
    return Health(status="ok")


@router.get("/ready", response_model=Health, summary="readiness: the model is loaded and warmed up")
async def ready(request: Request) -> Health:
    if not request.app.state.ready:
        raise ApiError(503, "the model is still loading", "server_error", "not_ready", {"Retry-After": "1"})
    return Health(status="ready")


@router.get("/v1/models", response_model=ModelList, summary="the loaded checkpoint")
async def models(request: Request) -> ModelList:
    model = request.app.state.model
    source = model.metadata.get("source")
    return ModelList(data=[ModelCard(id=model.name, hidden_size=model.hidden_size, num_layers=model.num_layers,
                                     sample_rate=SAMPLE_RATE, heads=model.heads,
                                     family=source.get("family", "wav2vec2") if isinstance(source, dict) else "wav2vec2",
                                     source=source.get("format", "speechssl") if isinstance(source, dict) else "speechssl",
                                     precision=model.precision,
                                     quantize=request.app.state.settings.quantize)])
