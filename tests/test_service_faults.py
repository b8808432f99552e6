"""The service under faults of the machine, not of the client: a full disk under the face
gallery (issue 13, "load with faults"), and `serve --workers` replacing a killed worker.

The full disk needs a real small file system: a tmpfs, which only root may mount; the test
skips (saying why) where mounting is not permitted."""

from __future__ import annotations

import contextlib
import os
import subprocess  # nosec B404 - mount/umount with fixed arguments
from pathlib import Path

import httpx
import pytest

from service_util import bearer, running_service
from test_service import READ, WRITE, assert_error, astronaut, new_gallery, upload


@contextlib.contextmanager
def small_disk(folder: Path, mb: int):
    """A ``mb`` MB tmpfs mounted on ``folder`` for the block; skips the test when it cannot."""
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a tmpfs, and mounting one needs root")
    r = subprocess.run(  # nosec B603 B607
        ["mount", "-t", "tmpfs", "-o", f"size={mb}M", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {r.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)  # nosec B603 B607


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; returns the filler file."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as f:
        for n in (1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * n)
    assert os.statvfs(folder).f_bavail == 0
    return filler


@pytest.mark.slow
def test_enrolment_on_a_full_disk_is_a_json_507_and_works_again_once_freed(tmp_path) -> None:
    from vitrina.faces import Gallery
    from vitrina.service import ServiceConfig

    with small_disk(tmp_path / "disk", 4) as disk:
        gallery = new_gallery(disk / "staff.gallery")
        config = ServiceConfig(gallery=str(gallery), token=READ, write_token=WRITE)
        with running_service(config) as url:
            w = httpx.Client(base_url=url, headers=bearer(WRITE), timeout=300)

            def enroll(i: int, name: str) -> httpx.Response:
                return w.post("/v1/faces/enroll", files=upload(astronaut(i)), data={"name": name})

            assert enroll(0, "before").status_code == 200
            filler = fill(disk)
            err = assert_error(enroll(1, "during"), 507, "disk_full")
            assert "free space" in err["message"] and str(disk) not in err["message"]
            people = w.get("/v1/faces/people")
            assert people.status_code == 200
            assert [p["name"] for p in people.json()["people"]] == ["before"]  # nothing half-kept
            found = w.post("/v1/faces/identify", files=upload(astronaut(37))).json()
            assert [f["name"] for f in found["faces"]] == ["before"]  # reads go on meanwhile

            filler.unlink()  # space back: the same service takes the same enrolment
            r = enroll(1, "during")
            assert r.status_code == 200, r.text
            assert r.json()["added"] == 1
            listed = {p["name"] for p in w.get("/v1/faces/people").json()["people"]}
            assert listed == {"before", "during"}
        assert {p.name for p in Gallery(gallery).people()} == {"before", "during"}


def _workers(parent: int) -> list[int]:
    """uvicorn's worker processes under ``parent`` (not its resource tracker)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if ppid == parent and b"spawn_main" in cmd:
                out.append(int(d.name))
    return sorted(out)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_serve_workers_replace_a_killed_worker_and_drain_on_sigterm(tmp_path) -> None:
    import signal
    import socket
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(  # nosec B603
            [sys.executable, "-m", "vitrina", "serve", "--detector", "hog_people",
             "--port", str(port), "--workers", "2"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/healthz"

    def started() -> int:
        return log.read_text(errors="replace").count("Application startup complete")

    def wait_for(cond, what: str, limit: float = 400) -> None:
        deadline = time.monotonic() + limit
        while not cond():
            assert serve.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"{what}: {log.read_text()[-2000:]}"
            time.sleep(0.2)

    try:
        wait_for(lambda: started() >= 2 and len(_workers(serve.pid)) == 2, "two workers")
        first = _workers(serve.pid)
        os.kill(first[0], signal.SIGKILL)
        answers = [httpx.get(url, timeout=30).status_code for _ in range(5)]
        assert answers == [200] * 5  # the other worker answers meanwhile
        wait_for(lambda: started() >= 3, "a replacement worker")
        now = _workers(serve.pid)
        assert len(now) == 2 and first[0] not in now and first[1] in now
        assert "died" in log.read_text()
        assert httpx.get(url, timeout=30).status_code == 200
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(120) in (0, -signal.SIGTERM)
        assert not [p for p in now if Path(f"/proc/{p}").exists()]  # no worker left behind
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
