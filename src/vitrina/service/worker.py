"""One worker process of ``vitrina serve --workers N`` (uvicorn's multi-process supervisor).

uvicorn starts each worker with ``spawn`` and finds the app and the HTTP protocol by import
string, so what a worker serves travels in the environment (:data:`vitrina.service.server.CONFIG_ENV`, the
:class:`~vitrina.service.app.ServiceConfig` as JSON, set by
:func:`vitrina.service.server.run_server`): :func:`app` builds the app from it, and
``Protocol`` is the guarded h11 protocol (header timeout, connection cap) for it.

State stays right with several workers because nothing a worker holds is the only copy: the
face gallery takes an exclusive file lock around every write and readers reload when its
revision changes; the index is read-only in the service and reopened when its generation
changes. A worker killed mid-enrolment leaves at most a pending change that the next lock
holder finishes or undoes (see :mod:`vitrina.faces.gallery`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import FastAPI

from vitrina.service.app import ServiceConfig, create_app
from vitrina.service.server import CONFIG_ENV

__all__ = ["app", "config_from_env"]


def config_from_env() -> ServiceConfig:
    """The config the supervisor put in :data:`CONFIG_ENV`."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise RuntimeError(f"{CONFIG_ENV} is not set: workers are started by `vitrina serve`")
    return ServiceConfig(**json.loads(raw))


def app() -> FastAPI:
    """The app factory each worker calls (``uvicorn ... factory=True``)."""
    from vitrina.service.server import install_log_limits

    config = config_from_env()
    install_log_limits(config.log_interval_s)
    return create_app(config)


def __getattr__(name: str) -> Any:
    if name == "Protocol":  # uvicorn's Config.load imports it by name, in each worker
        from vitrina.service.server import connection_cap, guarded_protocol

        config = config_from_env()
        cls = guarded_protocol(config.header_timeout_s, connection_cap(config.max_connections))
        globals()["Protocol"] = cls
        return cls
    raise AttributeError(name)
