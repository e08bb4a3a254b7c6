"""The API's exceptions and their ONE mapping to API.md's error shape."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from shared.storage import InvalidObjectKey

log = logging.getLogger("vlmq.api")


class ApiError(Exception):
    status_code = 400
    code = "bad_request"
    headers: dict[str, str] | None = None  # response headers that belong to the error (Retry-After)

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.details = details or {}


class ValidationFailed(ApiError):
    status_code, code = 400, "validation_error"


class Unauthorized(ApiError):
    status_code, code = 401, "unauthorized"


class NotFound(ApiError):
    status_code, code = 404, "not_found"


class Conflict(ApiError):
    status_code, code = 409, "conflict"


class JobAlreadyFinished(Conflict):
    code = "job_already_finished"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"


class PayloadTooLarge(ApiError):
    status_code, code = 413, "media_too_large"


class UnsupportedMedia(ApiError):
    status_code, code = 415, "unsupported_media"


class InvalidMedia(ApiError):
    status_code, code = 422, "invalid_media"


class ImageTooLarge(InvalidMedia):
    """More pixels than VLMQ_MAX_IMAGE_PIXELS, told from the header: a decompression bomb is never decoded."""

    code = "image_too_large"


class TooManyRequests(ApiError):
    """429: a limit of the tenant's (services.api.limits); ``Retry-After`` says when to try again."""

    status_code, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code, details=details)
        self.headers = {"Retry-After": str(retry_after_s)}


class DependencyDown(ApiError):
    status_code, code = 503, "dependency_unavailable"


class DatabaseDown(DependencyDown):
    code = "database_unavailable"


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


# Routes that follow OpenAI's shapes, errors included (API.md, OpenAI-compatible routes).
OPENAI_PATHS = ("/v1/chat/completions", "/v1/files", "/v1/batches")


def speaks_openai(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in OPENAI_PATHS)


def openai_error_body(status_code: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object: what its client turns into ``openai.APIStatusError`` subclasses."""
    kind = "server_error" if status_code >= 500 else "requests" if status_code == 429 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(request: Request, status_code: int, code: str, message: str,
                   details: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one place an error becomes a response: API.md's shape, or OpenAI's on its routes."""
    if speaks_openai(request.url.path):
        location = ((details or {}).get("errors") or [{}])[0].get("loc", [])
        param = ".".join(location[1:] if location[:1] == ["body"] else location) or None
        return JSONResponse(openai_error_body(status_code, code, message, param), status_code, headers)
    return JSONResponse(error_body(code, message, details), status_code, headers)


_STATUS_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "media_too_large"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status_code == 401 else error.headers
        return error_response(request, error.status_code, error.code, error.message, error.details, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": [str(part) for part in item.get("loc", ())], "message": item.get("msg", "")}
            for item in error.errors()
        ]
        message = "; ".join(f"{'.'.join(p['loc'])}: {p['message']}" for p in problems) or "invalid request"
        return error_response(request, 400, "validation_error", message, {"errors": problems})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(error.status_code, "http_error")
        return error_response(request, error.status_code, code, str(error.detail), None,
                              getattr(error, "headers", None))

    @app.exception_handler(InvalidObjectKey)
    async def _invalid_object_key(request: Request, error: Exception) -> JSONResponse:
        # A store refused a key that got past the request's own checks (shared.storage.keys): the
        # key is the client's input, so a 400 like those checks give, never a 500.
        log.warning("a store refused an object key: %s", error)
        return error_response(request, 400, "validation_error", f"invalid object key: {error}")

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, error: Exception) -> JSONResponse:
        # The client went away (or the server closed a connection whose body stalled) while its
        # body was being read: nobody is left to answer, and it is no fault of the API's.
        log.info("the client of %s %s went away before its body ended", request.method, request.url.path)
        return error_response(request, 400, "client_disconnected", "the request body did not arrive")

    @app.exception_handler(DataError)
    async def _unstorable_value(request: Request, error: Exception) -> JSONResponse:
        # A value the database cannot hold (a NUL character in a path or query parameter…): the
        # client's input, not the server's fault.
        log.info("refused a value the database cannot store: %s", str(error).splitlines()[0][:200])
        return error_response(request, 400, "validation_error", "the request holds a value that cannot be stored, "
                              "such as a NUL character")

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(request: Request, error: Exception) -> JSONResponse:
        # The connection pool drops the broken connections; the next request gets fresh ones.
        log.warning("database unavailable: %s", str(error).splitlines()[0][:200])
        return error_response(request, 503, "database_unavailable", "the database is not reachable; retry shortly",
                              headers={"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=error)
        return error_response(request, 500, "internal_error", "internal error; it has been logged")
