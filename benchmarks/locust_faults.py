"""The clients of benchmarks/serve_faults.py (locust, headless): classify / search / identify /
enroll against `vitrina serve`. Every answer must be a success or a JSON error
(``{"error": {"status", "code", "message"}}``); anything else is a locust failure. Enrolments
and their answers are appended to $FAULTS_ENROLLED (one JSON line each: name, status, added).

Environment: FAULTS_PHOTOS (folder of photos), FAULTS_FACES (folder of distinct face
photos), VITRINA_TOKEN, VITRINA_WRITE_TOKEN, FAULTS_ENROLLED.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path

from locust import HttpUser, between, task

PHOTOS = [p.read_bytes() for p in sorted(Path(os.environ["FAULTS_PHOTOS"]).glob("*.*"))]
FACES = sorted(Path(os.environ["FAULTS_FACES"]).glob("*.jpg"))
_next_face = itertools.count()
READ = {"Authorization": f"Bearer {os.environ['VITRINA_TOKEN']}"}
WRITE = {"Authorization": f"Bearer {os.environ['VITRINA_WRITE_TOKEN']}"}


def _judge(r) -> None:
    """Success, or a JSON error with its fields; everything else fails the request (a
    connection error too: locust gives it status 0, which is no answer at all)."""
    if r.status_code == 0:
        r.failure(f"no answer: {type(r.error).__name__}: {r.error}")
        return
    if r.status_code < 400:
        r.success()
        return
    try:
        err = r.json()["error"]
        ok = err["status"] == r.status_code and err["code"] and "\n" not in err["message"]
    except Exception:
        ok = False
    if ok:
        r.success()  # a refusal the client can read is a correct answer under faults
    else:
        r.failure(f"{r.status_code} without a JSON error: {r.text[:120]!r}")


class Shopper(HttpUser):
    wait_time = between(0.0, 0.05)

    def _post(self, route: str, data: bytes, name: str, headers=READ, form=None) -> None:
        files = {"image": ("photo.jpg", data, "application/octet-stream")}
        with self.client.post(
            route, files=files, data=form, headers=headers, name=name, catch_response=True
        ) as r:
            _judge(r)

    @task(4)
    def classify(self) -> None:
        self._post("/v1/classify", random.choice(PHOTOS), "classify")

    @task(3)
    def search(self) -> None:
        self._post("/v1/search?k=5", random.choice(PHOTOS), "search")

    @task(2)
    def identify(self) -> None:
        self._post(
            "/v1/faces/identify", FACES[random.randrange(len(FACES))].read_bytes(), "identify"
        )

    @task(1)
    def enroll(self) -> None:
        i = next(_next_face)
        if i >= len(FACES):
            return
        name = f"p{i:04d}"
        files = {"image": ("face.jpg", FACES[i].read_bytes(), "application/octet-stream")}
        with self.client.post(
            "/v1/faces/enroll",
            files=files,
            data={"name": name},
            headers=WRITE,
            name="enroll",
            catch_response=True,
        ) as r:
            _judge(r)
            added = r.status_code == 200 and bool(r.json().get("added"))
            with open(os.environ["FAULTS_ENROLLED"], "a") as f:  # every answer, to check both
                f.write(json.dumps({"name": name, "status": r.status_code, "added": added}) + "\n")
