"""``vitrina serve``: the HTTP service and its web page."""

from __future__ import annotations

from pathlib import Path

import typer

from vitrina.cli._choices import Backend
from vitrina.cli._common import BACKEND_HELP, DEVICE_HELP, err


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
) -> None:
    """Serve classification, search and face identification over HTTP, with a web page at /.

    Example: VITRINA_TOKEN=s3cret vitrina serve --model runs/shop --index shop.index
    """
    from vitrina.errors import VitrinaError
    from vitrina.service import ServiceConfig, check_exposure, create_app

    if not (model or index or gallery):
        raise VitrinaError("nothing to serve: give --model, --index and/or --gallery")
    check_exposure(host, token)
    config = ServiceConfig(
        model=model,
        index=str(index) if index else None,
        gallery=str(gallery) if gallery else None,
        token=token,
        write_token=write_token,
        max_upload_mb=max_upload_mb,
        batch_window_ms=batch_window_ms,
        max_batch=max_batch,
        backend=backend,
        device=device,
    )
    app = create_app(config)
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    err.print(f"serving on http://{shown}:{port}/ (Ctrl-C stops)")
    if not token:
        err.print("[yellow]no --token:[/] reads are open to anyone on this machine")
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
