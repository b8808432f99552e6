"""Run the real service in a test: uvicorn on a free loopback port, in a background thread.

from service_util import running_service
with running_service(ServiceConfig(model=str(toy_run), token="t")) as url:
    httpx.post(f"{url}/v1/classify", files={"image": ...}, headers=bearer("t"))
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["bearer", "running_service"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def running_service(
    config: Any, *, startup_timeout: float = 60.0, settings: Any = None
) -> Iterator[str]:
    """Serve ``config`` (a :class:`vitrina.service.ServiceConfig`, or an app made by
    ``create_app``, served with the limits of ``settings``) on 127.0.0.1 at a free port;
    yields the base URL (no trailing slash). The server stops (lifespan shutdown included)
    when the block exits."""
    import uvicorn

    from vitrina.service import ServiceConfig, create_app
    from vitrina.service.server import server_settings

    if settings is None:
        settings = config if isinstance(config, ServiceConfig) else ServiceConfig()
    app = create_app(config) if isinstance(config, ServiceConfig) else config
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound here: no race for the port with other tests
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
            **server_settings(settings),  # the limits `vitrina serve` runs with
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the test service did not start (see the log above)")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
