"""An HTTP service over the Python API: classify, search and identify faces (``vitrina serve``).

>>> from vitrina.service import ServiceConfig, create_app
>>> app = create_app(ServiceConfig(model="runs/colours", token="s3cret"))  # doctest: +SKIP
>>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)        # doctest: +SKIP

* :mod:`vitrina.service.app` — ``create_app`` and the endpoints;
* :mod:`vitrina.service.batching` — the dynamic batcher that runs concurrent requests together;
* :mod:`vitrina.service.auth` — bearer tokens (read / write), the loopback-only rule;
* :mod:`vitrina.service.uploads` — the upload size limit and the safe image decoder;
* :mod:`vitrina.service.metrics` — Prometheus metrics, one registry per app.
"""

from vitrina.service import _extra  # noqa: F401  (first: the one-line error without the extra)
from vitrina.service.app import Service, ServiceConfig, create_app
from vitrina.service.auth import check_exposure, is_loopback
from vitrina.service.batching import DynamicBatcher
from vitrina.service.errors import ServiceError

__all__ = [
    "DynamicBatcher",
    "Service",
    "ServiceConfig",
    "ServiceError",
    "check_exposure",
    "create_app",
    "is_loopback",
]
