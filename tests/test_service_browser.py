"""The service's web page in headless Chromium: a person enters the token, picks or drops a
photo, and sees the class, the similar images and the faces.

Playwright drives Debian's ``chromium`` (never a downloaded browser build); without that
binary the tests skip, saying so. The service is the real one (uvicorn on a loopback port)
with the toy colour classifier, an index of colour photos and an empty-ish face gallery.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import COLORS, make_dataset, make_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary on PATH (Debian: apt-get install chromium; .ci/run installs it)",
)

READ, WRITE = "read-token-for-the-page", "write-token-for-the-page"
ERROR = re.compile(r"\berror\b")  # the class of a status line that reports a failure


# --------------------------------------------------------------------------- service


@pytest.fixture(scope="module")
def index_dir(toy_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitrina.search import Index

    root = tmp_path_factory.mktemp("page-index")
    data = make_dataset(root / "data", per_class=3)
    Index.build(data, root / "ix", model=str(toy_run), backend="eager", device="cpu").close()
    return root / "ix"


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dlib gallery with one person, enrolled from a synthetic face vector."""
    from vitrina.faces.gallery import Gallery
    from vitrina.faces.pipeline import FacePipeline
    from vitrina.faces.types import Box, Face, PhotoFaces

    path = tmp_path_factory.mktemp("page-gallery") / "g"
    gallery = Gallery.for_pipeline(path, FacePipeline())
    vector = np.random.default_rng(0).standard_normal(128).astype(np.float32) * 0.05
    face = Face(
        Box(0, 0, 40, 40), np.zeros((5, 2), np.float32), np.zeros((8, 8, 3), np.uint8), vector
    )
    digest = hashlib.sha256(b"alice").hexdigest()
    gallery.enroll("alice", PhotoFaces(Path("alice.jpg"), [face], (40, 40), None, digest))
    return path


@pytest.fixture(scope="module")
def service(toy_run: Path, index_dir: Path, gallery_dir: Path) -> Iterator[str]:
    from service_util import running_service
    from vitrina.service import ServiceConfig

    config = ServiceConfig(
        model=str(toy_run),
        index=str(index_dir),
        gallery=str(gallery_dir),
        token=READ,
        write_token=WRITE,
        backend="eager",
        device="cpu",
    )
    with running_service(config) as url:
        yield url


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


class Visit:
    """A fresh tab that records every request and uncaught script error."""

    def __init__(self, browser, base: str) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": 1000, "height": 1400})
        self.page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.requests: list[str] = []
        self.script_errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.script_errors.append(str(e)))

    def open(self, token: str | None = READ) -> None:
        self.page.goto(self.base + "/")
        if token is not None:
            self.page.get_by_label("Access token").fill(token)
            self.page.get_by_role("button", name="Use token").click()

    def foreign_requests(self) -> list[str]:
        """Requests that left this service (a CDN, a font host...): the page makes none."""
        own = (self.base + "/", "blob:", "data:")
        return [u for u in self.requests if not u.startswith(own)]


@pytest.fixture
def visit(browser, service: str) -> Iterator[Visit]:
    v = Visit(browser, service)
    yield v
    v.context.close()
    assert v.script_errors == []
    assert v.foreign_requests() == []


def photo(tmp_path: Path, colour: str, size: int = 64) -> Path:
    return make_image(tmp_path / f"{colour}-photo.png", COLORS[colour], size=size, seed=99)


def drop_file(page, selector: str, path: Path, mime: str = "image/png") -> None:
    """What a person dragging a file from the desktop onto ``selector`` produces."""
    data = base64.b64encode(path.read_bytes()).decode()
    page.evaluate(
        """([selector, data, name, mime]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            const zone = document.querySelector(selector);
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
            }
        }""",
        [selector, data, path.name, mime],
    )


# --------------------------------------------------------------------------- tests


def test_picked_photo_shows_its_class_similar_images_and_people(
    visit: Visit, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = visit.page
    visit.open()
    page.set_input_files("#photo", str(photo(tmp_path, "red")))

    expect(page.locator("#classes li.top .label")).to_have_text("red")
    expect(page.locator("#classes li")).to_have_count(3)  # three classes, top_k capped
    hits = page.locator("#hits li")
    expect(hits).to_have_count(8)
    expect(hits.first.locator(".tag")).to_have_text("red")
    # Thumbnails are fetched with the token and shown as blob: images that really decoded.
    page.wait_for_function(
        """() => [...document.querySelectorAll('#hits img')].every(
            (i) => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)"""
    )
    expect(page.locator("#faces-status")).to_have_text("No face found in this photo.")
    expect(page.locator("#people li")).to_have_text(["alice · 1 template"])
    alts = page.eval_on_selector_all("img", "(imgs) => imgs.map((i) => i.alt)")
    assert alts and all(a.strip() for a in alts)

    # A second photo, dropped this time, replaces the first answer.
    drop_file(page, "#drop-zone", photo(tmp_path, "blue"))
    expect(page.locator("#classes li.top .label")).to_have_text("blue")
    expect(page.locator("#preview-caption")).to_contain_text("blue-photo.png")
    expect(page.locator("#hits li").first.locator(".tag")).to_have_text("blue")


def test_wrong_token_is_explained_and_the_token_lasts_for_the_tab(
    visit: Visit, browser, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = visit.page
    visit.open("not-the-token")
    page.set_input_files("#photo", str(photo(tmp_path, "green")))
    status = page.locator("#classify-status")
    expect(status).to_contain_text("refused the token")
    expect(status).to_have_class(ERROR)
    expect(page.locator("#classes li")).to_have_count(0)

    page.reload()
    expect(page.get_by_label("Access token")).to_have_value("not-the-token")
    other = browser.new_context().new_page()  # another tab session: nothing stored there
    other.goto(visit.base + "/")
    expect(other.get_by_label("Access token")).to_have_value("")
    other.context.close()


def test_faces_are_drawn_and_enrolling_needs_the_write_token(visit: Visit, tmp_path: Path) -> None:
    """Identification answers are stubbed (no real face in a generated photo) so the boxes can
    be checked; enrolling goes to the real service: 403 with the read token, then, with the
    write token, the service's own "no face" answer for this faceless photo."""
    from playwright.sync_api import expect

    page = visit.page
    faces = {
        "faces": [
            {"box": {"left": 20, "top": 16, "right": 60, "bottom": 56}, "name": "alice",
             "distance": 0.31, "threshold": 0.6, "calibrated": False},
            {"box": {"left": 100, "top": 40, "right": 150, "bottom": 120}, "name": "unknown",
             "distance": 0.82, "threshold": 0.6, "calibrated": True},
        ],
        "threshold_source": "default",
    }  # fmt: skip
    page.route(
        "**/v1/faces/identify",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(faces)
        ),
    )
    visit.open()
    page.set_input_files("#photo", str(make_image(tmp_path / "two.png", COLORS["red"], size=200)))

    boxes = page.locator("#stage .box")
    expect(boxes).to_have_count(2)
    expect(boxes.locator(".box-label")).to_have_text(["1. alice", "2. unknown"])
    expect(boxes.nth(1)).to_have_class("box unknown")
    # placed in percent of the photo: left 100 / 200 px, width 50 / 200 px
    style = boxes.nth(1).get_attribute("style") or ""
    assert "left: 50%" in style and "width: 25%" in style
    expect(page.locator("#faces-status")).to_have_text("2 face(s), 1 recognised")

    page.get_by_role("button", name="Enroll face 2 as a person").click()
    name = page.get_by_label("Name")
    expect(name).to_be_focused()
    name.fill("bob")
    with page.expect_request("**/v1/faces/enroll") as sent:
        name.press("Enter")
    assert b'name="name"\r\n\r\nbob' in (sent.value.post_data_buffer or b"")
    status = page.locator("#faces li").nth(1).locator("p")
    expect(status).to_contain_text("Not allowed with this token")
    expect(status).to_have_class(ERROR)

    page.get_by_label("Access token").fill(WRITE)
    # the photo is analysed again: wait for that answer, not only for "not busy" (which also
    # holds in the moment before the new request starts, and the list is then redrawn)
    with page.expect_response("**/v1/faces/identify"):
        page.get_by_role("button", name="Use token").click()
    expect(page.locator("#faces-section")).to_have_attribute("aria-busy", "false")
    page.get_by_role("button", name="Enroll face 2 as a person").click()
    page.get_by_label("Name").fill("bob")
    page.get_by_role("button", name="Enroll", exact=True).click()
    status = page.locator("#faces li").nth(1).locator("p")
    # A real enrolment: the cascade searches the whole photo with dlib's CNN when HOG finds
    # nothing, seconds on a loaded 2-core runner, so this answer gets longer than the default.
    expect(status).to_have_class(ERROR, timeout=60_000)
    expect(status).to_contain_text(re.compile(r"^Could not enroll bob: .*face"))
    expect(page.locator("#people li")).to_have_count(1)  # nobody was added

    # What a photo with a real face gets (stubbed): a confirmation, and the list is reloaded.
    enrolled = {"name": "bob", "added": 1, "already": 0, "new_person": True}
    page.route(
        "**/v1/faces/enroll",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(enrolled)
        ),
    )
    page.get_by_role("button", name="Enroll", exact=True).click()
    expect(status).to_have_text("Enrolled as bob (new person).")
    expect(page.get_by_label("Name")).to_have_count(0)  # the form closed
    expect(page.locator("#people-section")).to_have_attribute("aria-busy", "false")


def test_sections_follow_what_the_service_serves(browser, toy_run: Path, tmp_path: Path) -> None:
    """A service with only a model and no token: the page shows classification alone and
    works without a token."""
    from playwright.sync_api import expect

    from service_util import running_service
    from vitrina.service import ServiceConfig

    config = ServiceConfig(model=str(toy_run), index=None, gallery=None, token=None,
                           write_token=None, backend="eager", device="cpu")  # fmt: skip
    with running_service(config) as url:
        v = Visit(browser, url)
        try:
            v.open(token=None)
            page = v.page
            expect(page.locator("#service-status")).to_contain_text("classifier")
            for hidden in ("#search-section", "#faces-section", "#people-section"):
                expect(page.locator(hidden)).to_be_hidden()
            expect(page.locator("#classify-section")).to_be_visible()
            page.set_input_files("#photo", str(photo(tmp_path, "green")))
            expect(page.locator("#classes li.top .label")).to_have_text("green")
            assert v.script_errors == [] and v.foreign_requests() == []
        finally:
            v.context.close()


def test_detected_objects_are_drawn_on_the_photo(browser, tmp_path: Path) -> None:
    """A service with only a detector (OpenCV's HOG people detector: no training): the page
    draws a box per person, in the photo's place, and lists them."""
    from playwright.sync_api import expect

    from service_util import running_service
    from test_detect import street_photo
    from vitrina.service import ServiceConfig

    path, truth = street_photo(tmp_path / "street.png")
    config = ServiceConfig(detector="hog_people", token=READ, backend="eager", device="cpu")
    with running_service(config) as url:
        v = Visit(browser, url)
        try:
            v.open()
            page = v.page
            expect(page.locator("#service-status")).to_contain_text("detector hog_people")
            for hidden in ("#classify-section", "#search-section", "#faces-section"):
                expect(page.locator(hidden)).to_be_hidden()
            page.set_input_files("#photo", str(path))
            expect(page.locator("#detect-status")).to_contain_text("2 object(s): 2 person")
            boxes = page.locator("#stage .det-box")
            expect(boxes).to_have_count(2)
            expect(page.locator("#objects li")).to_have_count(2)
            img = page.locator("#preview-img").bounding_box()
            scale = img["width"] / 420
            drawn = sorted(
                (b["x"] - img["x"]) / scale for b in (boxes.nth(i).bounding_box() for i in range(2))
            )
            lefts = sorted(t[0] for t in truth)
            assert abs(drawn[0] - lefts[0]) < 30 and abs(drawn[1] - lefts[1]) < 30, (drawn, lefts)
            assert v.script_errors == [] and v.foreign_requests() == []
        finally:
            v.context.close()
