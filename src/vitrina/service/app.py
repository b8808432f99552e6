"""``create_app(ServiceConfig)``: the FastAPI app behind ``vitrina serve``.

Layers, outermost first: metrics (and JSON 500s), bearer-token check, upload size limit,
then FastAPI's routing. Components (classifier, index, gallery) load when the app is
created, so a bad ``--model`` fails at start-up with one line, not at the first request.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, File, Form, Query, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST

from vitrina import __version__
from vitrina.engine import available_cores
from vitrina.errors import VitrinaError
from vitrina.service.auth import Auth, AuthMiddleware, read_access, write_access
from vitrina.service.components import Classification, Search, display_name
from vitrina.service.detect import Detection
from vitrina.service.errors import ServiceError, install_error_handlers
from vitrina.service.faces import Faces
from vitrina.service.metrics import MetricsMiddleware, ServiceMetrics
from vitrina.service.schemas import (
    ERROR_RESPONSES,
    ClassifyResponse,
    DetectResponse,
    EnrollResponse,
    ForgetResponse,
    Health,
    IdentifyResponse,
    PeopleResponse,
    SearchResponse,
)
from vitrina.service.uploads import UploadLimitMiddleware

__all__ = ["STATIC_DIR", "Service", "ServiceConfig", "create_app"]

STATIC_DIR = Path(__file__).parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_Image = Annotated[UploadFile, File(description="One photo (JPEG, PNG, WebP, GIF, BMP, TIFF).")]


@dataclass
class ServiceConfig:
    """What to serve and how. ``model``: a run folder or zoo name (classification);
    ``index``: an index folder (search); ``gallery``: a face gallery folder; ``detector``: a
    detection run folder or a detector name (``hog_people``...); ``detector_flip``: it also
    looks at each photo mirrored and fuses the answers (``--flip``); ``detector_scales``: and
    at these multiples of its input size (``--scales``). ``token`` reads,
    ``write_token`` reads and writes (enroll, forget); no ``token``: reads are open (serve on
    loopback only). ``max_upload_mb``: largest request body, in MB (10^6 bytes).

    Limits against slow or hostile clients (see :mod:`vitrina.service.server`):
    ``header_timeout_s``: a connection must complete its request head this soon after it
    opens (or after its previous answer); ``body_timeout_s``: the longest wait for the next
    piece of a request body (and the whole body must arrive within 10x that);
    ``max_connections``: open connections at most (None: the file limit less a reserve),
    the oldest idle one is closed to make room; ``keep_alive_s``: idle time between requests
    on one connection; ``log_interval_s``: a repeated error is logged once per interval."""

    model: str | None = None
    index: str | None = None
    gallery: str | None = None
    detector: str | None = None
    detector_flip: bool = False
    detector_scales: tuple[float, ...] = (1.0,)
    token: str | None = None
    write_token: str | None = None
    max_upload_mb: float = 20
    batch_window_ms: float = 5
    max_batch: int = 32
    backend: str = "auto"
    device: str = "auto"
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int | None = None
    keep_alive_s: float = 5.0
    log_interval_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise VitrinaError(f"--max-upload-mb must be above 0, got {self.max_upload_mb}")
        if not self.batch_window_ms >= 0:
            raise VitrinaError(f"--batch-window-ms must be 0 or more, got {self.batch_window_ms}")
        if self.max_batch < 1:
            raise VitrinaError(f"--max-batch must be at least 1, got {self.max_batch}")
        for flag, value in (
            ("--header-timeout", self.header_timeout_s),
            ("--body-timeout", self.body_timeout_s),
            ("--keep-alive", self.keep_alive_s),
        ):
            if not value > 0:
                raise VitrinaError(f"{flag} must be above 0 seconds, got {value}")
        if self.detector_flip and not self.detector:
            raise VitrinaError("--flip is for the detector: give --detector RUN")
        if tuple(self.detector_scales) != (1.0,) and not self.detector:
            raise VitrinaError("--scales is for the detector: give --detector RUN")
        if self.max_connections is not None and self.max_connections < 2:
            raise VitrinaError(f"--max-connections must be at least 2, got {self.max_connections}")


class Service:
    """The loaded components of one app, its metrics and its token check."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.auth = Auth(config.token, config.write_token)
        self.metrics = ServiceMetrics()
        # Decoded uploads are held in memory: bound how many decode at once.
        self.limiter = anyio.CapacityLimiter(max(2, 2 * available_cores()))
        batching: dict[str, Any] = dict(
            backend=config.backend,
            device=config.device,
            max_batch=config.max_batch,
            window_ms=config.batch_window_ms,
            metrics=self.metrics,
            limiter=self.limiter,
        )
        self.classification: Classification | None = None
        self.search: Search | None = None
        self.faces: Faces | None = None
        self.detection: Detection | None = None
        try:
            if config.model:
                self.classification = Classification(config.model, **batching)
            if config.index:
                self.search = Search(config.index, **batching)
            if config.gallery:
                self.faces = Faces(config.gallery, limiter=self.limiter)
            if config.detector:
                self.detection = Detection(
                    config.detector,
                    flip=config.detector_flip,
                    scales=tuple(config.detector_scales),
                    **batching,
                )
        except BaseException:
            self.close()  # e.g. the index's thread, when the gallery is the bad one
            raise

    def health(self) -> tuple[int, dict[str, Any]]:
        c = self.config
        broken = (self.search is not None and not self.search.available()) or (
            self.faces is not None and not self.faces.available()
        )
        body = {
            "status": "degraded" if broken else "ok",
            "model": display_name(c.model) if c.model else None,
            "index": display_name(c.index) if c.index else None,
            "gallery": display_name(c.gallery) if c.gallery else None,
            "detector": display_name(c.detector) if c.detector else None,
            "version": __version__,
        }
        return (503 if broken else 200), body

    def close(self) -> None:
        for part in (self.classification, self.search, self.detection):
            if part is not None:
                part.close()


def _need(part: Any, what: str, flag: str) -> Any:
    if part is None:
        raise ServiceError(
            404, "not_configured", f"{what} is not configured: start the service with {flag}"
        )
    return part


async def _read(upload: UploadFile) -> bytes:
    try:
        return await upload.read()  # at most max_upload_mb: the limit applies to the body
    finally:
        await upload.close()


def create_app(config: ServiceConfig) -> FastAPI:
    """The app for ``config``; loads the model, index and gallery now."""
    service = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="vitrina",
        version=__version__,
        description="Classify photos, find similar ones, identify faces, detect objects. "
        "Every endpoint but "
        "`/healthz` and the page needs `Authorization: Bearer <token>`.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.auth = service.auth
    install_error_handlers(app)
    read = [Depends(read_access)]
    write = [Depends(write_access)]

    @app.get("/healthz", name="healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz(response: Response) -> dict[str, Any]:
        """Liveness and what is served; 503 when a configured component became unavailable."""
        response.status_code, body = service.health()
        return body

    @app.post(
        "/v1/classify",
        name="classify",
        response_model=ClassifyResponse,
        responses=ERROR_RESPONSES,
        dependencies=read,
    )
    async def classify(
        image: _Image, top_k: Annotated[int, Query(ge=1, le=1000)] = 3
    ) -> JSONResponse:
        """The top classes of the photo (needs `--model`)."""
        part = _need(service.classification, "classification", "--model RUN")
        return JSONResponse(await part.classify(await _read(image), top_k))

    @app.post(
        "/v1/search",
        name="search",
        response_model=SearchResponse,
        responses=ERROR_RESPONSES,
        dependencies=read,
    )
    async def search(image: _Image, k: Annotated[int, Query(ge=1, le=1000)] = 10) -> JSONResponse:
        """The `k` indexed photos most like this one (needs `--index`)."""
        part = _need(service.search, "search", "--index INDEX")
        return JSONResponse(await part.search(await _read(image), k))

    @app.get(
        "/v1/search/items/{id}/thumbnail",
        name="search_thumbnail",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **ERROR_RESPONSES},
        dependencies=read,
    )
    async def thumbnail(id: int) -> Response:
        """A JPEG thumbnail (longest side 256) of an indexed photo."""
        part = _need(service.search, "search", "--index INDEX")
        return Response(await part.thumbnail(id), media_type="image/jpeg")

    @app.post(
        "/v1/faces/identify",
        name="faces_identify",
        response_model=IdentifyResponse,
        responses=ERROR_RESPONSES,
        dependencies=read,
    )
    async def identify(image: _Image) -> dict[str, Any]:
        """Every face in the photo with the enrolled person's name, or "unknown"."""
        return await _need(service.faces, "face gallery", "--gallery GALLERY").identify(
            await _read(image)
        )

    @app.post(
        "/v1/faces/enroll",
        name="faces_enroll",
        response_model=EnrollResponse,
        responses=ERROR_RESPONSES,
        dependencies=write,
    )
    async def enroll(image: _Image, name: Annotated[str, Form(max_length=200)]) -> dict[str, Any]:
        """Add the photo's (largest) face to the person `name` (needs the write token)."""
        part = _need(service.faces, "face gallery", "--gallery GALLERY")
        return await part.enroll(await _read(image), name)

    @app.get(
        "/v1/faces/people",
        name="faces_people",
        response_model=PeopleResponse,
        responses=ERROR_RESPONSES,
        dependencies=read,
    )
    async def people() -> dict[str, Any]:
        """Everyone enrolled, with their template counts."""
        return await _need(service.faces, "face gallery", "--gallery GALLERY").people()

    @app.delete(
        "/v1/faces/people/{name}",
        name="faces_forget",
        response_model=ForgetResponse,
        responses=ERROR_RESPONSES,
        dependencies=write,
    )
    async def forget(name: str) -> dict[str, Any]:
        """Remove a person and all their templates (needs the write token)."""
        return await _need(service.faces, "face gallery", "--gallery GALLERY").forget(name)

    @app.post(
        "/v1/detect",
        name="detect",
        response_model=DetectResponse,
        responses=ERROR_RESPONSES,
        dependencies=read,
    )
    async def detect(
        image: _Image, min_score: Annotated[float | None, Query(ge=0.0)] = None
    ) -> JSONResponse:
        """Every object the detector finds in the photo: box (the photo's own pixels), label
        and score, best first (needs `--detector`); `min_score` defaults to the detector's."""
        part = _need(service.detection, "detection", "--detector RUN")
        return JSONResponse(await part.detect(await _read(image), min_score))

    @app.get("/metrics", name="metrics", response_class=Response, dependencies=read)
    async def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", name="page", include_in_schema=False)
    async def page() -> Response:
        index_html = STATIC_DIR / "index.html"
        if not index_html.is_file():
            raise ServiceError(404, "not_found", "the web page is not installed")
        # The page loads nothing but the service's own files (checked by the browser test).
        return FileResponse(index_html, media_type="text/html", headers=PAGE_HEADERS)

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    max_bytes = round(config.max_upload_mb * 1_000_000)
    app.add_middleware(  # innermost
        UploadLimitMiddleware, max_bytes=max_bytes, body_timeout=config.body_timeout_s
    )
    app.add_middleware(AuthMiddleware, auth=service.auth)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)  # outermost
    return app
