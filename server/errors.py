"""One error shape for every failure: {"error": {"message", "type", "code"}} with a 4xx status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from speechssl.api import HeadMissingError
from speechssl.audio import AudioDecodeError, AudioError, AudioTooLongError
from speechssl.errors import SpeechSSLError

log = logging.getLogger("speechssl.server")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type_, code, headers


def error_response(status: int, message: str, type_: str, code: str | None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "code": code}}, status_code=status, headers=headers)


def library_error(exc: SpeechSSLError) -> ApiError:
    """The 4xx answer to an error the library raised about a request: undecodable audio 415,
    too long 413, other bad audio 400, a head the checkpoint lacks 400, anything else 400."""
    if isinstance(exc, AudioDecodeError):
        return ApiError(415, str(exc), code="unsupported_audio")
    if isinstance(exc, AudioTooLongError):
        return ApiError(413, str(exc), code="audio_too_long")
    if isinstance(exc, AudioError):
        return ApiError(400, str(exc), code="invalid_audio")
    if isinstance(exc, HeadMissingError):
        return ApiError(400, str(exc), code="head_missing")
    return ApiError(400, str(exc), code="invalid_request")


HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 408: "body_timeout", 413: "upload_too_large"}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.type, exc.code, exc.headers)

    @app.exception_handler(SpeechSSLError)
    async def _library(request: Request, exc: SpeechSSLError):
        error = library_error(exc)
        return error_response(error.status, error.message, error.type, error.code, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", []) if p != "body")
            parts.append(f"{where}: {err.get('msg')}")
        return error_response(422, "; ".join(parts) or "invalid request", "invalid_request_error", "validation_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error", code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # A bug of ours, not the client's: log it with the request id, keep the worker alive.
        log.exception("request %s failed", getattr(request.state, "request_id", "?"))
        return error_response(500, "internal error; see the server log", "server_error", None)
