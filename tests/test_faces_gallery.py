"""vitrina.faces.gallery / decision: enroll, forget, rename, identify or "unknown", calibrate,
concurrent writers -- with synthetic 128-d face vectors (no dlib)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from vitrina.errors import DataError, UnknownNameError, VitrinaError
from vitrina.faces.decision import DecisionRule, evaluate_rule, simulate_open_set
from vitrina.faces.gallery import Gallery, GalleryError
from vitrina.faces.types import Box, Face, PhotoFaces

D = 128


# --------------------------------------------------------------------------- synthetic faces


def centres(n: int, seed: int, tau: float = 0.055) -> np.ndarray:
    """Person centres ~0.9 apart (dlib's impostor scale)."""
    return np.random.default_rng(seed).standard_normal((n, D)) * tau


def sample(centre: np.ndarray, seed: int, spread: float = 0.025) -> np.ndarray:
    """A photo of the person at ``centre``: genuine pairs ~0.4 apart at the default spread."""
    rng = np.random.default_rng(seed)
    return (centre + rng.standard_normal(D) * spread).astype(np.float32)


def face(vec: np.ndarray, index: int = 0, size: int = 40) -> Face:
    chip = np.full((8, 8, 3), index * 40 % 256, np.uint8)
    return Face(Box(0, 0, size, size), np.zeros((5, 2), np.float32), chip, vec, index)


def photo(tag: str, *faces: Face, error: str | None = None) -> PhotoFaces:
    digest = hashlib.sha256(tag.encode()).hexdigest()
    return PhotoFaces(Path(f"/photos/{tag}.jpg"), list(faces), (100, 100), error, digest)


def photos_of(name: str, centre: np.ndarray, n: int, seed: int) -> list[PhotoFaces]:
    return [photo(f"{name}-{i}", face(sample(centre, seed * 100 + i))) for i in range(n)]


@pytest.fixture
def gallery(tmp_path: Path) -> Gallery:
    return Gallery.create(tmp_path / "g", dim=D, fingerprint="fp-dlib", embedder_label="dlib")


def triplets(groups: int, per: int, seed: int, delta: float = 0.025):
    """Groups of three look-alike people; photo quality varies (noise 0.01-0.035): when one
    of a group is unknown they sit at similar distances from the other two."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((groups, D)) * 0.06
    c = np.repeat(g, 3, 0) + rng.standard_normal((groups * 3, D)) * delta
    s = rng.uniform(0.01, 0.035, (groups * 3 * per, 1))
    x = np.repeat(c, per, 0) + rng.standard_normal((groups * 3 * per, D)) * s
    return x, np.repeat([f"p{i:02d}" for i in range(groups * 3)], per)


# --------------------------------------------------------------------------- create / open


def test_not_a_gallery_is_one_line_error_saying_how_to_make_one(tmp_path: Path) -> None:
    from conftest import one_line_error

    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for p in (tmp_path / "empty", tmp_path / "file.txt", tmp_path / "missing"):
        with pytest.raises(GalleryError) as e:
            Gallery(p)
        one_line_error(str(e.value), str(p), "not a face gallery", "faces enroll")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.jpg").write_text("x")
    with pytest.raises(GalleryError, match="not empty"):
        Gallery.create(tmp_path / "full", dim=D, fingerprint=None, embedder_label=None)
    assert (tmp_path / "full" / "keep.jpg").read_text() == "x"


def test_layout_on_disk_and_open_or_create_checks_the_embedder(gallery: Gallery) -> None:
    meta = json.loads((gallery.path / "gallery.json").read_text())
    assert meta["format"] == "vitrina-face-gallery" and meta["dim"] == D
    assert meta["fingerprint"] == "fp-dlib" and meta["calibration"] is None
    assert meta["rule"]["threshold"] == 0.6
    assert (gallery.path / "index" / "meta.sqlite").is_file()
    same = Gallery.open_or_create(gallery.path, dim=D, fingerprint="fp-dlib", embedder_label="x")
    assert same.people() == []
    with pytest.raises(GalleryError, match="different models"):
        Gallery.open_or_create(gallery.path, dim=D, fingerprint="fp-run", embedder_label="run")
    with pytest.raises(GalleryError, match="128-d"):
        Gallery.open_or_create(gallery.path, dim=64, fingerprint="fp-dlib", embedder_label="x")


# --------------------------------------------------------------------------- enroll / list


def test_enroll_lists_people_templates_and_chips(gallery: Gallery) -> None:
    c = centres(2, seed=1)
    alice = photos_of("alice", c[0], 3, seed=1)
    small, big = face(sample(c[1], 7), index=0, size=20), face(sample(c[1], 8), index=1, size=60)
    group = photo("bob-group", small, big)
    rep = gallery.enroll("bob", [group, photo("wall"), photo("broken", error="not an image")])
    assert rep.added == ["/photos/bob-group.jpg"] and rep.new_person
    assert rep.several_faces == [("/photos/bob-group.jpg", 2, 1)]  # the largest face
    assert rep.no_face == ["/photos/wall.jpg"]
    assert rep.unreadable == [("/photos/broken.jpg", "not an image")]
    assert len(gallery.enroll("alice", alice).added) == 3

    reopened = Gallery(gallery.path)
    people = {p.name: p for p in reopened.people()}
    assert sorted(people) == ["alice", "bob"]
    assert people["alice"].templates == 3 and people["bob"].templates == 1
    assert people["alice"].spread is not None and people["bob"].spread is None
    np.testing.assert_array_equal(reopened.templates("bob"), big.vector[None, :])
    want = {np.asarray(p.faces[0].vector).tobytes() for p in alice}
    assert {v.tobytes() for v in reopened.templates("alice")} == want
    sha16 = group.sha256[:16]
    assert people["bob"].chips == [gallery.path / "chips" / "bob" / f"{sha16}-1.png"]
    assert all(ch.is_file() for p in people.values() for ch in p.chips)
    with pytest.raises(UnknownNameError, match="did you mean: alice"):
        reopened.templates("alise")


def test_reenrolling_the_same_photo_is_a_noop_under_any_name(gallery: Gallery) -> None:
    ph = photos_of("alice", centres(1, seed=2)[0], 2, seed=2)
    gallery.enroll("alice", ph)
    again = gallery.enroll("alice", ph)
    assert again.added == [] and len(again.already) == 2
    other = gallery.enroll("carol", ph[:1])
    assert other.added == [] and other.already == [(str(ph[0].path), "alice")]
    assert not other.new_person
    assert [(p.name, p.templates) for p in gallery.people()] == [("alice", 2)]


def test_photo_without_a_digest_is_keyed_by_its_vector(gallery: Gallery) -> None:
    v = sample(centres(1, seed=3)[0], 3)
    a = PhotoFaces(Path("/x/a.jpg"), [face(v)])
    b = PhotoFaces(Path("/x/copy.jpg"), [face(v.copy())])
    gallery.enroll("dora", [a])
    assert gallery.enroll("dora", [b]).already == [("/x/copy.jpg", "dora")]


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "a\\b", "..", ".hidden", "nul\x00", "line\nbreak", " pad", "x" * 101, "unknown"],
)
def test_bad_person_names_are_refused_in_one_line(gallery: Gallery, name: str) -> None:
    from conftest import one_line_error

    with pytest.raises(GalleryError) as e:
        gallery.enroll(name, photos_of("p", centres(1, seed=4)[0], 1, seed=4))
    one_line_error(str(e.value), "person name")
    assert gallery.people() == [] and list((gallery.path / "chips").iterdir()) == []


def test_wrong_vectors_and_names_differing_by_case_are_refused(gallery: Gallery) -> None:
    with pytest.raises(GalleryError, match="64-d vector"):
        gallery.enroll("eve", [photo("eve", face(np.zeros(64, np.float32)))])
    with pytest.raises(GalleryError, match="different models"):
        gallery.enroll("eve", photos_of("eve", centres(1, seed=5)[0], 1, 5), fingerprint="other")
    gallery.enroll("Eve", photos_of("eve", centres(1, seed=5)[0], 1, 5))
    with pytest.raises(GalleryError, match="only by case"):
        gallery.enroll("eve", photos_of("eve2", centres(1, seed=6)[0], 1, 6))


# --------------------------------------------------------------------------- forget / rename


def test_forget_removes_every_embedding_and_chip(gallery: Gallery) -> None:
    c = centres(2, seed=10)
    gallery.enroll("alice", photos_of("alice", c[0], 3, seed=10))
    gallery.enroll("bob", photos_of("bob", c[1], 2, seed=11))
    chips = gallery.person("alice").chips
    gone = gallery.forget("alice")
    assert (gone.templates, gone.chips) == (3, 3)
    assert not any(ch.exists() for ch in chips) and not (gallery.path / "chips" / "alice").exists()
    assert [p.name for p in gallery.people()] == ["bob"]
    from vitrina.search import Index

    with Index.open(gallery.path / "index") as idx:
        assert {it["label"] for it in idx.items()} == {"bob"} and len(idx) == 2
    probe = photo("alice-new", face(sample(c[0], 999)))
    assert gallery.identify(probe)[0].name == "unknown"
    with pytest.raises(UnknownNameError, match="alice"):
        gallery.forget("alice")


def test_rename_moves_chips_and_refuses_an_existing_name_unless_merging(gallery: Gallery) -> None:
    c = centres(2, seed=12)
    gallery.enroll("alice", photos_of("alice", c[0], 2, seed=12))
    gallery.enroll("bob", photos_of("bob", c[1], 1, seed=13))
    before = gallery.templates("alice")
    carol = gallery.rename("alice", "carol")
    assert carol.templates == 2 and all(ch.parent.name == "carol" for ch in carol.chips)
    assert all(ch.is_file() for ch in carol.chips) and not (gallery.path / "chips/alice").exists()
    np.testing.assert_array_equal(gallery.templates("carol"), before)
    with pytest.raises(GalleryError, match="merge=True"):
        gallery.rename("carol", "bob")
    merged = gallery.rename("carol", "bob", merge=True)
    assert merged.templates == 3 and [p.name for p in gallery.people()] == ["bob"]
    assert sorted(ch.parent.name for ch in merged.chips) == ["bob"] * 3
    assert gallery.identify(photo("a2", face(sample(c[0], 555))))[0].name == "bob"


def test_interrupted_rename_is_finished_by_the_next_user(
    gallery: Gallery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vitrina.search import Index

    gallery.enroll("alice", photos_of("alice", centres(1, seed=14)[0], 3, seed=14))
    real = Index.add_vectors

    def crash(*a, **k):
        raise RuntimeError("power cut")

    monkeypatch.setattr(Index, "add_vectors", crash)
    with pytest.raises(RuntimeError):
        gallery.rename("alice", "alicia")  # old rows removed, new ones not yet added
    monkeypatch.setattr(Index, "add_vectors", real)
    assert (gallery.path / "rename.json").exists()
    people = Gallery(gallery.path).people()
    assert [(p.name, p.templates) for p in people] == [("alicia", 3)]
    assert all(ch.is_file() for ch in people[0].chips)
    assert not (gallery.path / "rename.json").exists()


# --------------------------------------------------------------------------- concurrency


# Run by exec in each child (and in this process), so a child imports the gallery only, not
# pytest and this module. ARGS and START (a barrier, so every writer starts at once) come in
# the globals of exec.
ENROLL_WORKER = """
import hashlib
from pathlib import Path
import numpy as np
from vitrina.faces.gallery import Gallery
from vitrina.faces.types import Box, Face, PhotoFaces

path, worker, n_people = ARGS
rng = np.random.default_rng(100 + worker)
todo = []
for p in range(n_people):
    name, centre = f"w{worker}-p{p}", rng.standard_normal(128) * 0.055
    photos = []
    for i in range(2):
        v = (centre + rng.standard_normal(128) * 0.025).astype(np.float32)
        f = Face(Box(0, 0, 40, 40), np.zeros((5, 2)), np.zeros((8, 8, 3), np.uint8), v, 0)
        digest = hashlib.sha256(f"{name}-{i}".encode()).hexdigest()
        photos.append(PhotoFaces(Path(f"/photos/{name}-{i}.jpg"), [f], sha256=digest))
    todo.append((name, photos))
g = Gallery(path)
START.wait(60)
for name, photos in todo:
    g.enroll(name, photos)
"""


def test_processes_enrolling_at_once_lose_nothing(gallery: Gallery) -> None:
    ctx = mp.get_context("spawn")  # fresh interpreters: real other processes
    start = ctx.Barrier(3)
    procs = [
        ctx.Process(
            target=exec,
            args=(ENROLL_WORKER, {"ARGS": (str(gallery.path), w, 4), "START": start}),
        )
        for w in (1, 2)
    ]
    for p in procs:
        p.start()
    exec(ENROLL_WORKER, {"ARGS": (str(gallery.path), 0, 4), "START": start})
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    people = gallery.people()
    assert sorted(p.name for p in people) == sorted(
        f"w{w}-p{p}" for w in range(3) for p in range(4)
    )
    assert all(p.templates == 2 and all(ch.is_file() for ch in p.chips) for p in people)
    keys = [k for p in people for k in p.photos]
    assert len(keys) == len(set(keys)) == 24


# --------------------------------------------------------------------------- identify / verify


def test_identify_names_enrolled_people_and_calls_others_unknown(gallery: Gallery) -> None:
    c = centres(6, seed=20)
    for i in range(4):
        gallery.enroll(f"k{i}", photos_of(f"k{i}", c[i], 2, seed=20 + i))
    probes = [photo(f"probe{i}", face(sample(c[i], 900 + i))) for i in range(6)]
    got = gallery.identify(probes)
    assert [r.name for r in got] == ["k0", "k1", "k2", "k3", "unknown", "unknown"]
    first, stranger = got[0], got[4]
    assert first.distance < 0.6 < first.runner_up_distance and first.runner_up != "k0"
    assert first.margin == pytest.approx(first.runner_up_distance - first.distance)
    assert stranger.person in {"k0", "k1", "k2", "k3"} and stranger.distance > 0.6
    assert "threshold 0.600" in stranger.reason
    assert not first.calibrated and "0.6" in first.threshold_source
    assert first.to_dict()["box"]["right"] == 40
    assert gallery.identify(photo("wall")) == []


def test_margin_rule_refuses_an_unknown_between_two_people(gallery: Gallery) -> None:
    rng = np.random.default_rng(21)
    a = rng.standard_normal(D) * 0.055
    b = a + rng.standard_normal(D) * 0.035  # look-alikes ~0.56 apart
    gallery.enroll("ann", photos_of("ann", a, 2, seed=21))
    gallery.enroll("bea", photos_of("bea", b, 2, seed=22))
    between = photo("twin", face(((a + b) / 2).astype(np.float32)))
    plain = gallery.identify(between)[0]
    assert plain.name in {"ann", "bea"} and plain.distance < 0.6  # a false accept
    rule = DecisionRule(threshold=0.6, margin=0.1)
    strict = gallery.identify(between, rule=rule)[0]
    assert strict.name == "unknown" and strict.reason.startswith("ambiguous")
    assert "given rule" in strict.threshold_source
    ann_again = gallery.identify(photo("ann-new", face(sample(a, 77))), rule=rule)[0]
    assert ann_again.name == "ann"


def test_enroll_unknown_numbers_new_people_and_recognizes_them_later(gallery: Gallery) -> None:
    c = centres(4, seed=30)
    gallery.enroll("alice", photos_of("alice", c[0], 2, seed=30))
    gallery.enroll("person-0007", photos_of("p7", c[1], 1, seed=31))
    party = photo(
        "party", face(sample(c[0], 1), 0), face(sample(c[2], 2), 1), face(sample(c[3], 3), 2)
    )
    got = gallery.identify(party, enroll_unknown=True)
    assert [(r.name, r.enrolled) for r in got] == [
        ("alice", False),
        ("person-0008", True),
        ("person-0009", True),
    ]
    assert "enrolled as new person person-0008" in got[1].reason
    later = gallery.identify([photo("later", face(sample(c[3], 4)))])
    assert later[0].name == "person-0009"
    assert gallery.person("person-0009").chips[0].is_file()


def test_verify_uses_the_default_threshold_until_calibrated(gallery: Gallery) -> None:
    c = centres(2, seed=40)
    a, a2, b = sample(c[0], 1), sample(c[0], 2), sample(c[1], 3)
    same = gallery.verify(face(a), a2)
    assert (
        same.same
        and same.threshold == 0.6
        and same.distance == pytest.approx(float(np.linalg.norm(a - a2)), rel=1e-5)
    )
    assert not gallery.verify(a, b).same


# --------------------------------------------------------------------------- calibration


def naive_open_set(x: np.ndarray, labels: np.ndarray, rule: DecisionRule) -> tuple[float, float]:
    """Reference: build every leave-one-identity-out gallery and decide every probe in a loop.
    Returns (FAR on unknown probes, share of known probes named correctly)."""

    def decide(probe: np.ndarray, gal: dict[str, np.ndarray]) -> str | None:
        dist = {p: np.linalg.norm(t - probe, axis=1).min() for p, t in gal.items()}
        ranked = sorted(dist, key=dist.get)
        best = ranked[0]
        d1 = dist[best]
        d2 = dist[ranked[1]] if len(ranked) > 1 else np.inf
        t = gal[best]
        spread = (
            np.mean(
                [np.linalg.norm(t[i] - t[j]) for i in range(len(t)) for j in range(i + 1, len(t))]
            )
            if len(t) > 1
            else np.nan
        )
        ok = rule.accept(np.array([d1]), np.array([d2]), np.array([spread]))[0]
        return best if ok else None

    people = sorted(set(labels))
    fa = unk = named = known = 0
    for u in people:
        others = [p for p in people if p != u]
        gal = {p: x[labels == p] for p in others}
        for v in x[labels == u]:
            unk += 1
            fa += decide(v, gal) is not None
        for p in others:
            rows = np.flatnonzero(labels == p)
            if len(rows) < 2:
                continue
            for i in rows:
                g2 = dict(gal)
                g2[p] = x[[r for r in rows if r != i]]
                known += 1
                named += decide(x[i], g2) == p
    return fa / unk, named / known


def test_simulation_matches_a_naive_loop_over_every_gallery() -> None:
    x, labels = triplets(3, 3, seed=50)
    labels[-1] = "solo"  # a person with a single face: unknown only
    rule = DecisionRule(threshold=0.42, margin=0.04, spread_weight=1.0, spread_ref=0.3, cap=0.5)
    fig = evaluate_rule(rule, simulate_open_set(x, labels))
    far, named = naive_open_set(x, labels, rule)
    assert fig.far == pytest.approx(far) and fig.named == pytest.approx(named)
    assert 0 < fig.named < 1  # a case where the rule matters


def test_calibration_meets_the_far_and_is_stored(gallery: Gallery) -> None:
    x, labels = triplets(6, 3, seed=51)
    labelled = {p: list(x[labels == p]) for p in sorted(set(labels))}
    rep = gallery.calibrate(labelled, far=0.01)
    assert rep.openset.far <= 0.01 and rep.plain.far <= 0.01
    far, named = naive_open_set(x, labels, rep.rule)
    assert far <= 0.01 and named == pytest.approx(rep.openset.named)
    assert rep.n_people == 18 and rep.n_faces == 54 and rep.n_genuine == 18 * 3
    assert rep.rule.cap == pytest.approx(rep.threshold) and rep.threshold > 0
    assert any("plain threshold" in line for line in rep.lines())

    g = Gallery(gallery.path)
    assert g.calibrated and g.rule == rep.rule
    stored = json.loads((g.path / "gallery.json").read_text())["calibration"]
    assert stored["far"] == 0.01 and stored["openset"]["far"] <= 0.01
    assert {"tar", "eer", "n_genuine", "n_impostor", "date", "plain", "default"} <= set(stored)
    g.enroll("p00", [photo("p00", face(x[0].astype(np.float32)))])
    res = g.identify(photo("q", face(x[1].astype(np.float32))))[0]
    assert res.calibrated and res.threshold_source.startswith("calibrated")
    assert g.verify(x[0], x[1]).threshold == pytest.approx(rep.threshold)


def test_calibrated_margin_rule_names_more_than_the_plain_threshold(gallery: Gallery) -> None:
    x, labels = triplets(8, 3, seed=1)
    rep = gallery.calibrate(list(zip(labels, x, strict=True)), far=0.01)
    assert rep.rule.margin > 0
    assert rep.openset.far <= 0.01 and rep.plain.far <= 0.01
    assert rep.openset.named > rep.plain.named + 0.1


def test_calibrating_on_the_gallery_itself_and_bad_inputs(gallery: Gallery) -> None:
    with pytest.raises(DataError, match="at least 3 people"):
        gallery.calibrate({"a": [np.zeros(D)], "b": [np.ones(D)]})
    with pytest.raises(DataError, match="64-d"):
        gallery.calibrate({"a": [np.zeros(64)]})
    with pytest.raises(VitrinaError, match="far"):
        gallery.calibrate({"a": [np.zeros(D)]}, far=1.5)
    c = centres(4, seed=60)
    for i in range(4):
        gallery.enroll(f"g{i}", photos_of(f"g{i}", c[i], 3, seed=60 + i))
    rep = gallery.calibrate(None, far=0.05)
    assert rep.source == "gallery" and rep.n_faces == 12 and rep.openset.far <= 0.05


# --------------------------------------------------------------------------- issue 13: names, chips


@pytest.mark.parametrize(
    "name, says",
    [
        ("😀" * 100, "400 bytes in UTF-8"),  # 100 characters: passed the length check
        ("bob\udc80", "not valid text"),  # a lone surrogate (bytes of another encoding)
    ],
    ids=["100-emoji", "lone-surrogate"],
)
def test_names_that_would_fail_on_disk_are_refused_before_touching_it(
    gallery: Gallery, name: str, says: str
) -> None:
    """Issue 13 #9: `File name too long` (a 500 from the service), and an empty chips/ folder
    left behind by a name that could not be stored."""
    from conftest import one_line_error

    with pytest.raises(GalleryError) as e:
        gallery.enroll(name, photos_of("p", centres(1, seed=4)[0], 1, seed=4))
    one_line_error(str(e.value), "person name", says)
    assert gallery.people() == [] and list((gallery.path / "chips").iterdir()) == []


@pytest.mark.parametrize(
    "name, char",
    [
        ("bob\u200b", "U+200B ZERO WIDTH SPACE"),
        ("\u202eevil", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("an\u200dna", "U+200D ZERO WIDTH JOINER"),
        ("x\u2066y\u2069", "U+2066 LEFT-TO-RIGHT ISOLATE"),
        ("ma\u00adria", "U+00AD SOFT HYPHEN"),
    ],
)
def test_invisible_and_bidi_control_characters_are_refused(
    gallery: Gallery, name: str, char: str
) -> None:
    """Issue 13 #13: right-to-left overrides and zero-width characters were accepted."""
    with pytest.raises(GalleryError) as e:
        gallery.enroll(name, photos_of("p", centres(1, seed=4)[0], 1, seed=4))
    msg = str(e.value)
    assert char.lower() in msg.lower() and "\n" not in msg
    assert all(c not in msg for c in "\u200b\u202e\u200d\u2066\u00ad")  # shown escaped


def test_a_name_is_one_person_however_it_is_typed(gallery: Gallery) -> None:
    """Issue 13 #13: "é" as one character and as e + combining accent enrolled two people."""
    c = centres(2, seed=20)
    composed, decomposed = "Jos\u00e9", "Jose\u0301"
    gallery.enroll(composed, photos_of("jose-a", c[0], 1, seed=20))
    report = gallery.enroll(decomposed, photos_of("jose-b", c[0], 1, seed=21))
    assert report.name == composed and not report.new_person
    assert [(p.name, p.templates) for p in gallery.people()] == [(composed, 2)]
    assert [f.name for f in (gallery.path / "chips").iterdir()] == [composed]
    assert gallery.person(decomposed).templates == 2
    assert gallery.rename(decomposed, "Jos\u00e9 Mar\u00eda").name == "Jos\u00e9 Mar\u00eda"
    assert gallery.forget("Jose\u0301 Mari\u0301a").templates == 2


def test_look_alike_names_are_refused(gallery: Gallery) -> None:
    c = centres(2, seed=22)
    gallery.enroll("Ann Lee", photos_of("ann", c[0], 1, seed=22))
    for other in ("Ann\u00a0Lee", "ＡＮＮ LEE"):  # a no-break space; full-width letters
        with pytest.raises(GalleryError, match=r"only by (look-alike characters|case)"):
            gallery.enroll(other, photos_of("ann2", c[1], 1, seed=23))
    assert [p.name for p in gallery.people()] == ["Ann Lee"]


def test_names_enrolled_before_the_rules_keep_working(gallery: Gallery) -> None:
    """Galleries made before names were normalised may hold a decomposed "é" or a zero-width
    space: such people stay listed, identified, enrollable, renamable and forgettable."""
    from vitrina.faces.gallery import _Snapshot

    c = centres(3, seed=24)
    legacy = {"Jose\u0301": c[0], "bob\u200b": c[1]}
    for name, centre in legacy.items():  # as an older vitrina stored them
        with gallery._writing() as (idx, _meta):
            chosen = [(pf, pf.faces[0]) for pf in photos_of(name, centre, 1, 24)]
            gallery._add_faces(idx, _Snapshot.read(idx, -1), name, chosen)
    assert sorted(p.name for p in gallery.people()) == sorted(legacy)
    assert gallery.identify(photos_of("q", c[1], 1, seed=25))[0].name == "bob\u200b"
    for given in ("Jose\u0301", "Jos\u00e9"):  # either form reaches the enrolled person
        report = gallery.enroll(given, photos_of(f"more-{given}", c[0], 1, seed=26))
        assert report.name == "Jose\u0301" and not report.new_person and report.added
    assert gallery.enroll("bob\u200b", photos_of("bob-2", c[1], 1, seed=27)).added
    assert {p.name: p.templates for p in gallery.people()} == {"Jose\u0301": 3, "bob\u200b": 2}
    assert gallery.rename("bob\u200b", "Bob").templates == 2
    assert gallery.forget("Jos\u00e9").templates == 3
    assert [p.name for p in gallery.people()] == ["Bob"]
    with pytest.raises(GalleryError, match="do not show"):  # new people follow the rules
        gallery.enroll("bob\u200b", photos_of("bob-3", c[2], 1, seed=28))


KILLED_WRITER = """
import os, sys, hashlib
from pathlib import Path
import numpy as np
sys.path.insert(0, {tests!r})
from test_faces_gallery import centres, photos_of
from vitrina.faces.gallery import Gallery
from vitrina.search import Index
import vitrina.faces.gallery as gm
stage = {stage!r}
g = Gallery({path!r})
if stage == "before-commit":
    Index.add_vectors = lambda *a, **k: os._exit(9)
elif stage == "after-commit":
    real = os.replace
    def die(src, dst, *a, **k):
        if Path(src).name.startswith(gm.PENDING_CHIP):
            os._exit(9)
        return real(src, dst, *a, **k)
    gm.os.replace = die
else:  # forget: rows removed, chips not yet deleted
    gm.shutil.rmtree = lambda *a, **k: os._exit(9)
if stage == "forget":
    g.forget("alice")
else:
    g.enroll("zoe", photos_of("zoe", centres(1, seed=31)[0], 2, seed=31))
"""


@pytest.mark.parametrize(
    "stage, people",
    [
        ("before-commit", {"alice": 2}),
        ("after-commit", {"alice": 2, "zoe": 2}),
        ("forget", {}),
    ],
)
def test_chips_of_a_killed_writer_never_outlive_their_templates(
    gallery: Gallery, stage: str, people: dict
) -> None:
    """Issue 13 #12: chips left by a killed enroll were invisible to `faces list` but stayed
    on disk. Whatever moment the writer dies at, the next user leaves exactly the chips of
    the templates there are."""
    import subprocess
    import sys
    import textwrap

    gallery.enroll("alice", photos_of("alice", centres(1, seed=30)[0], 2, seed=30))
    script = KILLED_WRITER.format(
        tests=str(Path(__file__).parent), path=str(gallery.path), stage=stage
    )
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, timeout=120
    )
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    assert (gallery.path / ".writing").exists()  # the dead writer's mark
    found = {p.name: p.templates for p in Gallery(gallery.path).people()}
    assert found == people
    on_disk = sorted(p.relative_to(gallery.path).as_posix() for p in gallery.path.rglob("*.png"))
    listed = sorted(
        ch.relative_to(gallery.path).as_posix()
        for p in Gallery(gallery.path).people()
        for ch in p.chips
    )
    assert on_disk == listed and all((gallery.path / c).is_file() for c in listed)
    assert not (gallery.path / ".writing").exists()


def test_chips_orphaned_in_a_gallery_made_before_pending_chips_are_swept_once(
    gallery: Gallery,
) -> None:
    """Issue 13 #12, for galleries an older vitrina wrote: chips of enrolments killed before
    their commit are deleted the first time the gallery is opened, then never looked for."""
    gallery.enroll("alice", photos_of("alice", centres(1, seed=32)[0], 2, seed=32))
    meta_path = gallery.path / "gallery.json"
    meta = json.loads(meta_path.read_text())
    assert meta.pop("chips_swept") is True
    meta_path.write_text(json.dumps(meta))  # as an older vitrina left it
    kept = sorted(gallery.path.rglob("*.png"))
    for orphan in ("alice/0123456789abcdef-0.png", "ghost/fedcba9876543210-0.png"):
        (gallery.path / "chips" / orphan).parent.mkdir(exist_ok=True)
        (gallery.path / "chips" / orphan).write_bytes(b"a face nobody can see or forget")
    assert [p.name for p in Gallery(gallery.path).people()] == ["alice"]
    assert sorted(gallery.path.rglob("*.png")) == kept
    assert not (gallery.path / "chips" / "ghost").exists()
    assert json.loads(meta_path.read_text())["chips_swept"] is True
