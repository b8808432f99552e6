"""Stateful property test of the face Gallery against a plain in-memory model.

Random sequences of enroll / enroll-again / forget / rename (and merge) / reopen, with a write
failure injected into some steps (the n-th os.replace / os.fsync / os.unlink of the step
raises). Faces are given as PhotoFaces with synthetic vectors (no dlib), as a pipeline would
give them. After every step:

* the people and their templates are the model's last committed state, in the open gallery
  and in one opened afresh (a rename interrupted by the failure is finished by the next
  reader, from its journal);
* every template has its chip on disk, no photo is a template twice, and a chip without a
  template exists only where a failed write left it (see the defect-12 test below).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from faults import Fault, InjectedFault, inject
from vitrina.faces.gallery import Gallery, GalleryError
from vitrina.faces.types import Box, Face, PhotoFaces

DIM = 16
NAMES = ("ana", "bob", "cy")
TAGS = tuple(f"t{i}" for i in range(8))

faults = st.one_of(
    st.none(),
    st.builds(Fault, st.sampled_from(("replace", "fsync", "unlink")), st.integers(1, 5)),
)


def key(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest() + ":0"


def photo(tag: str) -> PhotoFaces:
    vec = np.random.default_rng(int(tag[1:])).standard_normal(DIM).astype(np.float32) * 0.1
    chip = np.full((8, 8, 3), int(tag[1:]) * 30 % 256, np.uint8)
    face = Face(Box(0, 0, 40, 40), np.zeros((5, 2), np.float32), chip, vec, 0)
    digest = hashlib.sha256(tag.encode()).hexdigest()
    return PhotoFaces(Path(f"/photos/{tag}.jpg"), [face], (100, 100), None, digest)


Model = dict[str, frozenset[str]]  # person -> face keys


class GalleryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="vitrina-stateful-gallery-"))
        self.path = self.tmp / "g"
        self.model: Model = {}
        self.may_be_orphaned: set[str] = set()  # chips a failed write may have left
        self.g: Gallery | None = None

    @initialize()
    def create(self) -> None:
        self.g = Gallery.create(self.path, dim=DIM, fingerprint="fp", embedder_label="synthetic")

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _held(self) -> Model:
        assert self.g is not None
        return {p.name: frozenset(p.photos) for p in self.g.people()}

    def _chips_on_disk(self) -> set[str]:
        return {p.relative_to(self.path).as_posix() for p in self.path.glob("chips/*/*.png")}

    def _run(self, fault: Fault | None, op, expected: Model) -> None:
        before = dict(self.model)
        chips_before = self._chips_on_disk()
        try:
            with inject(fault):
                op()
        except (InjectedFault, GalleryError):  # forget names chips it could not delete
            held = self._held()  # a reader: finishes an interrupted rename from its journal
            assert held in (before, expected), "a failed write left a state that is neither"
            self.model = held
            self.may_be_orphaned |= self._chips_on_disk() | chips_before
            return
        self.model = expected

    # ------------------------------------------------------------------ rules

    @rule(
        name=st.sampled_from(NAMES),
        tags=st.lists(st.sampled_from(TAGS), min_size=1, max_size=3),
        fault=faults,
    )
    def enroll(self, name: str, tags: list[str], fault: Fault | None) -> None:
        assert self.g is not None
        owned = {k for ks in self.model.values() for k in ks}
        new = {key(t) for t in tags} - owned
        expected = dict(self.model)
        if new:
            expected[name] = self.model.get(name, frozenset()) | new
        report = None

        def op() -> None:
            nonlocal report
            report = self.g.enroll(name, [photo(t) for t in tags])

        self._run(fault, op, expected)
        if report is not None:
            assert len(report.added) == len(new)
            assert len(report.added) + len(report.already) == len(tags)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), fault=faults)
    def forget(self, data, fault: Fault | None) -> None:
        assert self.g is not None
        name = data.draw(st.sampled_from(sorted(self.model)))
        expected = {n: k for n, k in self.model.items() if n != name}
        before = self._chips_on_disk()
        self._run(fault, lambda: self.g.forget(name), expected)
        if fault is not None and fault.fired and fault.call == "unlink":
            # forget() ignores a failed chip delete and reports success: pinned by
            # test_forget_that_cannot_delete_a_chip_says_so below; tolerated here.
            self.may_be_orphaned |= before
        if name not in self.model:  # forgotten: none of their chips may stay
            left = {c for c in self._chips_on_disk() if Path(c).parent.name == name}
            assert left <= self.may_be_orphaned, f"chips of a forgotten person: {sorted(left)}"

    @precondition(lambda self: self.model)
    @rule(data=st.data(), new=st.sampled_from(NAMES), fault=faults)
    def rename(self, data, new: str, fault: Fault | None) -> None:
        assert self.g is not None
        old = data.draw(st.sampled_from(sorted(self.model)))
        expected = {n: k for n, k in self.model.items() if n != old}
        expected[new] = self.model.get(new, frozenset()) | self.model[old]
        if old == new:
            expected = dict(self.model)
        self._run(fault, lambda: self.g.rename(old, new, merge=True), expected)

    @rule()
    def reopen(self) -> None:
        self.g = Gallery(self.path)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def holds_the_model(self) -> None:
        if self.g is None:
            return
        people = self.g.people()
        assert {p.name: frozenset(p.photos) for p in people} == self.model
        keys = [k for p in people for k in p.photos]
        assert len(keys) == len(set(keys)), "a photo is a template twice"
        assert {p.name: frozenset(p.photos) for p in Gallery(self.path).people()} == self.model
        for p in people:
            assert len(p.chips) == p.templates == len(p.photos)
            for chip in p.chips:
                assert chip.is_file(), f"{p.name}: template without its chip {chip}"

    @invariant()
    def no_unexplained_chips(self) -> None:
        if self.g is None:
            return
        rows = {c.relative_to(self.path).as_posix() for p in self.g.people() for c in p.chips}
        extra = self._chips_on_disk() - rows
        assert extra <= self.may_be_orphaned, f"chips with no template: {sorted(extra)}"
        assert not list(self.path.rglob(".vitrina-tmp-*")), "temp files left behind"


def test_failed_enroll_leaves_no_chip(tmp_path: Path) -> None:
    g = Gallery.create(tmp_path / "g", dim=DIM, fingerprint="fp", embedder_label="synthetic")
    # os.replace calls of an enroll: 1 gallery.json (revision), 2 the chip, 3 the index's
    # pending faiss file: failing there rolls the index back.
    with pytest.raises(InjectedFault), inject(Fault("replace", 3)):
        g.enroll("ana", [photo("t1")])
    assert g.people() == []
    assert not list((tmp_path / "g").glob("chips/*/*.png"))


def test_forget_that_cannot_delete_a_chip_says_so(tmp_path: Path) -> None:
    g = Gallery.create(tmp_path / "g", dim=DIM, fingerprint="fp", embedder_label="synthetic")
    g.enroll("ana", [photo("t1"), photo("t2")])
    real_unlink = os.unlink
    fired = []

    def unlink(path, *a, **kw):  # the first chip file (rmtree unlinks by name + dir_fd)
        if str(path).endswith(".png") and not fired:
            fired.append(path)
            raise InjectedFault("os.unlink of a chip")
        return real_unlink(path, *a, **kw)

    os.unlink = unlink
    try:
        g.forget("ana")
        raised = False
    except GalleryError as exc:
        raised = "run forget again" in str(exc)
    finally:
        os.unlink = real_unlink
    assert fired
    left = list((tmp_path / "g").glob("chips/ana/*.png"))
    assert raised or not left, f"forget reported success, {len(left)} chip(s) of ana remain"
    if left:  # forgetting again deletes what is left
        g.forget("ana")
        assert not list((tmp_path / "g").glob("chips/ana/*.png"))


_SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TestGalleryStateful = GalleryMachine.TestCase
TestGalleryStateful.settings = settings(max_examples=20, stateful_step_count=12, **_SETTINGS)


@pytest.mark.slow
class TestGalleryStatefulDeep(GalleryMachine.TestCase):
    settings = settings(max_examples=300, stateful_step_count=40, **_SETTINGS)
