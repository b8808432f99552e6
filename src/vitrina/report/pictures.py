"""The pictures of what a command did, for people who would rather look than read.

One module for every command's pictures, built on :mod:`vitrina.report.sheets` (contact sheets
and thumbnails) and :mod:`vitrina.report.plots` (matplotlib ``Figure`` objects; pyplot is
never imported and the backend never switched):

* ``vitrina sort --report/--sheet`` and ``vitrina faces sort --report``: :class:`Bins` collects
  the least sure photos of each folder (bounded memory), :func:`write_bins` draws them as a
  self-contained page and a contact sheet.
* ``vitrina evaluate --out``: :func:`write_evaluation_pictures` (confusion, per-class bars,
  the most confident mistakes).
* ``vitrina data inspect --out``: :func:`write_inspection_pictures` (samples per class,
  duplicate groups, the size distribution).
* ``vitrina faces list --sheet``: :func:`write_people_sheet`.
* ``vitrina optimize``: :func:`plot_variants`.

Computes nothing the commands did not measure: each caller passes plain data (paths, labels,
figures). Pages are one HTML file each, thumbnails embedded as small JPEG ``data:`` URIs, no
scripts and nothing fetched, so they open offline and can be mailed. Every file is written to
a temporary name and renamed.
"""

from __future__ import annotations

import base64
import heapq
import html
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitrina.report.plots import _plt, _save, plot_confusion
from vitrina.report.sheets import SheetRow, Tile, _data_uri, write_contact_sheet

__all__ = [
    "Bins",
    "PageSection",
    "check_writable",
    "plot_per_class",
    "plot_sizes",
    "plot_variants",
    "write_bins",
    "write_evaluation_pictures",
    "write_inspection_pictures",
    "write_page",
    "write_people_sheet",
]

SHOWN_PER_FOLDER = 60  # thumbnails per folder on a page; the count always covers them all
SHEET_PER_FOLDER = 12  # tiles per folder row on a contact sheet (then "+N more")
MISTAKES_SHOWN = 24


def check_writable(
    path: str | os.PathLike[str], *, option: str = "--report", folder: bool = False
) -> Path:
    """Refuse, before any work, a picture target that cannot be written: a file name that is
    a folder (or, with ``folder``, a folder name that is a file), or a place under no
    writable folder. One line naming the path and the option, so a long sort never ends in a
    traceback about its report."""
    from vitrina.errors import VitrinaError

    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise VitrinaError(f"{p}: {option} needs a folder, and a file is there")
    if not folder and p.is_dir():
        raise VitrinaError(f"{p}: is a folder; {option} needs a file name (e.g. {p / 'x'})")
    existing = p if folder else p.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise VitrinaError(
            f"{p}: cannot write {option} there ({existing} is not a writable folder)"
        )
    return p


# --------------------------------------------------------------------------- figures


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- pages


@dataclass
class PageSection:
    """One heading of a page: an optional line of text, embedded pictures (PNG files or
    bytes), and thumbnails with captions. ``key`` and ``count`` become ``data-`` attributes
    (a folder name and its number of photos), so a reader or a test finds them."""

    title: str
    note: str = ""
    pictures: list[Path | bytes] = field(default_factory=list)
    tiles: list[Tile] = field(default_factory=list)
    key: str = ""
    count: int | None = None
    ranks: list[str] = field(default_factory=list)  # one per tile: the figure it is ranked by


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.3em} h2{font-size:1.05em;margin:1.4em 0 .3em}
p.note{margin:.2em 0 .6em;color:#555}
table.counts{border-collapse:collapse;margin:.5em 0 1em}
table.counts td,table.counts th{border-bottom:1px solid #ddd;padding:2px 12px;text-align:left}
table.counts td.n{text-align:right}
section.bin h2 .count{color:#555;font-weight:normal}
section.alarm h2{color:#a05000}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;width:%(w)dpx;font-size:12px}
figure img{width:%(w)dpx;height:%(w)dpx;object-fit:contain;background:#eee;display:block}
figcaption{word-break:break-all;margin-top:3px}
img.plot{max-width:100%%;height:auto;margin:.3em 0}
"""


def write_page(
    out: str | os.PathLike[str],
    title: str,
    sections: Sequence[PageSection],
    *,
    counts: Mapping[str, int] | None = None,
    notes: Sequence[str] = (),
    thumb: int = 128,
    alarm: Sequence[str] = (),
) -> Path:
    """One self-contained HTML page: the title, ``notes`` (lines of text), a table of
    ``counts`` (linking to the sections of the same keys), then the sections in order.
    Sections whose key is in ``alarm`` (the bins a person must look at) are set apart."""
    from vitrina.io import atomic_write_text

    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>",
        f"<style>{_CSS % {'w': thumb}}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    parts += [f'<p class="note">{e(line)}</p>' for line in notes]
    if counts is not None:
        parts.append('<table class="counts"><tr><th>folder</th><th>photos</th></tr>')
        for key, n in counts.items():
            parts.append(
                f'<tr data-folder="{e(key)}"><td><a href="#{e(_anchor(key))}">{e(key)}</a></td>'
                f'<td class="n">{n}</td></tr>'
            )
        parts.append(f'<tr><th>total</th><td class="n">{sum(counts.values())}</td></tr></table>')
    for s in sections:
        cls = "bin alarm" if s.key and s.key in alarm else "bin"
        attrs = f' class="{cls}"'
        if s.key:
            attrs += f' id="{e(_anchor(s.key))}" data-folder="{e(s.key)}"'
        if s.count is not None:
            attrs += f' data-count="{s.count}"'
        count = f' <span class="count">({s.count})</span>' if s.count is not None else ""
        parts.append(f"<section{attrs}><h2>{e(s.title)}{count}</h2>")
        if s.note:
            parts.append(f'<p class="note">{e(s.note)}</p>')
        for pic in s.pictures:
            data = pic if isinstance(pic, bytes) else Path(pic).read_bytes()
            alt = "plot" if isinstance(pic, bytes) else Path(pic).name
            parts.append(f'<img class="plot" alt="{e(alt)}" src="{_png_uri(data)}">')
        if s.tiles:
            parts.append('<div class="row">')
            for i, tile in enumerate(s.tiles):
                rank = f' data-rank="{e(s.ranks[i])}"' if i < len(s.ranks) else ""
                cap = "<br>".join(e(line) for line in tile.caption.split("\n"))
                parts.append(
                    f'<figure{rank}><img alt="{e(Path(tile.path).name)}" '
                    f'src="{_data_uri(tile.path, thumb)}"><figcaption>{cap}<br>'
                    f"<small>{e(str(tile.path))}</small></figcaption></figure>"
                )
            parts.append("</div>")
        parts.append("</section>")
    parts.append("</body></html>\n")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(parts))
    return path


def _anchor(key: str) -> str:
    return "folder-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in key)


# --------------------------------------------------------------------------- sorted folders


@dataclass(order=True)
class _Ranked:
    order: float  # heap key: the most doubtful photos have the largest
    seq: int
    path: str = field(compare=False)
    caption: str = field(compare=False)
    rank: float = field(compare=False)


class Bins:
    """The photos of each output folder, counted, and the ``keep`` least sure of each kept
    (memory stays bounded over any number of photos). ``add(folder, path, rank, caption)``:
    a lower ``rank`` is less sure (a sort's confidence; a face sort passes minus the
    distance); ``None`` (an unreadable photo) is shown in the order it came."""

    def __init__(self, keep: int = SHOWN_PER_FOLDER) -> None:
        self.keep = keep
        self.counts: dict[str, int] = {}
        self._heaps: dict[str, list[_Ranked]] = {}
        self._seq = itertools.count()

    def add(self, folder: str, path: str | Path, rank: float | None, caption: str) -> None:
        self.counts[folder] = self.counts.get(folder, 0) + 1
        seq = next(self._seq)
        value = float("nan") if rank is None else float(rank)
        # Kept in a max-heap of doubt (the negated rank): the surest is popped first.
        order = -seq if rank is None else -value
        heap = self._heaps.setdefault(folder, [])
        item = _Ranked(order, seq, str(path), caption, value)
        if len(heap) < self.keep:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)

    def least_sure(self, folder: str) -> list[tuple[str, float, str]]:
        """``(path, rank, caption)`` of the kept photos of ``folder``, least sure first."""
        heap = sorted(self._heaps.get(folder, []), reverse=True)
        return [(r.path, r.rank, r.caption) for r in heap]


def write_bins(
    bins: Bins,
    *,
    report: str | os.PathLike[str] | None = None,
    sheet: str | os.PathLike[str] | None = None,
    title: str,
    bin_names: Sequence[str] = (),
    notes: Sequence[str] = (),
    order: str = "least confident first",
) -> list[Path]:
    """The folders of a sort as a page (``report``: every folder's least sure photos first,
    with counts) and a contact sheet (``sheet``: one row per folder). Class folders come in
    name order, then the ``bin_names`` (e.g. ``unsure``, ``unreadable``) that exist, set apart.
    Returns the files written."""
    folders = sorted(f for f in bins.counts if f not in bin_names)
    folders += [b for b in bin_names if b in bins.counts]
    written: list[Path] = []
    if report is not None:
        sections = []
        for f in folders:
            kept = bins.least_sure(f)
            shown = f"{len(kept)} of {bins.counts[f]} shown, " if len(kept) < bins.counts[f] else ""
            sections.append(
                PageSection(
                    f,
                    note=f"{shown}{order}",
                    tiles=[Tile(p, cap) for p, _, cap in kept],
                    ranks=["" if np.isnan(r) else f"{r:.4f}" for _, r, _ in kept],
                    key=f,
                    count=bins.counts[f],
                )
            )
        counts = {f: bins.counts[f] for f in folders}
        written.append(
            write_page(report, title, sections, counts=counts, notes=notes, alarm=tuple(bin_names))
        )
    if sheet is not None:
        rows = []
        for f in folders:
            kept = bins.least_sure(f)[:SHEET_PER_FOLDER]
            more = bins.counts[f] - len(kept)
            rows.append(
                SheetRow(
                    f"{f}: {bins.counts[f]} photos, {order}"
                    + (f" (+{more} not shown)" if more else ""),
                    [Tile(p, cap) for p, _, cap in kept],
                )
            )
        written.append(write_contact_sheet(rows, sheet, thumb=112, frame_first=False))
    return written


# --------------------------------------------------------------------------- evaluate


def plot_per_class(
    classes: Sequence[str],
    precision: Sequence[float],
    recall: Sequence[float],
    support: Sequence[int],
    path: str | Path,
    *,
    title: str = "precision and recall per class",
) -> Path:
    """Horizontal bars of precision and recall per class, the support beside each name,
    the worst recall at the top (where the eye starts)."""
    plt = _plt()
    n = len(classes)
    order = sorted(range(n), key=lambda i: (recall[i], precision[i]), reverse=True)
    fig, ax = plt.subplots(figsize=(7.5, max(2.5, 0.38 * n + 1.2)))
    ys = np.arange(n)
    ax.barh(ys + 0.2, [precision[i] for i in order], 0.4, label="precision", color="#2a7ab9")
    ax.barh(ys - 0.2, [recall[i] for i in order], 0.4, label="recall", color="#e08a1e")
    ax.set_yticks(ys, [f"{classes[i]} ({support[i]})" for i in order])
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("share (support in brackets)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


def write_evaluation_pictures(
    out_dir: str | os.PathLike[str],
    *,
    classes: Sequence[str],
    confusion: np.ndarray,
    precision: Sequence[float],
    recall: Sequence[float],
    support: Sequence[int],
    mistakes: Sequence[tuple[str, int, int, float]],
    accuracy: float,
    n: int,
    title: str = "evaluation",
) -> dict[str, Path]:
    """``confusion.png``, ``per_class.png``, ``mistakes.png`` (the most confident mistakes,
    like fastai's top losses: photo, true label, predicted label, confidence) and
    ``index.html`` showing all three. ``mistakes`` are ``(path, true, predicted, confidence)``
    in any order."""
    out = Path(out_dir)
    files = {
        "confusion": plot_confusion(confusion, list(classes), out / "confusion.png"),
        "per_class": plot_per_class(classes, precision, recall, support, out / "per_class.png"),
    }
    worst = sorted(mistakes, key=lambda m: -m[3])[:MISTAKES_SHOWN]
    tiles = [
        Tile(p, f"true {classes[t]}\npredicted {classes[q]} {c:.2f}", mark=False)
        for p, t, q, c in worst
    ]
    files["mistakes"] = _mistake_sheet(tiles, len(mistakes), out / "mistakes.png")
    notes = [
        f"{n} photos, accuracy {accuracy:.1%}, {len(mistakes)} mistakes"
        + (f" (the {len(worst)} most confident are shown)" if len(worst) < len(mistakes) else "")
    ]
    sections = [
        PageSection(
            "most confident mistakes",
            tiles=tiles,
            key="mistakes",
            count=len(mistakes),
            ranks=[f"{m[3]:.4f}" for m in worst],
        ),
        PageSection("precision and recall per class", pictures=[files["per_class"]]),
        PageSection("confusion (rows: true, columns: predicted)", pictures=[files["confusion"]]),
    ]
    files["index"] = write_page(out / "index.html", title, sections, notes=notes)
    return files


def _mistake_sheet(tiles: Sequence[Tile], total: int, path: Path) -> Path:
    """The mistakes in rows of eight, each tile framed red with its labels below."""
    per_row = 8
    rows = []
    for start in range(0, len(tiles), per_row):
        chunk = list(tiles[start : start + per_row])
        rows.append(
            SheetRow(f"most confident mistakes {start + 1}-{start + len(chunk)} of {total}", chunk)
        )
    return write_contact_sheet(rows, path, thumb=128, frame_first=False)


# --------------------------------------------------------------------------- data inspect


def plot_sizes(
    widths: Sequence[int], heights: Sequence[int], path: str | Path, *, title: str = ""
) -> Path:
    """Image sizes: width against height (one dot per photo, log axes) and the histogram
    of the short side, where a model's input size is read off."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    w, h = np.asarray(widths, float), np.asarray(heights, float)
    if len(w):
        ax1.scatter(w, h, s=10, alpha=0.5, color="#2a7ab9", linewidths=0)
        ax1.set_xscale("log")
        ax1.set_yscale("log")
        short = np.minimum(w, h)
        ax2.hist(short, bins=min(30, max(5, len(short) // 3)), color="#2a7ab9")
        ax2.axvline(float(np.median(short)), color="grey", ls="--", lw=1, label="median")
        ax2.legend(fontsize=8)
    ax1.set_xlabel("width (px)")
    ax1.set_ylabel("height (px)")
    ax1.set_title(f"{len(w)} photos: width x height")
    ax2.set_xlabel("short side (px)")
    ax2.set_ylabel("photos")
    ax2.set_title("short side")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, Path(path))


def write_inspection_pictures(
    out_dir: str | os.PathLike[str],
    *,
    samples: Mapping[str, Sequence[str | Path]],
    counts: Mapping[str, int],
    duplicates: Sequence[Sequence[str | Path]],
    widths: Sequence[int],
    heights: Sequence[int],
    unreadable: Sequence[tuple[str | Path, str]] = (),
    title: str = "dataset",
) -> dict[str, Path]:
    """``samples.png`` (a row of photos per class), ``duplicates.png`` (each group of
    identical files side by side, the first framed), ``sizes.png`` and ``index.html``."""
    out = Path(out_dir)
    sample_rows = [
        SheetRow(f"{c}: {counts.get(c, len(ps))} photos", [Tile(str(p), Path(p).name) for p in ps])
        for c, ps in samples.items()
    ]
    dup_rows = [
        SheetRow(f"group {i}: {len(g)} identical files", [Tile(str(p), Path(p).name) for p in g])
        for i, g in enumerate(duplicates, 1)
    ]
    files = {
        "samples": write_contact_sheet(sample_rows, out / "samples.png", thumb=112),
        "duplicates": write_contact_sheet(dup_rows, out / "duplicates.png", thumb=112),
        "sizes": plot_sizes(widths, heights, out / "sizes.png"),
    }
    sections = [
        PageSection(
            f"{c}",
            tiles=[Tile(str(p), Path(p).name) for p in ps],
            key=c,
            count=counts.get(c, len(ps)),
            note=f"{len(ps)} of {counts.get(c, len(ps))} shown",
        )
        for c, ps in samples.items()
    ]
    sections += [
        PageSection(
            f"duplicates: group {i}",
            tiles=[Tile(str(p), Path(p).name) for p in g],
            key=f"duplicates-{i}",
            count=len(g),
            note="identical files (same content hash)",
        )
        for i, g in enumerate(duplicates, 1)
    ]
    sections.append(PageSection("sizes", pictures=[files["sizes"]]))
    notes = [
        f"{sum(counts.values())} photos in {len(counts)} classes; {len(duplicates)} groups of "
        f"duplicates; {len(unreadable)} unreadable"
    ]
    notes += [f"unreadable: {p}: {why}" for p, why in unreadable]
    files["index"] = write_page(
        out / "index.html", title, sections, counts=dict(counts), notes=notes
    )
    return files


# --------------------------------------------------------------------------- faces


def write_people_sheet(
    people: Sequence[tuple[str, Sequence[str | Path]]],
    path: str | os.PathLike[str],
    *,
    spreads: Sequence[float | None] = (),
) -> Path:
    """A contact sheet of a gallery: one row per person, their chips (the faces enrolled)."""
    rows = []
    for i, (name, chips) in enumerate(people):
        spread = spreads[i] if i < len(spreads) else None
        extra = f", spread {spread:.3f}" if spread is not None else ""
        rows.append(
            SheetRow(
                f"{name}: {len(chips)} templates{extra}",
                [Tile(str(c), f"{k + 1}") for k, c in enumerate(chips)],
            )
        )
    return write_contact_sheet(rows, path, thumb=96, frame_first=False)


# --------------------------------------------------------------------------- optimize


def plot_variants(report: Mapping[str, Any], path: str | Path) -> Path:
    """The variants of ``vitrina optimize`` side by side: size on disk, images per second
    and accuracy (an embedding run: mAP), one bar each, the figure written on the bar; fp32
    in grey, a variant outside its tolerance in red."""
    variants = report.get("variants", {})
    names = list(variants)
    embedding = report.get("task") == "embedding"
    judged = "mAP" if embedding else "accuracy"
    panels = [
        ("size on disk (MB)", [variants[v]["size_bytes"] / 1e6 for v in names], "{:.1f}"),
        (
            f"images/s (batch {report.get('batch_size', '?')})",
            [variants[v]["images_per_s"] for v in names],
            "{:.0f}",
        ),
        (
            judged + (f" on {report.get('eval_images', '?')} images"),
            [float(variants[v].get(judged) or 0.0) for v in names],
            "{:.3f}" if embedding else "{:.1%}",
        ),
    ]
    colours = [
        "#9a9a9a"
        if v == "fp32"
        else ("#2a7ab9" if variants[v].get("status") == "ok" else "#d23c2c")
        for v in names
    ]
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, max(2.4, 0.45 * len(names) + 1.4)))
    ys = np.arange(len(names))
    for k, (ax, (label, values, fmt)) in enumerate(zip(axes, panels, strict=True)):
        ax.barh(ys, values, color=colours)
        top = max(values) if values else 1.0
        for y, v in zip(ys, values, strict=True):
            ax.text(v + top * 0.01, y, fmt.format(v), va="center", fontsize=8)
        ax.set_xlim(0, (top or 1.0) * 1.25)
        ax.set_yticks(ys, names if k == 0 else [""] * len(names))
        ax.invert_yaxis()
        ax.set_title(label, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{Path(str(report.get('run', ''))).name}: variants (red: outside tolerance)")
    fig.tight_layout()
    return _save(fig, Path(path))
