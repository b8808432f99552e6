"""One HTML page comparing explanation methods side by side, a row per image.

The page links the overlay PNGs written next to it (relative paths), so it stays small for a
folder of a thousand photos and opens offline: nothing is fetched from the network.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ExplainRow", "write_explain_page"]


@dataclass
class ExplainRow:
    image: str  # the photo's path (shown as text)
    original: str  # path of its copy/thumbnail, relative to the page
    top3: list[tuple[str, float]]
    target: str  # the label explained
    overlays: dict[str, tuple[str, float]] = field(default_factory=dict)  # method -> (png, s)
    error: str = ""


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}
table{border-collapse:collapse}td,th{padding:4px;vertical-align:top;text-align:center}
th{font-weight:600;font-size:13px;background:#f3f3f3;position:sticky;top:0}
img{max-width:220px;max-height:220px;display:block;margin:auto}
.cap{font-size:11px;color:#555}.name{font-size:12px;text-align:left;max-width:220px;
word-break:break-all}.err{color:#b00}
"""


def write_explain_page(
    rows: Sequence[ExplainRow], methods: Sequence[str], out: str | Path, *, title: str
) -> Path:
    """Write the page atomically; returns its path."""
    from vitrina.io.files import atomic_write_text

    e = html.escape
    head = "".join(f"<th>{e(m)}</th>" for m in methods)
    body = []
    for r in rows:
        if r.error:
            body.append(
                f"<tr><td class='name'>{e(r.image)}</td>"
                f"<td colspan='{len(methods) + 1}' class='err'>{e(r.error)}</td></tr>"
            )
            continue
        top = "<br>".join(f"{e(lbl)} {p:.1%}" for lbl, p in r.top3)
        cells = [
            f"<td class='name'>{e(Path(r.image).name)}<div class='cap'>top-3:<br>{top}"
            f"<br>explained: <b>{e(r.target)}</b></div></td>",
            f"<td><img src='{e(r.original)}' alt='photo'></td>",
        ]
        for m in methods:
            png, secs = r.overlays.get(m, ("", 0.0))
            cells.append(
                f"<td><img src='{e(png)}' alt='{e(m)}'><div class='cap'>{secs:.2f} s</div></td>"
                if png
                else "<td></td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h2>{e(title)}</h2>"
        "<p class='cap'>Warm colours: the regions that most drive the explained output. "
        "Each overlay is the photo with the method's map; the maps are scaled to [0, 1] per "
        "image and method.</p>"
        f"<table><tr><th>photo</th><th>input</th>{head}</tr>{''.join(body)}</table>"
        "</body></html>\n"
    )
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page)
    return path
