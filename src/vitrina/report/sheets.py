"""Contact sheets (PNG, PIL) and self-contained HTML pages of search results and duplicate
groups. Thumbnails are decoded with :func:`vitrina.io.read_image`; an unreadable file becomes a
grey tile that says so. Both files are written atomically."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

__all__ = ["SheetRow", "Tile", "write_contact_sheet", "write_html", "write_image_rows"]

MAX_COLUMNS = 12  # tiles per row after the first; the rest are counted in the caption


@dataclass
class Tile:
    path: str
    caption: str
    mark: bool | None = None  # True: a right answer (green frame), False: wrong (red)


@dataclass
class SheetRow:
    title: str  # e.g. the query's file name, or "group 3"
    tiles: list[Tile]  # the first is the query / the kept photo


def _thumb(path: str, size: int) -> Image.Image:
    from vitrina.io.images import read_image

    try:
        im = read_image(path, min_side=size)
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        return im
    except Exception:
        tile = Image.new("RGB", (size, size), (200, 200, 200))
        d = ImageDraw.Draw(tile)
        d.text((6, size // 2 - 6), "unreadable", fill=(120, 0, 0), font=_font())
        return tile


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _fit(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength("…" + text) > width:
        text = text[1:]
    return "…" + text


def write_contact_sheet(
    rows: Sequence[SheetRow],
    out: str | os.PathLike[str],
    *,
    thumb: int = 128,
    frame_first: bool = True,
) -> Path:
    """One row per entry: the title, then its tiles as thumbnails with captions below. The
    first tile of a row (the query, the kept photo) is framed blue unless ``frame_first`` is
    off (rows of equals: a folder's photos, a person's chips)."""
    from vitrina.io.files import atomic_write_bytes

    font = _font()
    pad, cap_h, title_h = 6, 30, 18
    cols = max((min(len(r.tiles), MAX_COLUMNS + 1) for r in rows), default=1)
    width = pad + cols * (thumb + pad)
    row_h = title_h + thumb + cap_h + pad
    sheet = Image.new("RGB", (max(width, 200), pad + max(len(rows), 1) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    if not rows:
        draw.text((pad, pad), "nothing to show", fill="black", font=font)
    for ri, row in enumerate(rows):
        y = pad + ri * row_h
        shown = row.tiles[: MAX_COLUMNS + 1]
        more = len(row.tiles) - len(shown)
        title = row.title + (f"  (+{more} more)" if more else "")
        draw.text((pad, y), _fit(title, font, width - 2 * pad), fill="black", font=font)
        for ci, tile in enumerate(shown):
            x = pad + ci * (thumb + pad)
            im = _thumb(tile.path, thumb)
            sheet.paste(im, (x + (thumb - im.width) // 2, y + title_h + (thumb - im.height) // 2))
            if ci == 0 and frame_first:  # the query / the kept photo is framed
                draw.rectangle(
                    (x - 2, y + title_h - 2, x + thumb + 1, y + title_h + thumb + 1),
                    outline=(30, 90, 200),
                    width=2,
                )
            elif tile.mark is not None:
                draw.rectangle(
                    (x - 2, y + title_h - 2, x + thumb + 1, y + title_h + thumb + 1),
                    outline=(20, 150, 40) if tile.mark else (210, 30, 30),
                    width=3,
                )
            cap_y = y + title_h + thumb + 2
            for li, line in enumerate(tile.caption.split("\n")[:2]):
                draw.text(
                    (x, cap_y + li * 13), _fit(line, font, thumb), fill=(40, 40, 40), font=font
                )
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _data_uri(path: str, size: int) -> str:
    im = _thumb(path, size)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em} h2{font-size:1.05em;margin:1.2em 0 .4em}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;width:%(w)dpx;font-size:12px}
figure img{width:%(w)dpx;height:%(w)dpx;object-fit:contain;background:#eee;display:block}
figure.first img{outline:3px solid #1e5ac8}
figcaption{word-break:break-all;margin-top:3px}
.err{color:#a00}
"""


def write_html(
    rows: Sequence[SheetRow],
    out: str | os.PathLike[str],
    *,
    title: str = "vitrina search results",
    thumb: int = 160,
    errors: Sequence[str] = (),
) -> Path:
    """A single self-contained page: every thumbnail is an embedded JPEG (data URI); no
    scripts, fonts or styles from elsewhere, so it opens offline and can be mailed."""
    from vitrina.io.files import atomic_write_text

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS % {'w': thumb}}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for e in errors:
        parts.append(f'<p class="err">{html.escape(e)}</p>')
    for row in rows:
        parts.append(f"<h2>{html.escape(row.title)}</h2><div class='row'>")
        for i, tile in enumerate(row.tiles):
            cls = ' class="first"' if i == 0 else ""
            cap = "<br>".join(html.escape(line) for line in tile.caption.split("\n"))
            parts.append(
                f'<figure{cls}><img alt="{html.escape(Path(tile.path).name)}" '
                f'src="{_data_uri(tile.path, thumb)}"><figcaption>{cap}<br>'
                f"<small>{html.escape(tile.path)}</small></figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>\n")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(parts))
    return path


def write_image_rows(
    rows: Sequence[tuple[str, Sequence[Any]]],
    out: str | os.PathLike[str],
    *,
    title: str = "",
    tile: int = 96,
) -> Path:
    """One PNG of image rows (e.g. photos above their reconstructions): ``rows`` are
    ``(label, images)`` with images as ``(H, W, C)`` float arrays in [0, 1] (C = 1 or 3);
    each image is scaled to ``tile`` pixels on its long side. Written atomically."""
    import numpy as np

    from vitrina.io import atomic_write_bytes

    font = _font(12)
    label_w, pad, head = 110, 4, 22 if title else 4
    cols = max((len(images) for _, images in rows), default=0)
    sheet = Image.new(
        "RGB", (label_w + cols * (tile + pad) + pad, head + len(rows) * (tile + pad)), "white"
    )
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 4), title, fill=(0, 0, 0), font=font)
    for r, (label, images) in enumerate(rows):
        y = head + r * (tile + pad)
        draw.text(
            (pad, y + tile // 2 - 6), _fit(label, font, label_w - pad), fill=(0, 0, 0), font=font
        )
        for c, a in enumerate(images):
            arr = np.clip(np.asarray(a, dtype=np.float32), 0, 1)
            if arr.ndim == 3 and arr.shape[2] == 1:
                arr = arr[:, :, 0]
            im = Image.fromarray((arr * 255).round().astype(np.uint8)).convert("RGB")
            im.thumbnail(
                (tile, tile),
                Image.Resampling.NEAREST if max(im.size) < tile else Image.Resampling.LANCZOS,
            )
            if max(im.size) < tile:
                scale = tile / max(im.size)
                im = im.resize(
                    (round(im.width * scale), round(im.height * scale)), Image.Resampling.NEAREST
                )
            sheet.paste(im, (label_w + c * (tile + pad), y))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path
