"""Every error the service answers is JSON: ``{"error": {"status", "code", "message"}}``.

``code`` is short snake_case for programs; ``message`` is one line for people. Handlers here
turn FastAPI's own errors (unknown endpoint, wrong method, validation) into that shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

__all__ = ["ERROR_CODE_KEY", "ServiceError", "error_response", "install_error_handlers"]

ERROR_CODE_KEY = "vitrina.error_code"  # the scope key where the error code is left for metrics

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    503: "unavailable",
    507: "disk_full",
}


class ServiceError(Exception):
    """An answer other than 2xx: HTTP ``status``, a snake_case ``code`` and a one-line message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = _one_line(message)
        self.headers = dict(headers or {})


def error_response(
    scope: dict[str, Any] | None,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON error response (and the code noted in ``scope`` for the metrics)."""
    if scope is not None:
        scope[ERROR_CODE_KEY] = code
    body = {"error": {"status": status, "code": code, "message": _one_line(message)}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def install_error_handlers(app: FastAPI) -> None:
    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return error_response(request.scope, exc.status, exc.code, exc.message, exc.headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        if status == 404 and exc.detail == "Not Found":
            message = f"no endpoint {request.method} {request.url.path}"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        code = _CODES.get(status, "bad_request" if status < 500 else "internal_error")
        return error_response(request.scope, status, code, message, exc.headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(request.scope, 422, "validation_error", _describe(exc))

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def _describe(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: ``body.image: Field required; query.k: ...``."""
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()))
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "error"
