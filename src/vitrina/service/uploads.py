"""Uploads: a size limit and a time limit enforced while the body streams in, and the safe
image decoder.

:class:`UploadLimitMiddleware` answers 413 from the ``Content-Length`` header before reading
a byte of an oversized body, and counts the bytes of a body without one (chunked), cutting
it off as soon as it passes the limit: a 200 MB upload is never buffered. A body whose next
piece does not come within ``body_timeout`` seconds, or that is not complete within ten
times that, is answered 408 and its connection closed: a client that stops sending cannot
hold a request (and its decode slot) forever. Images are decoded with
:func:`vitrina.io.images.read_image_bytes`, the CLI's reader (decompression-bomb limits,
truncated data refused).
"""

from __future__ import annotations

from typing import Any

import anyio
from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vitrina.errors import ImageReadError
from vitrina.io.images import read_image_bytes
from vitrina.service.errors import ServiceError, error_response

__all__ = ["MAX_PIXELS", "UploadLimitMiddleware", "decode_upload"]

# Decoded uploads live in memory, several at once: 40 MP (120 MB as RGB) is plenty for a photo.
MAX_PIXELS = 40_000_000


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class UploadLimitMiddleware:
    """413 for request bodies over ``max_bytes``, 408 for bodies that stall (``body_timeout``
    seconds without data, or 10x that in all), decided while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.body_timeout = float(body_timeout)

    def _refuse(self, scope: Scope, size: str) -> Any:
        limit = self.max_bytes / 1e6
        return error_response(
            scope,
            413,
            "too_large",
            f"upload {size}is over the limit of {limit:g} MB",
            headers={"Connection": "close"},  # the rest of the body is never read
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, f"of {declared / 1e6:.1f} MB ")(scope, receive, send)
            return
        received = 0
        exceeded = stalled = body_done = False
        started = False
        deadline = anyio.current_time() + 10 * self.body_timeout

        async def counted_receive() -> Message:
            nonlocal received, exceeded, stalled, body_done
            if body_done:  # e.g. a response listening for the client's disconnect
                return await receive()
            wait = min(self.body_timeout, deadline - anyio.current_time())
            try:
                with anyio.fail_after(max(wait, 0.0)):
                    message = await receive()
            except TimeoutError:
                stalled = True
                raise _TooSlow from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded or stalled:  # the app's answer to a cut-off body: replaced below
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not (exceeded or stalled):
                raise
        if started:
            return
        if exceeded:
            await self._refuse(scope, "")(scope, receive, send)
        elif stalled:
            await error_response(
                scope,
                408,
                "body_timeout",
                f"the request body stopped arriving (limit: {self.body_timeout:g} s without "
                f"data, {10 * self.body_timeout:g} s in all)",
                headers={"Connection": "close"},
            )(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def decode_upload(
    data: bytes, *, mode: str = "RGB", min_side: int | None = None, name: str = "image"
) -> Image.Image:
    """The uploaded bytes as a loaded image; 400 ``bad_image`` when they are not a readable
    image (the reason says why: not an image, truncated, too large...)."""
    try:
        return read_image_bytes(
            data, name=name, mode=mode, max_pixels=MAX_PIXELS, min_side=min_side
        )
    except ImageReadError as exc:
        raise ServiceError(400, "bad_image", f"{name}: {exc.reason}") from None
