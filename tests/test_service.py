"""`vitrina serve`: the real service (uvicorn on a loopback port) hit by concurrent HTTP clients.

Classification against ``Classifier.predict`` and search against ``Index.search`` (the batched
fast path against the plain API), tokens, bad uploads, the streaming size limit, a gallery
deleted while serving, concurrent enrolments, a slow client, metrics.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import make_bomb_png, make_dataset, one_line_error
from service_util import bearer, running_service
from vitrina.errors import ImageReadError, VitrinaError
from vitrina.service import DynamicBatcher, ServiceConfig, check_exposure, create_app

READ, WRITE = "read-token-1", "write-token-2"


def upload(data: bytes, name: str = "photo.png") -> dict:
    return {"image": (name, data, "application/octet-stream")}


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["status"] == status and err["code"] == code, err
    assert err["message"] and "\n" not in err["message"]
    return err


def metric(url: str, name: str, **labels: str) -> float:
    """One sample from /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", headers=bearer(READ)).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("svc") / "photos", per_class=8)


@pytest.fixture(scope="module")
def index_dir(toy_run: Path, photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitrina.search.index import Index

    out = tmp_path_factory.mktemp("svcix") / "photos.index"
    Index.build(photos, out, model=str(toy_run), backend="eager", device="cpu").close()
    return out


@pytest.fixture(scope="module")
def url(toy_run: Path, index_dir: Path):
    config = ServiceConfig(
        model=str(toy_run),
        index=str(index_dir),
        token=READ,
        write_token=WRITE,
        max_upload_mb=1,
        batch_window_ms=20,
        backend="eager",
        device="cpu",
    )
    with running_service(config) as base:
        yield base


@pytest.fixture(scope="module")
def bare_url():
    """A service with nothing configured and no write token."""
    with running_service(ServiceConfig(token=READ)) as base:
        yield base


def astronaut(i: int) -> bytes:
    """A JPEG of the astronaut's face, a little different for every ``i`` (crop and tone)."""
    skdata = pytest.importorskip("skimage.data")
    a = skdata.astronaut()
    y, x = 22 + (i % 10) * 2, 112 + (i // 10 % 10) * 2
    crop = np.clip(a[y : y + 200, x : x + 200].astype(np.int16) + i % 7 - 3, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(crop.astype(np.uint8)).save(buf, "JPEG", quality=90 - i // 100)
    return buf.getvalue()


def wall() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def new_gallery(path: Path) -> Path:
    from vitrina.faces import FacePipeline, Gallery

    Gallery.for_pipeline(path, FacePipeline(workers=0))
    return path


# --------------------------------------------------------------------------- decoding


def test_read_image_bytes_decodes_exactly_like_read_image(photos: Path, tmp_path: Path) -> None:
    from vitrina.io import read_image
    from vitrina.io.images import read_image_bytes

    for p in sorted(photos.rglob("*-0[01].*")):
        for min_side in (None, 8):
            a = np.asarray(read_image(p, min_side=min_side))
            b = np.asarray(read_image_bytes(p.read_bytes(), min_side=min_side))
            np.testing.assert_array_equal(a, b)
    good = next(photos.rglob("*.jpg")).read_bytes()
    bomb = make_bomb_png(tmp_path / "bomb.png").read_bytes()
    for data, reason in [
        (good[: len(good) // 2], "truncated"),
        (b"hello", "not an image"),
        (b"", "empty"),
        (bomb, "too large"),
    ]:
        with pytest.raises(ImageReadError) as e:
            read_image_bytes(data, name="upload")
        one_line_error(str(e.value), "upload", reason)


# --------------------------------------------------------------------------- classify


def test_health_is_public_and_names_what_is_served(url: str, toy_run: Path) -> None:
    r = httpx.get(f"{url}/healthz")
    assert r.status_code == 200
    doc = r.json()
    assert doc["status"] == "ok" and doc["model"] == toy_run.name
    assert doc["index"] == "photos.index" and doc["gallery"] is None and doc["version"]


def test_concurrent_classify_is_batched_and_equals_predict(url: str, toy_run: Path, photos: Path):
    import vitrina

    paths = sorted(p for p in photos.rglob("*") if p.is_file())
    expected = vitrina.load(toy_run).predict(paths, top_k=3, backend="eager", device="cpu")
    batches = metric(url, "vitrina_batch_size_count", component="classify")
    items = metric(url, "vitrina_batch_size_sum", component="classify")

    async def classify_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(paths))
        async with httpx.AsyncClient(base_url=url, headers=bearer(READ), limits=limits) as c:
            return await asyncio.gather(
                *(c.post("/v1/classify", files=upload(p.read_bytes(), p.name)) for p in paths)
            )

    answers = asyncio.run(classify_all())
    for p, want, r in zip(paths, expected, answers, strict=True):
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["label"] == want.label, p
        assert got["confidence"] == pytest.approx(want.confidence, rel=1e-5, abs=1e-6)
        assert [t["label"] for t in got["top"]] == [lbl for lbl, _ in want.top]
        probs = [t["probability"] for t in got["top"]]
        assert probs == pytest.approx([q for _, q in want.top], rel=1e-5, abs=1e-6)
        assert got["model"] == toy_run.name and got["backend"] == "eager"
    n_batches = metric(url, "vitrina_batch_size_count", component="classify") - batches
    n_items = metric(url, "vitrina_batch_size_sum", component="classify") - items
    assert n_items == len(paths)
    assert 1 <= n_batches < len(paths), "concurrent requests were not batched together"


def test_top_k_and_query_validation(url: str, photos: Path) -> None:
    data = next(photos.rglob("*.png")).read_bytes()
    c = httpx.Client(base_url=url, headers=bearer(READ))
    assert len(c.post("/v1/classify?top_k=2", files=upload(data)).json()["top"]) == 2
    assert len(c.post("/v1/classify?top_k=50", files=upload(data)).json()["top"]) == 3  # classes
    assert_error(c.post("/v1/classify?top_k=0", files=upload(data)), 422, "validation_error")
    assert_error(c.post("/v1/classify?top_k=x", files=upload(data)), 422, "validation_error")


# --------------------------------------------------------------------------- security


def test_tokens_decide_who_may_read_and_write(url: str, bare_url: str, photos: Path) -> None:
    data = next(photos.rglob("*.png")).read_bytes()
    classify = f"{url}/v1/classify"
    r = httpx.post(classify, files=upload(data))
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    for header in (bearer("nope"), {"Authorization": f"Basic {READ}"}, bearer(READ + "x")):
        assert_error(httpx.post(classify, files=upload(data), headers=header), 401, "unauthorized")
    assert httpx.post(classify, files=upload(data), headers=bearer(WRITE)).status_code == 200
    assert_error(httpx.get(f"{url}/metrics"), 401, "unauthorized")
    assert_error(httpx.get(f"{url}/openapi.json"), 401, "unauthorized")
    enroll = {"files": upload(data), "data": {"name": "x"}}
    err = assert_error(
        httpx.post(f"{url}/v1/faces/enroll", headers=bearer(READ), **enroll), 403, "forbidden"
    )
    assert "write token" in err["message"]
    assert_error(httpx.delete(f"{url}/v1/faces/people/x", headers=bearer(READ)), 403, "forbidden")
    # No write token configured: nobody may write, and the answer says why.
    err = assert_error(
        httpx.post(f"{bare_url}/v1/faces/enroll", headers=bearer(READ), **enroll),
        403,
        "writes_disabled",
    )
    assert "--write-token" in err["message"]


def test_bad_component_or_setting_fails_at_start_with_one_line(tmp_path: Path) -> None:
    for config, needle in [
        (ServiceConfig(model=str(tmp_path / "no-run")), "no-run"),
        (ServiceConfig(index=str(tmp_path / "no-index")), "no-index"),
        (ServiceConfig(gallery=str(tmp_path / "no-gallery")), "no-gallery"),
    ]:
        with pytest.raises(VitrinaError) as e:
            create_app(config)
        one_line_error(str(e.value), needle)
    with pytest.raises(VitrinaError, match="differ"):
        create_app(ServiceConfig(token="same-token", write_token="same-token"))
    with pytest.raises(VitrinaError, match="visible ASCII"):
        create_app(ServiceConfig(token="has space"))
    with pytest.raises(VitrinaError, match="max-upload-mb"):
        ServiceConfig(max_upload_mb=0)
    with pytest.raises(VitrinaError, match="max-batch"):
        ServiceConfig(max_batch=0)


def test_refuses_to_listen_beyond_loopback_without_a_token(toy_run: Path, monkeypatch) -> None:
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from vitrina.cli.serve import register

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_exposure(host, None)
    check_exposure("0.0.0.0", "t0ken")
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        with pytest.raises(VitrinaError) as e:
            check_exposure(host, None)
        one_line_error(str(e.value), host, "without a token", "--token")

    app = typer.Typer()
    register(app)
    app.command("other")(lambda: None)  # keep `serve` a subcommand
    served: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda a, **kw: served.update(app=a, **kw))
    monkeypatch.delenv("VITRINA_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve"])
    assert "nothing to serve" in str(result.exception)
    args = ["serve", "--model", str(toy_run), "--host", "0.0.0.0", "--port", "8123"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, VitrinaError) and "without a token" in str(result.exception)
    assert not served
    result = CliRunner().invoke(app, args, env={"VITRINA_TOKEN": "from-env"})
    assert result.exit_code == 0, result.output
    assert served["host"] == "0.0.0.0" and served["port"] == 8123
    assert served["app"].state.auth.token == "from-env"
    assert served["http"].__name__ == "GuardedH11Protocol"  # the header timeout and the cap


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kind, status, code",
    [
        ("text", 400, "bad_image"),
        ("truncated", 400, "bad_image"),
        ("empty", 400, "bad_image"),
        ("bomb", 400, "bad_image"),
        ("no_file", 422, "validation_error"),
        ("json", 422, "validation_error"),
    ],
)
def test_bad_uploads_get_a_json_error(url, photos, tmp_path, kind, status, code) -> None:
    good = next(photos.rglob("*.jpg")).read_bytes()
    c = httpx.Client(base_url=url, headers=bearer(READ))
    request = {
        "text": {"files": upload(b"just some text", "notes.txt")},
        "truncated": {"files": upload(good[: len(good) // 2], "cut.jpg")},
        "empty": {"files": upload(b"", "empty.jpg")},
        "bomb": {"files": upload(make_bomb_png(tmp_path / "b.png").read_bytes())},
        "no_file": {"data": {"image": "/etc/passwd"}},  # a path is just text, never opened
        "json": {"json": {"image": "/etc/passwd"}},
    }[kind]
    for endpoint in ("/v1/classify", "/v1/search"):
        assert_error(c.post(endpoint, **request), status, code)
    assert c.post("/v1/classify", files=upload(good)).status_code == 200  # still serving


def test_unknown_endpoint_wrong_method_and_missing_component(url: str, bare_url: str) -> None:
    c = httpx.Client(base_url=url, headers=bearer(READ))
    assert "/v1/nothing" in assert_error(c.get("/v1/nothing"), 404, "not_found")["message"]
    assert_error(c.get("/v1/classify"), 405, "method_not_allowed")
    assert_error(c.get("/v1/faces/people"), 404, "not_configured")
    bare = httpx.Client(base_url=bare_url, headers=bearer(READ))
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    for endpoint in ("/v1/classify", "/v1/search", "/v1/faces/identify"):
        err = assert_error(bare.post(endpoint, files=upload(png.getvalue())), 404, "not_configured")
        assert "--" in err["message"]  # names the flag that configures it
    assert_error(bare.get("/v1/search/items/1/thumbnail"), 404, "not_configured")


def test_upload_over_the_limit_is_refused_while_streaming(url: str, photos: Path) -> None:
    c = httpx.Client(base_url=url, headers=bearer(READ), timeout=30)
    start = time.monotonic()
    err = assert_error(c.post("/v1/classify", files=upload(b"\0" * 5_000_000)), 413, "too_large")
    assert "1 MB" in err["message"]
    sent = 0

    def endless():  # 200 MB in 1 MB chunks, no Content-Length: counted as it arrives
        nonlocal sent
        yield b'--xx\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        chunk = b"\1" * 1_000_000
        for _ in range(200):
            sent += len(chunk)
            yield chunk
        yield b"\r\n--xx--\r\n"

    r = c.post(
        "/v1/classify",
        content=endless(),
        headers={"Content-Type": "multipart/form-data; boundary=xx"},
    )
    assert_error(r, 413, "too_large")
    assert sent < 50_000_000, f"the service read {sent / 1e6:.0f} MB before refusing"
    assert time.monotonic() - start < 5
    good = next(photos.rglob("*.png")).read_bytes()
    assert c.post("/v1/classify", files=upload(good)).status_code == 200


def test_slow_client_does_not_hold_up_others(url: str, photos: Path) -> None:
    data = next(photos.rglob("*.png")).read_bytes()
    body = (
        b'--xx\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        + data
        + b"\r\n--xx--\r\n"
    )
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        head = (
            f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {READ}\r\n"
            f"Content-Type: multipart/form-data; boundary=xx\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        slow.sendall(head.encode() + body[:100])  # ...and then nothing for a while
        c = httpx.Client(base_url=url, headers=bearer(READ), timeout=5)
        start = time.monotonic()
        for _ in range(5):
            assert c.post("/v1/classify", files=upload(data)).status_code == 200
        assert c.get("/healthz").status_code == 200
        assert time.monotonic() - start < 3
        for i in range(100, len(body), 200):  # the rest, trickling in
            slow.sendall(body[i : i + 200])
            time.sleep(0.002)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            more = slow.recv(65536)
            if not more:
                break
            reply += more
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert b'"label"' in reply


# --------------------------------------------------------------------------- issue 13: limits


def _half_requests(url: str, n: int) -> list[socket.socket]:
    """``n`` connections that send part of a request head and then nothing (slowloris)."""
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(s)
    return socks


def _closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1024) == b""  # EOF: the server closed it
    except TimeoutError:
        return False  # still open after ``within``
    except ConnectionResetError:
        return True
    finally:
        s.close()


def test_unfinished_headers_are_timed_out_and_cannot_crowd_out_others(
    toy_run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13 #4: connections that never finished their headers stayed open forever and,
    by the thousand, stalled /healthz and classify."""
    config = ServiceConfig(model=str(toy_run), header_timeout_s=0.6, max_connections=12)
    with running_service(config) as base, caplog.at_level("WARNING", "vitrina.service"):
        socks = _half_requests(base, 40)  # over the cap of 12
        start = time.monotonic()
        r = httpx.get(f"{base}/healthz", timeout=5)
        assert r.status_code == 200 and time.monotonic() - start < 2
        time.sleep(1.0)  # past the header timeout
        assert sum(_closed_by_server(s, 2.0) for s in socks) == 40
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    said = [r.getMessage() for r in caplog.records if r.name == "vitrina.service"]
    assert any("over the limit of 12" in m for m in said)
    assert any("no complete request head within 0.6s" in m for m in said)
    assert len(said) <= 4  # once per interval, not once per connection


@pytest.mark.parametrize(
    "head",
    [
        b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # urllib, curl -H
        b"GET /slow HTTP/1.0\r\nHost: x\r\n\r\n",  # HTTP/1.0 closes by default
        b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n",  # kept alive
    ],
    ids=["connection-close", "http-1.0", "keep-alive"],
)
def test_a_request_slower_than_the_header_timeout_is_answered(toy_run: Path, head: bytes) -> None:
    """The header timeout is for heads that never finish, not for slow answers. A request
    with ``Connection: close`` (urllib's default) was cut at the header timeout while its
    answer was being computed: under load, enrolments taking more than 10 s got no answer."""
    import asyncio

    from vitrina.service import ServiceConfig, create_app

    config = ServiceConfig(model=str(toy_run), header_timeout_s=0.3)
    app = create_app(config)

    @app.get("/slow")
    async def slow() -> dict:
        await asyncio.sleep(1.0)  # three header timeouts
        return {"ok": True}

    with running_service(app, settings=config) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(head)
            reply = s.recv(65536)
        assert reply.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")), reply[:200]


def test_a_stalled_upload_is_answered_408(toy_run: Path, photos: Path) -> None:
    data = next(photos.rglob("*.png")).read_bytes()
    config = ServiceConfig(model=str(toy_run), body_timeout_s=0.5)
    with running_service(config) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: multipart/form-data; boundary=xx\r\n"
                + f"Content-Length: {len(data) + 200}\r\n\r\n".encode()
                + b"--xx\r\nContent-Disposition: form-data; name=image; filename=a.png\r\n\r\n"
            )  # ... and the photo never comes
            start = time.monotonic()
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert time.monotonic() - start < 5
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b'"code":"body_timeout"' in reply.replace(b" ", b"")
        ok = httpx.post(f"{base}/v1/classify", files=upload(data), timeout=10)
        assert ok.status_code == 200  # the service is fine


def test_repeated_errors_are_logged_once_per_interval() -> None:
    import logging

    from vitrina.service.server import OncePerInterval

    flt = OncePerInterval(interval=0.3)
    logger = logging.getLogger("vitrina.test.flood")
    logger.propagate = False
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.addFilter(flt)
    try:
        for _ in range(1000):
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                logger.exception("socket.accept() out of system resource")
        logger.error("something else")
        time.sleep(0.35)
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            logger.exception("socket.accept() out of system resource")
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(flt)
    assert seen == [
        "socket.accept() out of system resource",
        "something else",
        "socket.accept() out of system resource (999 more like this in the last 0.3 s)",
    ]


def test_a_flood_of_idle_sockets_under_a_small_file_limit(toy_run: Path, tmp_path: Path) -> None:
    """Issue 13 #4 as reported: `vitrina serve` under a usual file limit, more half-open
    connections than it allows: /healthz and classify keep answering and the log does not
    fill with a traceback per refused accept() (it grew 165 MB in 40 s)."""
    import resource
    import subprocess
    import sys

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    log = tmp_path / "serve.log"

    def small_file_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    cmd = [sys.executable, "-c", "from vitrina.cli import entry; entry()", "serve"]
    cmd += ["--model", str(toy_run)]
    cmd += ["--port", str(port), "--backend", "eager", "--device", "cpu"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=small_file_limit
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        socks = _half_requests(base, 400)
        time.sleep(1.0)
        for _ in range(3):
            start = time.monotonic()
            try:
                assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                raise AssertionError(log.read_text()[-3000:]) from None
            assert time.monotonic() - start < 2
        time.sleep(3.0)
        assert log.stat().st_size < 20_000, log.read_text()[-2000:]
        for s in socks:
            s.close()
    finally:
        proc.terminate()
        proc.wait(20)


def test_search_equals_index_search_and_serves_thumbnails(url, index_dir, photos) -> None:
    from vitrina.search.index import Index

    c = httpx.Client(base_url=url, headers=bearer(READ))
    query = sorted(photos.rglob("*.jpg"))[3]
    r = c.post("/v1/search?k=5", files=upload(query.read_bytes(), "whatever.jpg"))
    assert r.status_code == 200, r.text
    doc = r.json()
    with Index.open(index_dir, backend="eager", device="cpu") as idx:
        want = idx.search([query], k=5)[0].hits
    assert [h["id"] for h in doc["hits"]] == [h.id for h in want]
    assert [h["distance"] for h in doc["hits"]] == pytest.approx(
        [h.distance for h in want], abs=1e-5
    )
    assert [h["name"] for h in doc["hits"]] == [Path(h.path).name for h in want]
    assert [h["rank"] for h in doc["hits"]] == [1, 2, 3, 4, 5]
    assert all("/" not in h["name"] and h["label"] == query.parent.name for h in doc["hits"])
    assert doc["model"]
    t = c.get(f"/v1/search/items/{doc['hits'][0]['id']}/thumbnail")
    assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(t.content)).size) <= 256
    assert_error(c.get("/v1/search/items/999999/thumbnail"), 404, "unknown_item")
    assert_error(c.get("/v1/search/items/abc/thumbnail"), 422, "validation_error")
    assert_error(
        c.post("/v1/search?k=0", files=upload(query.read_bytes())), 422, "validation_error"
    )


def test_index_changes_reach_the_running_service(toy_run, index_dir, photos, tmp_path) -> None:
    """Issue 13 #3: a photo removed with `vitrina index remove` while `serve --index` ran was
    still found and its thumbnail served; added photos stayed invisible until a restart."""
    from conftest import make_image
    from vitrina.cli import main
    from vitrina.search.index import Index

    ix = tmp_path / "live.index"
    shutil.copytree(index_dir, ix)
    query = sorted(photos.rglob("*.jpg"))[3]
    config = ServiceConfig(index=str(ix), token=READ, backend="eager", device="cpu")
    with running_service(config) as base:
        c = httpx.Client(base_url=base, headers=bearer(READ))
        first = c.post("/v1/search?k=3", files=upload(query.read_bytes())).json()["hits"][0]
        assert first["name"] == query.name and first["distance"] < 1e-5
        with Index.open(ix, backend="eager", device="cpu") as other:  # another process's view
            assert other.remove([str(query)]).removed == [str(query.resolve())]
        hits = c.post("/v1/search?k=3", files=upload(query.read_bytes())).json()["hits"]
        assert query.name not in [h["name"] for h in hits]  # the very next request
        assert_error(c.get(f"/v1/search/items/{first['id']}/thumbnail"), 404, "unknown_item")
        extra = make_image(tmp_path / "new" / "violet.png", (150, 30, 200), seed=77)
        assert main(["index", "add", str(ix), str(extra.parent), "--backend", "eager"]) == 0
        hits = c.post("/v1/search?k=1", files=upload(extra.read_bytes())).json()["hits"]
        assert hits[0]["name"] == "violet.png" and hits[0]["distance"] < 1e-5
        t = c.get(f"/v1/search/items/{hits[0]['id']}/thumbnail")
        assert t.status_code == 200


# --------------------------------------------------------------------------- metrics


def test_metrics_count_requests_latency_errors_and_batches(url: str, photos: Path) -> None:
    c = httpx.Client(base_url=url, headers=bearer(READ))
    ok = metric(url, "vitrina_requests_total", endpoint="/v1/classify", status="200")
    bad = metric(url, "vitrina_errors_total", endpoint="/v1/classify", code="bad_image")
    lost = metric(url, "vitrina_requests_total", endpoint="unmatched", status="404")
    c.post("/v1/classify", files=upload(next(photos.rglob("*.png")).read_bytes()))
    c.post("/v1/classify", files=upload(b"not an image"))
    c.get("/no/such/thing")
    assert metric(url, "vitrina_requests_total", endpoint="/v1/classify", status="200") == ok + 1
    assert metric(url, "vitrina_errors_total", endpoint="/v1/classify", code="bad_image") == bad + 1
    assert metric(url, "vitrina_requests_total", endpoint="unmatched", status="404") == lost + 1
    assert metric(url, "vitrina_request_duration_seconds_count", endpoint="/v1/classify") >= 2
    assert metric(url, "vitrina_batch_size_count", component="classify") >= 1
    text = c.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    # Two apps in one process keep separate counts (a registry each).
    other = create_app(ServiceConfig())
    assert b"vitrina_requests_total{" not in other.state.service.metrics.exposition()


def test_random_methods_do_not_grow_the_metrics(url: str) -> None:
    """Issue 13 #10: 3,000 requests with random method names made 3,042 series."""
    import random

    from prometheus_client.parser import text_string_to_metric_families

    def series() -> set[tuple]:
        text = httpx.get(f"{url}/metrics", headers=bearer(READ)).text
        return {
            (s.name, tuple(sorted(s.labels.items())))
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    rng = random.Random(0)

    def random_requests(n: int) -> None:
        with httpx.Client(base_url=url) as c:
            for _ in range(n):
                method = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(8))
                assert c.request(method, "/v1/classify").status_code == 401

    random_requests(10)
    series()  # /metrics' own series exist from here on
    before = series()
    random_requests(300)
    assert series() - before == set()  # 300 more method names, not one more series
    assert metric(url, "vitrina_requests_total", method="other", status="401") >= 310


# --------------------------------------------------------------------------- faces


@pytest.fixture(scope="module")
def face_url(tmp_path_factory: pytest.TempPathFactory):
    gallery = new_gallery(tmp_path_factory.mktemp("faces") / "staff.gallery")
    config = ServiceConfig(gallery=str(gallery), token=READ, write_token=WRITE)
    with running_service(config) as base:
        yield base


def test_enroll_identify_list_and_forget(face_url: str) -> None:
    w = httpx.Client(base_url=face_url, headers=bearer(WRITE), timeout=30)
    r = w.post("/v1/faces/enroll", files=upload(astronaut(0), "e.jpg"), data={"name": "eileen"})
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "eileen", "added": 1, "already": 0, "new_person": True}
    again = w.post("/v1/faces/enroll", files=upload(astronaut(0)), data={"name": "someone"})
    assert again.json() == {"name": "someone", "added": 0, "already": 1, "new_person": False}
    found = w.post("/v1/faces/identify", files=upload(astronaut(37))).json()
    [face] = found["faces"]
    assert face["name"] == "eileen" and face["distance"] < face["threshold"]
    assert set(face["box"]) == {"left", "top", "right", "bottom"}
    assert face["calibrated"] is False and "0.6" in found["threshold_source"]
    assert w.post("/v1/faces/identify", files=upload(wall())).json()["faces"] == []
    assert_error(
        w.post("/v1/faces/enroll", files=upload(wall()), data={"name": "wall"}), 422, "no_face"
    )
    for name in ("../etc", "unknown", " padded"):
        r = w.post("/v1/faces/enroll", files=upload(astronaut(1)), data={"name": name})
        assert_error(r, 400, "bad_name")
    assert w.get("/v1/faces/people").json() == {"people": [{"name": "eileen", "templates": 1}]}
    assert w.delete("/v1/faces/people/eileen").json() == {"name": "eileen", "templates": 1}
    err = assert_error(w.delete("/v1/faces/people/eileen"), 404, "unknown_person")
    assert "staff.gallery" not in err["message"]  # no server paths in answers
    [face] = w.post("/v1/faces/identify", files=upload(astronaut(37))).json()["faces"]
    assert face["name"] == "unknown"


def test_names_bad_on_disk_are_400_and_names_are_stored_in_nfc(face_url: str) -> None:
    """Issue 13 #9 and #13 over HTTP: a 100-emoji name (400 bytes) was a 500; "é" typed two
    ways were two people."""
    w = httpx.Client(base_url=face_url, headers=bearer(WRITE), timeout=30)
    for name in ("😀" * 100, "eve\u200b", "\u202eeve"):
        r = w.post("/v1/faces/enroll", files=upload(astronaut(2)), data={"name": name})
        assert_error(r, 400, "bad_name")
    r = w.post("/v1/faces/enroll", files=upload(astronaut(3)), data={"name": "Rene\u0301"})
    assert r.status_code == 200 and r.json()["name"] == "Ren\u00e9"
    gone = w.delete("/v1/faces/people/Ren\u00e9").json()
    assert gone == {"name": "Ren\u00e9", "templates": 1}


@pytest.mark.parametrize("n", [8, pytest.param(100, marks=pytest.mark.slow)])
def test_concurrent_enrolments_of_different_people(n: int, tmp_path: Path) -> None:
    gallery = new_gallery(tmp_path / "g")
    with running_service(ServiceConfig(gallery=str(gallery), write_token=WRITE)) as base:

        async def enroll_all() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=n)
            async with httpx.AsyncClient(
                base_url=base, headers=bearer(WRITE), limits=limits, timeout=120
            ) as c:
                return await asyncio.gather(
                    *(
                        c.post(
                            "/v1/faces/enroll",
                            files=upload(astronaut(i)),
                            data={"name": f"person {i:03d}"},
                        )
                        for i in range(n)
                    )
                )

        answers = asyncio.run(enroll_all())
        assert [r.status_code for r in answers] == [200] * n, [r.text for r in answers][:3]
        assert all(r.json()["added"] == 1 and r.json()["new_person"] for r in answers)
        people = httpx.get(f"{base}/v1/faces/people").json()["people"]
    assert sorted(p["name"] for p in people) == [f"person {i:03d}" for i in range(n)]
    assert all(p["templates"] == 1 for p in people)


def test_gallery_deleted_while_serving(toy_run: Path, photos: Path, tmp_path: Path) -> None:
    gallery = new_gallery(tmp_path / "g")
    config = ServiceConfig(
        model=str(toy_run), gallery=str(gallery), token=READ, write_token=WRITE, backend="eager"
    )
    with running_service(config) as base:
        c = httpx.Client(base_url=base, headers=bearer(WRITE), timeout=30)
        assert c.get("/v1/faces/people").status_code == 200
        shutil.rmtree(gallery)
        for r in (
            c.post("/v1/faces/identify", files=upload(astronaut(2))),
            c.post("/v1/faces/enroll", files=upload(astronaut(2)), data={"name": "x"}),
            c.get("/v1/faces/people"),
            c.delete("/v1/faces/people/x"),
        ):
            err = assert_error(r, 503, "gallery_unavailable")
            assert str(tmp_path) not in err["message"]
        health = c.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        data = next(photos.rglob("*.png")).read_bytes()
        assert c.post("/v1/classify", files=upload(data)).status_code == 200  # still serving


# --------------------------------------------------------------------------- the batcher


def test_batcher_runs_concurrent_items_together_and_a_lone_one_at_once() -> None:
    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if -1 in items:
            raise ValueError("bad item")
        return [x * 10 for x in items]

    b: DynamicBatcher[int, int] = DynamicBatcher(run, max_batch=8, window_ms=300)

    async def scenario() -> None:
        start = time.monotonic()
        assert await b.run(lambda: 7) == 70  # nobody else coming: no window wait
        assert time.monotonic() - start < 0.25
        gate = threading.Event()

        def slow_prepare(x: int) -> int:
            gate.wait(5)
            return x

        tasks = [asyncio.ensure_future(b.run(lambda x=x: slow_prepare(x))) for x in range(20)]
        await asyncio.sleep(0.05)
        gate.set()
        assert await asyncio.gather(*tasks) == [x * 10 for x in range(20)]
        together = sizes[1:]
        assert sum(together) == 20 and max(together) == 8 and len(together) < 20
        with pytest.raises(ValueError, match="bad item"):
            await asyncio.gather(b.submit(1), b.submit(-1))

    asyncio.run(scenario())
    b.close()
    assert sizes[0] == 1
