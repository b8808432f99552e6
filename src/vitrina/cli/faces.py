"""``vitrina faces ...``: enroll people, identify faces or say "unknown", sort photos by person."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._choices import Backend, FaceDetector
from vitrina.cli._common import (
    err,
    out,
    print_json,
    progress_bar,
    report_option,
    sheet_option,
)

app = typer.Typer(
    help="Face recognition against a gallery: enroll, identify (or say unknown), calibrate, "
    "sort photos by person.\n\nStart with `vitrina faces enroll GALLERY NAME PHOTOS...`.",
    no_args_is_help=True,
)

FACE_BACKEND_HELP = (
    "Engine backend describing the faces: auto (measured: the fastest within tolerance), eager, "
    "bf16, onnx, int8 (with a calibrated model), dlib (dlib's own code: the reference, slow). "
    "Default: the gallery's (auto for a new gallery)."
)
DETECTOR_HELP = (
    "Face detector: cascade (HOG, and only where it finds nothing dlib's MMOD CNN, then "
    "equalised, rotated and shadow-flattened retries; the default for a new gallery), "
    "hog (fast, frontal faces) or cnn (dlib's MMOD on every photo: more poses, slow)."
)
EMBEDDER_HELP = (
    "A run folder from `vitrina train-embedding` to embed the aligned faces (default: dlib's "
    "128-d ResNet). Fixed when the gallery is created."
)
FLATTEN_HELP = (
    "Even out a shadow falling from one side of the face (a lamp or window beside a door "
    "camera) or from above (a ceiling lamp) on each aligned face before describing it; "
    "evenly lit faces are unchanged. "
    "Fixed when the gallery is created. Measured on ORL relit from one side and from above: "
    "README, 'Faces in hard light'."
)
LANDMARKS_HELP = (
    "Where a face is unevenly lit, find the landmarks that align it on a copy with the light "
    "divided out, so a hard shadow does not pull them off the eyes and mouth "
    "(--flatten-landmarks: the default for a new gallery) or always on the photo as it is "
    "(--plain-landmarks: how galleries made before December 2026 align, and keep aligning "
    "unless a run asks). Faces in even light align the same either way. Measured on ORL "
    "relit hard: README, 'Faces in hard light'."
)
ASSUME_HELP = (
    "Photos are already face crops: where the detector finds nothing, the centre of the photo "
    "is taken as the face."
)


def _short(p: Path) -> str:
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _report_unreadable(photos) -> None:  # type: ignore[no-untyped-def]
    for pf in photos:
        if pf.error:
            err.print(f"[yellow]unreadable[/] {escape(str(pf.path))}: {escape(pf.error)}")


@app.command("enroll")
def enroll(
    gallery: Path = typer.Argument(..., help="Gallery folder (created if it does not exist)."),
    name: str = typer.Argument(
        None, help="The person's name (omit with --folders: one sub-folder per person)."
    ),
    photos: list[Path] = typer.Argument(None, help="Photos or folders of this person."),
    folders: Path | None = typer.Option(
        None, "--folders", help="A folder with one sub-folder of photos per person."
    ),
    detector: FaceDetector | None = typer.Option(None, help=DETECTOR_HELP),
    upsample: int | None = typer.Option(
        None, help="Times the photo is doubled before detection (1 finds faces down to ~40 px)."
    ),
    embedder: str | None = typer.Option(None, help=EMBEDDER_HELP),
    assume_face: bool = typer.Option(False, "--assume-face", help=ASSUME_HELP),
    flatten_chips: bool = typer.Option(False, "--flatten-chips", help=FLATTEN_HELP),
    flatten_landmarks: bool | None = typer.Option(
        None, "--flatten-landmarks/--plain-landmarks", help=LANDMARKS_HELP, show_default=False
    ),
    backend: Backend | None = typer.Option(None, help=FACE_BACKEND_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Add photos of a person to a gallery (one face per photo: the largest).

    Enrolling the same photo again does nothing. The aligned face chips are kept in
    GALLERY/chips/ for review.

    Examples:

      vitrina faces enroll staff.gallery alice alice1.jpg alice2.jpg

      vitrina faces enroll staff.gallery --folders people/
    """
    from vitrina.faces.enroll import enroll_photos

    with progress_bar("reading faces", None, enabled=not as_json, unit="photos/s") as update:
        run = enroll_photos(
            gallery,
            name,
            photos,
            folders=folders,
            detector=detector,
            upsample=upsample,
            embedder=embedder,
            assume_face=assume_face,
            backend=backend,
            flatten_chips=flatten_chips,
            flatten_landmarks=flatten_landmarks,
            on_progress=update,
        )
    _report_unreadable(run.photos)
    g, reports = run.gallery, run.reports
    if as_json:
        print_json([r.to_dict() for r in reports])
        return
    for r in reports:
        line = f"{escape(r.name)}: {len(r.added)} added"
        if r.already:
            line += f", {len(r.already)} already enrolled"
        if r.no_face:
            line += f", {len(r.no_face)} without a face"
        out.print(line + (" (new person)" if r.new_person else ""))
        for p in r.no_face:
            err.print(f"  [yellow]no face found[/] {escape(p)}")
        for p, n, i in r.several_faces:
            err.print(f"  {escape(p)}: {n} faces, enrolled the largest (face {i})")
    out.print(f"gallery: {gallery} ({len(g.people())} people; {escape(g.threshold_source)})")


@app.command("list")
def list_people(
    gallery: Path = typer.Argument(..., help="Gallery folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    sheet: Path | None = sheet_option("a row per person with the chips of their templates"),
) -> None:
    """The people of a gallery, their number of templates and how spread these are.

    Example: vitrina faces list family.gallery --sheet family.png
    """
    from vitrina.faces import Gallery

    g = Gallery(gallery)
    people = g.people()
    if sheet is not None:
        err.print(f"wrote {escape(str(g.write_sheet(sheet)))}")
    if as_json:
        print_json(
            {
                "people": [p.to_dict() for p in people],
                "calibrated": g.calibrated,
                "threshold_source": g.threshold_source,
                "embedder": g.embedder_label,
            }
        )
        return
    t = Table(
        title=f"{escape(str(gallery))}: {len(people)} people ({escape(g.embedder_label or '')})"
    )
    t.add_column("person")
    t.add_column("templates", justify="right")
    t.add_column("spread", justify="right")
    for p in people:
        t.add_row(escape(p.name), str(p.templates), "—" if p.spread is None else f"{p.spread:.3f}")
    out.print(t)
    out.print(f"decision: {escape(g.rule.describe())}; {escape(g.threshold_source)}")


@app.command("forget")
def forget(
    gallery: Path = typer.Argument(..., help="Gallery folder."),
    name: str = typer.Argument(..., help="The person to remove (every template and chip)."),
) -> None:
    """Remove a person: every embedding and every stored face chip."""
    from vitrina.faces import Gallery

    f = Gallery(gallery).forget(name)
    out.print(f"forgot {escape(f.name)}: {f.templates} templates, {f.chips} chips removed")


@app.command("rename")
def rename(
    gallery: Path = typer.Argument(..., help="Gallery folder."),
    old: str = typer.Argument(..., help="Current name (e.g. person-0003)."),
    new: str = typer.Argument(..., help="New name."),
    merge: bool = typer.Option(False, "--merge", help="Merge into NEW when it already exists."),
) -> None:
    """Rename a person (or merge two, with --merge)."""
    from vitrina.faces import Gallery

    p = Gallery(gallery).rename(old, new, merge=merge)
    out.print(f"{escape(old)} -> {escape(p.name)} ({p.templates} templates)")


@app.command("identify")
def identify(
    gallery: Path = typer.Argument(..., help="Gallery folder."),
    photos: list[Path] = typer.Argument(..., help="Photos or folders."),
    enroll_unknown: bool = typer.Option(
        False, "--enroll-unknown", help="Add each unknown face as a new person (person-0001...)."
    ),
    annotate_dir: Path | None = typer.Option(
        None, "--annotate", help="Write each photo with boxes and names into this folder."
    ),
    assume_face: bool = typer.Option(False, "--assume-face", help=ASSUME_HELP),
    backend: Backend | None = typer.Option(None, help=FACE_BACKEND_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Name every face in the photos, or say "unknown".

    The decision uses the gallery's calibrated rule (`vitrina faces calibrate`); before that,
    dlib's default distance 0.6 — the output says which.

    Example: vitrina faces identify staff.gallery door-camera/ --annotate annotated/
    """
    from vitrina.faces.identify import identify_photos

    with progress_bar("reading faces", None, enabled=not as_json, unit="photos/s") as update:
        run = identify_photos(
            gallery,
            photos,
            enroll_unknown=enroll_unknown,
            annotate_dir=annotate_dir,
            assume_face=assume_face,
            backend=backend,
            on_progress=update,
        )
    _report_unreadable(p.photo for p in run.photos)
    rows: list[dict] = []
    t = Table(title=f"faces in {len(run.photos)} photos ({escape(run.threshold_source)})")
    for col in ("photo", "face", "found by", "name", "distance", "runner-up", "why"):
        t.add_column(col)
    for p in run.photos:
        pf = p.photo
        if not pf.faces and not pf.error:
            rows.append({"photo": str(pf.path), "faces": 0})
            t.add_row(escape(_short(pf.path)), "—", "", "[dim]no face[/]", "", "", "")
        for i in p.faces:
            rows.append(i.to_dict())
            name = escape(i.name) if i.known else "[red]unknown[/]"
            if i.enrolled:
                name += " [green](enrolled)[/]"
            t.add_row(
                escape(_short(pf.path)),
                str(i.face),
                escape(i.detector),
                name,
                "" if i.distance is None else f"{i.distance:.3f}",
                "" if i.runner_up is None else f"{escape(i.runner_up)} {i.runner_up_distance:.3f}",
                escape(i.reason),
            )
    if as_json:
        print_json(rows)
        return
    out.print(t)
    if annotate_dir is not None:
        out.print(f"annotated photos in {escape(str(annotate_dir))}")


@app.command("verify")
def verify(
    a: Path = typer.Argument(..., help="First photo (its largest face)."),
    b: Path = typer.Argument(..., help="Second photo (its largest face)."),
    gallery: Path | None = typer.Option(
        None, help="Use this gallery's embedder and calibrated threshold."
    ),
    assume_face: bool = typer.Option(False, "--assume-face", help=ASSUME_HELP),
    backend: Backend | None = typer.Option(None, help=FACE_BACKEND_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Same person or not: the distance of the two faces and the threshold used."""
    from vitrina.faces.identify import verify_photos

    v = verify_photos(a, b, gallery=gallery, assume_face=assume_face, backend=backend)
    if as_json:
        print_json(v.to_dict())
        return
    verdict = "[green]same person[/]" if v.same else "[red]different people[/]"
    out.print(
        f"{verdict}: distance {v.distance:.4f} {'<=' if v.same else '>'} threshold "
        f"{v.threshold:.4f} ({escape(v.source)})"
    )


@app.command("calibrate")
def calibrate(
    gallery: Path = typer.Argument(..., help="Gallery folder."),
    labelled: Path | None = typer.Argument(
        None,
        help="Photos of known people, one sub-folder per person (default: the gallery's own "
        "templates).",
    ),
    far: float = typer.Option(0.01, help="Target false-accept rate for unknown people."),
    light_dims: int = typer.Option(
        0,
        "--light-dims",
        min=0,
        help="First learn this many directions in which light from one side moves a face's "
        "vector (the enrolled faces relit from the left and right) and remove them from every "
        "vector: more faces named in hard side light (3 measured best). 0: off. README, "
        "'Faces in hard light'.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Measure genuine/impostor distances and choose the threshold for a false-accept rate.

    Each labelled person plays "unknown" in turn (left out of a simulated gallery): the rule
    kept is the one that names the most known faces with at most FAR of unknowns accepted.
    Prints that rule next to a plain global threshold and dlib's default 0.6 on the same trials.

    Example: vitrina faces calibrate staff.gallery labelled-staff/ --far 0.01

    A door with a lamp or window beside it: vitrina faces calibrate staff.gallery --light-dims 3
    """
    from vitrina.faces.calibrate import calibrate_gallery

    run = calibrate_gallery(gallery, labelled, far=far, light_dims=light_dims)
    if as_json:
        print_json(run.report.to_dict())
        return
    for line in run.report.lines():
        out.print(escape(line))
    roc = f"; ROC: {escape(str(run.roc))}" if run.roc else ""
    out.print(f"stored in {escape(str(run.stored_in))}{roc}")


@app.command("sort")
def sort(
    photos: Path = typer.Argument(..., help="Folder of photos to sort."),
    gallery: Path = typer.Option(..., "--gallery", "-g", help="Gallery folder."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    move: bool = typer.Option(False, "--move", help="Move instead of copy (verified first)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include sub-folders."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    report: Path | None = report_option(
        "every person's folder, least sure match first, unknown/ and no-face/ set apart, "
        "with counts"
    ),
) -> None:
    """Sort photos into a folder per person, unknown/ and no-face/, with manifest.csv.

    A photo with two known people goes to both folders (and to unknown/ too when someone in
    it is not in the gallery). Copies never overwrite; --move deletes a source only after its
    copies are verified. Run it again to finish an interrupted job.

    Example: vitrina faces sort party/ --gallery family.gallery --out by-person/
    """
    from vitrina.faces.sort import sort_faces

    with progress_bar("sorting", None, enabled=not as_json, unit="photos/s") as update:
        s = sort_faces(
            photos,
            gallery,
            out_dir,
            method="move" if move else "copy",
            recursive=recursive,
            on_progress=update,
            report=report,
        )
    for path in s.pictures:
        err.print(f"wrote {escape(str(path))}")
    if as_json:
        print_json(
            {
                "counts": s.counts,
                "manifest": str(s.manifest),
                "skipped_done": s.skipped_done,
                "threshold_source": s.threshold_source,
                "errors": [{"photo": str(i.source), "error": i.error} for i in s.items if i.error],
            }
        )
        if s.problems:
            raise typer.Exit(1)
        return
    for line in s.repaired:
        err.print(f"[yellow]repaired[/] {escape(line)}")
    t = Table(title=f"{escape(str(out_dir))} ({escape(s.threshold_source)})")
    t.add_column("folder")
    t.add_column("photos", justify="right")
    for folder, n in s.counts.items():
        t.add_row(escape(folder), str(n))
    out.print(t)
    for i in s.items:
        if i.error and i.status != "error":
            err.print(f"[yellow]{i.status}[/] {escape(str(i.source))}: {escape(i.error)}")
    for line in s.problems:
        err.print(f"[red]{escape(line)}[/]")
    if s.skipped_done:
        out.print(f"{s.skipped_done} photos were already sorted by an earlier run")
    out.print(f"manifest: {escape(str(s.manifest))}")
    if s.problems:
        raise typer.Exit(1)


@app.command("chips")
def chips(
    photos: Path = typer.Argument(..., help="A folder with one sub-folder of photos per person."),
    out_dir: Path = typer.Argument(..., help="New or empty folder for the chips."),
    detector: FaceDetector | None = typer.Option(
        None, help=DETECTOR_HELP + " Default: the face pipeline's."
    ),
    upsample: int | None = typer.Option(
        None, help="Times the photo is doubled before detection (default: the pipeline's)."
    ),
    chip_size: int | None = typer.Option(
        None, help="Side of the aligned chips in pixels (default: the pipeline's, 150)."
    ),
    assume_face: bool = typer.Option(False, "--assume-face", help=ASSUME_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Write the aligned face chip of every photo: OUT/<person>/<photo>.png.

    The largest face of each photo is aligned on its 5 landmarks (the chips a gallery stores),
    so OUT is a folder of identities for `vitrina train-embedding` (which trains face chips
    with ArcFace by default: OUT/chips.json tells it they are faces). Photos without a face or
    unreadable are listed, not fatal; OUT/chips.json maps each chip to its photo and box.

    Example: vitrina faces chips staff-photos/ staff-chips/ && vitrina train-embedding staff-chips/
    """
    from vitrina.faces.chips import write_face_chips

    with progress_bar("aligning faces", None, enabled=not as_json, unit="photos/s") as update:
        r = write_face_chips(
            photos,
            out_dir,
            detector=detector,
            upsample=upsample,
            chip_size=chip_size,
            assume_face=assume_face,
            on_progress=update,
        )
    if as_json:
        print_json(r.to_dict())
        return
    for p, why in r.unreadable:
        err.print(f"[yellow]unreadable[/] {escape(str(p))}: {escape(why)}")
    for p in r.no_face:
        err.print(f"[yellow]no face found[/] {escape(str(p))}")
    out.print(
        f"{r.written} chips of {r.identities} people from {r.photos} photos in "
        f"{escape(str(out_dir))}"
        + (f"; {len(r.no_face)} without a face" if r.no_face else "")
        + (f"; {len(r.unreadable)} unreadable" if r.unreadable else "")
        + (f"; {len(r.several_faces)} with several faces (largest kept)" if r.several_faces else "")
    )
    out.print(f"next: vitrina train-embedding {escape(str(out_dir))}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="faces")
