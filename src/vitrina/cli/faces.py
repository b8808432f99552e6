"""``vitrina faces ...``: enroll people, identify faces or say "unknown", sort photos by person."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._common import err, out, photo_paths, print_json, progress_bar

app = typer.Typer(
    help="Face recognition against a gallery: enroll, identify (or say unknown), calibrate, "
    "sort photos by person.\n\nStart with `vitrina faces enroll GALLERY NAME PHOTOS...`.",
    no_args_is_help=True,
)

DETECTOR_HELP = "Face detector: hog (fast, frontal faces) or cnn (dlib's MMOD: more poses, slow)."
EMBEDDER_HELP = (
    "A run folder from `vitrina train-embedding` to embed the aligned faces (default: dlib's "
    "128-d ResNet). Fixed when the gallery is created."
)
ASSUME_HELP = (
    "Photos are already face crops: where the detector finds nothing, the centre of the photo "
    "is taken as the face."
)


def _short(p: Path) -> str:
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _pipeline_options(
    detector: str | None, upsample: int | None, embedder: str | None, assume_face: bool
) -> dict:
    return {
        "detector": detector,
        "upsample": upsample,
        "embedder": embedder,
        "assume_face": assume_face or None,
    }


def _open(gallery: Path, **options):  # type: ignore[no-untyped-def]
    """The gallery (created for these pipeline options when missing) and its pipeline."""
    from vitrina.faces import FacePipeline, Gallery

    if (gallery / "gallery.json").exists():
        g = Gallery(gallery)
        return g, g.pipeline(**options)  # a different --embedder is refused
    pipe = FacePipeline(**{k: v for k, v in options.items() if v is not None})
    return Gallery.for_pipeline(gallery, pipe), pipe


def _process(pipe, paths: list[Path], what: str, quiet: bool):  # type: ignore[no-untyped-def]
    with progress_bar(what, len(paths), enabled=not quiet, unit="photos/s") as update:
        results = list(pipe.process(paths, on_progress=update))
    for pf in results:
        if pf.error:
            err.print(f"[yellow]unreadable[/] {escape(str(pf.path))}: {escape(pf.error)}")
    return results


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
    detector: str | None = typer.Option(None, help=DETECTOR_HELP),
    upsample: int | None = typer.Option(
        None, help="Times the photo is doubled before detection (1 finds faces down to ~40 px)."
    ),
    embedder: str | None = typer.Option(None, help=EMBEDDER_HELP),
    assume_face: bool = typer.Option(False, "--assume-face", help=ASSUME_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Add photos of a person to a gallery (one face per photo: the largest).

    Enrolling the same photo again does nothing. The aligned face chips are kept in
    GALLERY/chips/ for review.

    Examples:

      vitrina faces enroll staff.gallery alice alice1.jpg alice2.jpg

      vitrina faces enroll staff.gallery --folders people/
    """
    from vitrina.data import scan_folder
    from vitrina.errors import VitrinaError

    if folders is None and (not name or not photos):
        raise VitrinaError("give NAME and PHOTOS, or --folders DIR with a sub-folder per person")
    if folders is not None and (name or photos):
        raise VitrinaError("give either NAME PHOTOS... or --folders DIR, not both")
    if folders is not None:
        scan = scan_folder(folders, min_classes=1)
        groups: dict[str, list[Path]] = {}
        for s in scan.samples:
            groups.setdefault(scan.classes[s.label], []).append(s.path)
    else:
        groups = {name: photo_paths(photos)}
    from vitrina.faces import Gallery, check_person_name

    # Names are checked before any photo is read or anything is written; an existing
    # gallery also accepts the names it already holds (even those older rules let through).
    check = Gallery(gallery).name_for if (gallery / "gallery.json").exists() else check_person_name
    for person in groups:
        check(person)
    g, pipe = _open(gallery, **_pipeline_options(detector, upsample, embedder, assume_face))
    every = [p for ps in groups.values() for p in ps]
    results = {pf.path: pf for pf in _process(pipe, every, "reading faces", as_json)}
    reports = [g.enroll(person, [results[p] for p in ps]) for person, ps in groups.items()]
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
) -> None:
    """The people of a gallery, their number of templates and how spread these are."""
    from vitrina.faces import Gallery

    g = Gallery(gallery)
    people = g.people()
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
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Name every face in the photos, or say "unknown".

    The decision uses the gallery's calibrated rule (`vitrina faces calibrate`); before that,
    dlib's default distance 0.6 — the output says which.

    Example: vitrina faces identify staff.gallery door-camera/ --annotate annotated/
    """
    from vitrina.faces import Gallery
    from vitrina.faces.annotate import write_annotated

    g = Gallery(gallery)
    pipe = g.pipeline(assume_face=assume_face or None)
    results = _process(pipe, photo_paths(photos), "reading faces", as_json)
    rows = []
    t = Table(title=f"faces in {len(results)} photos ({escape(g.threshold_source)})")
    for col in ("photo", "face", "name", "distance", "runner-up", "why"):
        t.add_column(col)
    for pf in results:
        ids = g.identify(pf, enroll_unknown=enroll_unknown) if pf.faces else []
        if annotate_dir is not None and not pf.error:
            write_annotated(pf, ids, annotate_dir)
        if not pf.faces and not pf.error:
            rows.append({"photo": str(pf.path), "faces": 0})
            t.add_row(escape(_short(pf.path)), "—", "[dim]no face[/]", "", "", "")
        for i in ids:
            rows.append(i.to_dict())
            name = escape(i.name) if i.known else "[red]unknown[/]"
            if i.enrolled:
                name += " [green](enrolled)[/]"
            t.add_row(
                escape(_short(pf.path)),
                str(i.face),
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
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Same person or not: the distance of the two faces and the threshold used."""
    from vitrina.errors import DataError
    from vitrina.faces import FacePipeline, Gallery
    from vitrina.faces.decision import DEFAULT_THRESHOLD, verify_distance

    g = Gallery(gallery) if gallery is not None else None
    pipe = (
        g.pipeline(assume_face=assume_face or None)
        if g
        else FacePipeline(assume_face=assume_face, workers=0)
    )
    faces = []
    for pf in pipe.process([a, b]):
        if pf.error:
            raise DataError(f"{pf.path}: {pf.error}")
        if not pf.faces:
            raise DataError(f"{pf.path}: no face found")
        faces.append(max(pf.faces, key=lambda f: f.box.width * f.box.height))
    if g is not None:
        v = g.verify(faces[0], faces[1])
        same, d, t, source = v.same, v.distance, v.threshold, g.threshold_source
    else:
        d = verify_distance(faces[0].vector, faces[1].vector)
        t = DEFAULT_THRESHOLD
        same, source = d <= t, f"default: dlib's {DEFAULT_THRESHOLD} (no --gallery)"
    if as_json:
        print_json({"same": bool(same), "distance": d, "threshold": t, "source": source})
        return
    verdict = "[green]same person[/]" if same else "[red]different people[/]"
    out.print(
        f"{verdict}: distance {d:.4f} {'<=' if same else '>'} threshold {t:.4f} ({escape(source)})"
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
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Measure genuine/impostor distances and choose the threshold for a false-accept rate.

    Each labelled person plays "unknown" in turn (left out of a simulated gallery): the rule
    kept is the one that names the most known faces with at most FAR of unknowns accepted.
    Prints that rule next to a plain global threshold and dlib's default 0.6 on the same trials.

    Example: vitrina faces calibrate staff.gallery labelled-staff/ --far 0.01
    """
    from vitrina.faces import Gallery

    g = Gallery(gallery)
    report = g.calibrate(labelled, far=far)
    from vitrina.report.plots import plot_roc

    roc = gallery / "calibration-roc.png"
    if report.verification is not None:
        plot_roc({"calibration pairs": report.verification}, roc, target_far=far)
    if as_json:
        print_json(report.to_dict())
        return
    for line in report.lines():
        out.print(escape(line))
    out.print(f"stored in {escape(str(gallery / 'gallery.json'))}; ROC: {escape(str(roc))}")


@app.command("sort")
def sort(
    photos: Path = typer.Argument(..., help="Folder of photos to sort."),
    gallery: Path = typer.Option(..., "--gallery", "-g", help="Gallery folder."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    move: bool = typer.Option(False, "--move", help="Move instead of copy (verified first)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include sub-folders."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
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
        )
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


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="faces")
