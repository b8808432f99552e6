"""The web service's libraries are the ``serve`` extra (``pip install 'vitrina[serve]'``).

Imported first by :mod:`vitrina.service`, so that using the service without them is one line
naming the extra, not a traceback from deep inside FastAPI's import."""

from vitrina.errors import require

__all__: list[str] = []

for _module in ("fastapi", "uvicorn", "python_multipart", "prometheus_client"):
    require(_module, "serve", "the web service (vitrina serve)")
