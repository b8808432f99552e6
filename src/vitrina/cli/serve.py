"""``vitrina serve``: the HTTP service and its web page."""

from __future__ import annotations

from pathlib import Path

import typer

from vitrina.cli._choices import Backend
from vitrina.cli._common import BACKEND_HELP, DEVICE_HELP, err, flip_option, scales_option


def serve(
    model: str | None = typer.Option(
        None, "--model", "-m", help="Run folder (or zoo name) to classify with: /v1/classify."
    ),
    index: Path | None = typer.Option(
        None, "--index", help="Index folder (`vitrina index build`) to search: /v1/search."
    ),
    gallery: Path | None = typer.Option(
        None, "--gallery", help="Face gallery folder (`vitrina faces enroll`): /v1/faces/*."
    ),
    detector: str | None = typer.Option(
        None,
        "--detector",
        help="Detection run folder (`vitrina detect train`) or hog_people / hog_faces: /v1/detect.",
    ),
    flip: bool = flip_option(),
    scales: str = scales_option(),  # parsed to a tuple of floats
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="VITRINA_TOKEN",
        help="Bearer token for reading (required off loopback). Prefer the environment "
        "variable: command lines are visible to other users.",
        show_default=False,
    ),
    write_token: str | None = typer.Option(
        None,
        "--write-token",
        envvar="VITRINA_WRITE_TOKEN",
        help="Bearer token for reading and writing (enroll, forget); without it, no writes.",
        show_default=False,
    ),
    max_upload_mb: float = typer.Option(20, help="Largest upload, in MB."),
    batch_window_ms: float = typer.Option(
        5, help="Longest wait for concurrent requests to batch together."
    ),
    max_batch: int = typer.Option(32, help="Most images per inference batch."),
    backend: Backend = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    header_timeout: float = typer.Option(
        10, help="Seconds a connection may take to send its request headers."
    ),
    body_timeout: float = typer.Option(
        30, help="Seconds without upload data before a request is answered 408 (10x in all)."
    ),
    max_connections: int | None = typer.Option(
        None,
        help="Open connections at most; the oldest idle one is closed to make room "
        "(default: what the open-file limit leaves).",
        show_default=False,
    ),
    workers: int = typer.Option(
        1,
        min=1,
        help="Worker processes sharing the port; one that dies is replaced at once (it "
        "serves once loaded) while the others answer. Each loads its own model copy.",
    ),
) -> None:
    """Serve classification, search, face identification and detection over HTTP, with a web
    page at /.

    Example: VITRINA_TOKEN=s3cret vitrina serve --model runs/shop --index shop.index
    """
    from vitrina.errors import VitrinaError
    from vitrina.service import ServiceConfig, check_exposure

    if not (model or index or gallery or detector):
        raise VitrinaError("nothing to serve: give --model, --index, --gallery and/or --detector")
    check_exposure(host, token)
    config = ServiceConfig(
        model=model,
        index=str(index) if index else None,
        gallery=str(gallery) if gallery else None,
        detector=detector,
        detector_flip=flip,
        detector_scales=scales,  # type: ignore[arg-type]
        token=token,
        write_token=write_token,
        max_upload_mb=max_upload_mb,
        batch_window_ms=batch_window_ms,
        max_batch=max_batch,
        backend=backend,
        device=device,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        max_connections=max_connections,
    )
    from vitrina.service.server import run_server

    shown = f"[{host}]" if ":" in host else host

    def started() -> None:
        err.print(f"serving on http://{shown}:{port}/ (Ctrl-C stops)")
        if not token:
            err.print("[yellow]no --token:[/] reads are open to anyone on this machine")

    run_server(config, host=host, port=port, workers=workers, on_start=started)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
