"""Prometheus metrics, one registry per app (two apps in one process never share counters).

``vitrina_requests_total{endpoint,method,status}``, ``vitrina_request_duration_seconds
{endpoint}``, ``vitrina_errors_total{endpoint,code}``, ``vitrina_batch_size{component}``
(requests per inference batch) and ``vitrina_batch_duration_seconds{component}``. Clients
cannot grow the label set: ``endpoint`` is the route's path template
(``/v1/search/items/{id}/thumbnail``) or ``unmatched``, ``method`` one of the HTTP methods
of RFC 9110 or ``other``, ``status`` a number from 100 to 599 or ``other``.

:class:`MetricsMiddleware` is the outermost layer: it also turns any unexpected exception into
a JSON 500, so every answer has the error shape and is counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vitrina.service.auth import match_route
from vitrina.service.errors import ERROR_CODE_KEY, error_response

__all__ = ["KNOWN_METHODS", "MetricsMiddleware", "ServiceMetrics"]

log = logging.getLogger("vitrina.service")

# Anything else a client sends as a method (any token is valid HTTP) is counted as "other".
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """The app's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vitrina_requests",
            "HTTP requests answered.",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "vitrina_request_duration_seconds",
            "Time from request to the end of the answer.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "vitrina_errors", "Error answers by code.", ["endpoint", "code"], registry=r
        )
        self.batch_size = Histogram(
            "vitrina_batch_size",
            "Requests run together in one inference batch.",
            ["component"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "vitrina_batch_duration_seconds",
            "Time one inference batch took.",
            ["component"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def batch_observer(self, component: str) -> Callable[[int, float], None]:
        """An ``on_batch(items, seconds)`` callback for a :class:`DynamicBatcher`."""
        size = self.batch_size.labels(component)
        seconds = self.batch_seconds.labels(component)

        def observe(n: int, s: float) -> None:
            size.observe(n)
            seconds.observe(s)

        return observe

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Times and counts every request; an unhandled exception becomes a JSON 500."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = match_route(scope)
        endpoint = getattr(route, "path", None) or "unmatched"
        start = time.perf_counter()
        status = 500
        started = False

        async def send_status(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            log.exception("%s %s failed", scope["method"], scope["path"])
            if not started:
                response = error_response(
                    scope, 500, "internal_error", "internal error; the service log has details"
                )
                await response(scope, receive, send_status)
        finally:
            m = self.metrics
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            code = str(status) if 100 <= status <= 599 else "other"
            m.requests.labels(endpoint, method, code).inc()
            m.latency.labels(endpoint).observe(time.perf_counter() - start)
            if status >= 400:
                m.errors.labels(endpoint, scope.get(ERROR_CODE_KEY) or str(status)).inc()
