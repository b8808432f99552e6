"""Bearer tokens: ``token`` may read, ``write_token`` may read and write (enroll, forget).

Checked by :class:`AuthMiddleware` from the headers alone, before any request body is read
(an unauthenticated client cannot make the service parse a 20 MB upload). The route
dependencies :func:`read_access` / :func:`write_access` check again and put the bearer
scheme into the OpenAPI schema. With no ``token`` configured, reads are open: the service
then refuses to listen anywhere but loopback (:func:`check_exposure`).
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from vitrina.errors import VitrinaError
from vitrina.service.errors import ServiceError, error_response

__all__ = [
    "PUBLIC_ROUTES",
    "ROUTE_KEY",
    "WRITE_ROUTES",
    "Auth",
    "AuthMiddleware",
    "check_exposure",
    "check_token",
    "is_loopback",
    "match_route",
    "read_access",
    "write_access",
]

PUBLIC_ROUTES = frozenset({"healthz", "page", "static"})  # GET only; the page holds no data
WRITE_ROUTES = frozenset({"faces_enroll", "faces_forget"})
ROUTE_KEY = "vitrina.route"  # scope key: the matched route (None: no such endpoint)

_bearer = HTTPBearer(auto_error=False, description="`token` reads; `write_token` also writes.")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a read token: anyone who can reach the port
    could use the service."""
    if not token and not is_loopback(host):
        raise VitrinaError(
            f"refusing to serve on {host} without a token: anyone who can reach it could use "
            "it; set --token (or VITRINA_TOKEN), or serve on 127.0.0.1"
        )


def check_token(value: str | None, what: str) -> str | None:
    """A token must fit in an HTTP header: visible ASCII, no spaces. Empty means none."""
    if not value:
        return None
    if not all(33 <= ord(c) <= 126 for c in value):
        raise VitrinaError(f"{what} must be visible ASCII characters without spaces")
    return value


class Auth:
    """Decides whether a request's ``Authorization`` header grants the access it needs."""

    def __init__(self, token: str | None, write_token: str | None) -> None:
        self.token = check_token(token, "--token")
        self.write_token = check_token(write_token, "--write-token")
        if self.token and self.token == self.write_token:
            raise VitrinaError("--write-token must differ from --token (the read token)")

    def check(self, authorization: str | None, need: str) -> ServiceError | None:
        """None when ``need`` ("public", "read" or "write") is granted, else the error."""
        if need == "public" or (need == "read" and self.token is None):
            return None
        if need == "write" and self.write_token is None:
            return ServiceError(
                403,
                "writes_disabled",
                "this service has no write token, so it cannot enroll or forget: start it "
                "with --write-token (or VITRINA_WRITE_TOKEN)",
            )
        presented = _bearer_value(authorization)
        if presented is None:
            return ServiceError(
                401,
                "unauthorized",
                "missing bearer token: send the header 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if _same(presented, self.write_token):
            return None
        if need == "read" and _same(presented, self.token):
            return None
        if need == "write" and _same(presented, self.token):
            return ServiceError(
                403, "forbidden", "this token may only read; enroll and forget need the write token"
            )
        return ServiceError(
            401,
            "unauthorized",
            "wrong bearer token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def access_of(route: BaseRoute | None, method: str) -> str:
    name = getattr(route, "name", None)
    if name in PUBLIC_ROUTES and method in ("GET", "HEAD"):
        return "public"
    return "write" if name in WRITE_ROUTES else "read"


def match_route(scope: Scope) -> BaseRoute | None:
    """The app route ``scope`` goes to: a full match, else one whose path matches but not the
    method (405), else None (404). Cached in ``scope[ROUTE_KEY]``."""
    if ROUTE_KEY in scope:
        return scope[ROUTE_KEY]
    partial = None
    for route in scope["app"].router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            partial = route
            break
        if match == Match.PARTIAL and partial is None:
            partial = route
    scope[ROUTE_KEY] = partial
    return partial


class AuthMiddleware:
    """Answers 401 / 403 before the app (and its body parsing) runs."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        need = access_of(match_route(scope), scope["method"])
        header = _header(scope, b"authorization")
        problem = self.auth.check(header, need)
        if problem is None:
            await self.app(scope, receive, send)
            return
        response = error_response(
            scope, problem.status, problem.code, problem.message, problem.headers
        )
        await response(scope, receive, send)


def _check(request: Request, need: str) -> None:
    auth: Auth = request.app.state.auth
    problem = auth.check(request.headers.get("authorization"), need)
    if problem is not None:
        raise problem


async def read_access(
    request: Request, _credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> None:
    _check(request, "read")


async def write_access(
    request: Request, _credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> None:
    _check(request, "write")


def _bearer_value(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def _same(presented: str, expected: str | None) -> bool:
    if expected is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def _header(scope: Scope, name: bytes) -> str | None:
    headers: Any = scope.get("headers") or []
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None
