"""Running the app under uvicorn with the limits a service on a shared network needs.

uvicorn brings some of them (``timeout_keep_alive``: idle connections between requests;
h11's 16 KB cap on an incomplete request head). What it lacks (uvicorn issue #157, "--timeout-request-start") is written here, as little
as possible:

* **A header timeout** (:func:`guarded_protocol`): a connection that has not completed its
  request head within ``header_timeout`` seconds of connecting, or of its previous response,
  is closed. Before, a client that never finished its headers held a connection forever;
  a few thousand of them exhausted the file descriptors and stalled every endpoint.
* **A hard connection cap**: beyond ``max_connections`` open connections (by default the
  process' file limit less a reserve), the oldest connection still waiting for its request
  head is closed to make room (or the newcomer, when every connection is busy with a
  request), so a flood of idle sockets can never take the last file descriptor — the one
  ``accept()`` and the model files need.
* **Errors logged once per interval** (:class:`OncePerInterval`): a repeated log record
  (same logger, message and exception type) is written once per ``interval`` with the count
  of the ones left out, instead of a traceback per event (165 MB of "Too many open files"
  in 40 s).

The body timeout lives where bodies are read: :class:`vitrina.service.uploads.UploadLimitMiddleware`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import threading
import time
from collections import OrderedDict
from typing import Any

from vitrina.service.app import ServiceConfig

__all__ = [
    "CONFIG_ENV",
    "LIMITED_LOGGERS",
    "OncePerInterval",
    "config_to_env",
    "connection_cap",
    "guarded_protocol",
    "install_log_limits",
    "run_server",
    "server_settings",
]

log = logging.getLogger("vitrina.service")

# uvicorn's listen backlog, which asyncio also uses as the number of connections accepted in
# one go (before any of them runs connection_made and the cap can close one): the file
# descriptors a burst can take beyond the cap.
BACKLOG = 100
# File descriptors kept free, beyond those open at start: one burst of accepts, and what the
# service opens later (index and gallery files, SQLite journals, thumbnails, logs).
FD_RESERVE = BACKLOG + 32
LIMITED_LOGGERS = ("asyncio", "uvicorn.error", "vitrina.service")
#: The environment variable that carries the config to the workers of ``--workers N``
#: (:mod:`vitrina.service.worker` reads it back).
CONFIG_ENV = "VITRINA_SERVE_CONFIG"


def config_to_env(config: ServiceConfig) -> str:
    """``config`` as the JSON a worker reads back."""
    return json.dumps(dataclasses.asdict(config))


#: Seconds uvicorn's supervisor waits for a worker to answer its ping before it kills and
#: replaces it. uvicorn's default (5 s) counts a worker's start too: on a loaded machine
#: importing torch and loading the model took longer, and the supervisor killed every new
#: worker before it could answer, for ever (seen under `benchmarks/serve_faults.py`). A dead
#: worker is noticed within 0.5 s whatever this is; only a hung one waits this long.
WORKER_HEALTHCHECK_S = 120


def connection_cap(requested: int | None = None) -> int:
    """``requested``, or what the open-file limit leaves: the soft limit less the files open
    now (libraries, the model, the index) and :data:`FD_RESERVE` more (at least 16)."""
    if requested is not None:
        return int(requested)
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: assume a typical process
        open_now = 64
    return max(16, int(soft) - open_now - FD_RESERVE)


def guarded_protocol(header_timeout: float, max_connections: int) -> type:
    """uvicorn's h11 protocol class with the header timeout and the connection cap."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    waiting_for_head: dict[int, OrderedDict[int, Any]] = {}  # per server: oldest first

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_deadline: Any = None
            waiting = waiting_for_head.setdefault(id(self.server_state), OrderedDict())
            self._waiting = waiting
            if len(self.connections) > max_connections:
                victim = next(iter(waiting.values()), None) if waiting else self
                _limited("closed connections over the limit of %d", max_connections)
                victim._close_waiting()
                if victim is self:
                    return
            self._await_head()

        def _await_head(self) -> None:
            """Start (again) the wait for a complete request head."""
            if self._head_deadline is not None:
                self._head_deadline.cancel()
            self._head_deadline = self.loop.call_later(header_timeout, self._head_too_slow)
            self._waiting[id(self)] = self

        def _head_arrived(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None
            self._waiting.pop(id(self), None)

        def _head_too_slow(self) -> None:
            _limited(
                "closed connections that sent no complete request head within %gs",
                header_timeout,
            )
            self._close_waiting()

        def _close_waiting(self) -> None:
            self._head_arrived()
            if not self.transport.is_closing():
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            # Any state past IDLE means h11 parsed a whole request head: SEND_BODY, DONE, and
            # MUST_CLOSE, which is where a request with ``Connection: close`` (urllib's,
            # HTTP/1.0's) goes as soon as it is read. Counting MUST_CLOSE as "no head yet" cut
            # such requests at the header timeout while their answer was being computed.
            if self._head_deadline is not None and self.conn.their_state is not h11.IDLE:
                self._head_arrived()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._await_head()  # a kept-alive connection waits for its next head

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_arrived()
            super().connection_lost(exc)

    return GuardedH11Protocol


class OncePerInterval(logging.Filter):
    """Let a record through once per ``interval`` seconds for each (logger, message, exception
    type); the next one that passes says how many were left out meanwhile."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = float(interval)
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, str(record.msg), exc)
        now = time.monotonic()
        with self._lock:
            last, skipped = self._seen.get(key, (-float("inf"), 0))
            if now - last < self.interval:
                self._seen[key] = (last, skipped + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 10_000:  # messages with ever-changing text: forget old keys
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
        if skipped:
            record.msg = f"{record.msg} ({skipped} more like this in the last {self.interval:g} s)"
        return True


def install_log_limits(interval: float = 60.0) -> OncePerInterval:
    """Rate-limit the loggers that a misbehaving client can make talk (idempotent)."""
    for name in LIMITED_LOGGERS:
        logger = logging.getLogger(name)
        for f in list(logger.filters):
            if isinstance(f, OncePerInterval):
                logger.removeFilter(f)
    flt = OncePerInterval(interval)
    for name in LIMITED_LOGGERS:
        logging.getLogger(name).addFilter(flt)
    return flt


def _limited(message: str, *args: Any) -> None:
    log.warning(message, *args)  # rate-limited by install_log_limits


def server_settings(config: ServiceConfig) -> dict[str, Any]:
    """The ``uvicorn.run`` / ``uvicorn.Config`` keyword arguments that give a server
    ``config``'s limits (and rate-limit the loggers a client can make talk)."""
    cap = connection_cap(config.max_connections)
    install_log_limits(config.log_interval_s)
    # Not uvicorn's limit_concurrency: it counts idle connections too, so under a flood of
    # sockets that never send a request it would answer 503 to every real one. The cap above
    # bounds connections by closing the idle ones first; work in flight is bounded by the
    # decode limiter and the batchers.
    return {
        "http": guarded_protocol(config.header_timeout_s, cap),
        "timeout_keep_alive": max(1, round(config.keep_alive_s)),
        "backlog": BACKLOG,
    }


def run_server(
    config: ServiceConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    on_start: Any = None,
) -> None:
    """Serve ``config`` until SIGINT / SIGTERM (in-flight requests are answered first, 5 s at
    most).

    ``workers`` > 1: that many processes share the socket under uvicorn's supervisor, which
    starts a new worker when one dies (a crash, a kill, the OOM killer) within 0.5 s (it
    serves once it has loaded, like any start) and replaces one that stops answering its
    ping for :data:`WORKER_HEALTHCHECK_S`; the others go on answering meanwhile. The app is
    built once here first, so a bad model, index or gallery is one clear error before any
    worker starts. See
    :mod:`vitrina.service.worker` for why the gallery and index stay right across workers.
    ``on_start``: called with no arguments once the app loaded (the CLI prints where).
    """
    import uvicorn

    from vitrina.errors import VitrinaError
    from vitrina.service.app import create_app

    if workers < 1:
        raise VitrinaError(f"--workers must be at least 1, got {workers}")
    app = create_app(config)
    common = {
        "host": host,
        "port": port,
        "log_level": "info",
        "timeout_graceful_shutdown": 5,
    }
    if on_start is not None:
        on_start()
    if workers == 1:
        uvicorn.run(app, **common, **server_settings(config))
        return
    del app  # each worker loads its own (vitrina.service.worker, named below by import string)
    os.environ[CONFIG_ENV] = config_to_env(config)
    install_log_limits(config.log_interval_s)
    uvicorn.run(
        "vitrina.service.worker:app",
        factory=True,
        workers=workers,
        http="vitrina.service.worker:Protocol",
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        timeout_keep_alive=max(1, round(config.keep_alive_s)),
        backlog=BACKLOG,
        **common,
    )
