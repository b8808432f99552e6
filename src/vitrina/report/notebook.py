"""Results as a notebook shows them: small HTML tables with thumbnails, and pandas tables.

Every result type of the Python API (predictions, search hits, identifications, boxes) builds
its ``_repr_html_`` from :func:`html_table` and its ``to_pandas()`` from :func:`dataframe`, so
they look alike and escape alike. Thumbnails are embedded as ``data:`` URIs (JPEG, a few kB
each): the notebook stays one file that renders anywhere, with no server and no paths that
break when it is moved. All text is HTML-escaped (file names and labels are user data).

pandas is imported only when a table is asked for; without it :func:`dataframe` raises one
line naming the extra (``pip install 'vitrina[notebook]'``).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from vitrina.errors import VitrinaError

__all__ = ["THUMB_SIDE", "Error", "Tile", "dataframe", "html_table", "image_data_uri"]

#: Long side of a thumbnail in a notebook table, pixels.
THUMB_SIDE = 96

_STYLE = (
    "<style>.vitrina-table{border-collapse:collapse;font-size:12px}"
    ".vitrina-table td,.vitrina-table th{padding:3px 8px;text-align:left;"
    "vertical-align:middle;border-bottom:1px solid #ddd}"
    ".vitrina-table img{display:block;max-width:%(s)dpx;max-height:%(s)dpx}"
    ".vitrina-err{color:#a00}</style>"
)


def image_data_uri(image: Image.Image, *, side: int = THUMB_SIDE, quality: int = 80) -> str:
    """``image`` shrunk to at most ``side`` pixels a side, as a JPEG ``data:`` URI."""
    im = image if image.mode == "RGB" else image.convert("RGB")
    if max(im.size) > side:
        im = im.copy()
        im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(value: Any, side: int) -> str:
    if isinstance(value, Image.Image):
        return f'<img src="{image_data_uri(value, side=side)}" alt="photo">'
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    if isinstance(value, Error):
        return f'<span class="vitrina-err">{html.escape(value.text)}</span>'
    if isinstance(value, Tile):
        img = _cell(value.image, side) if value.image is not None else ""
        return f"{img}<div>{html.escape(value.caption)}</div>"
    return html.escape(str(value))


class Tile:
    """A cell holding a thumbnail with a caption under it (a search hit, a face)."""

    def __init__(self, image: Image.Image | None, caption: str) -> None:
        self.image = image
        self.caption = caption


class Error:
    """A cell shown as an error (red): an unreadable photo's reason."""

    def __init__(self, text: str) -> None:
        self.text = text


def html_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    side: int = THUMB_SIDE,
    more: int = 0,
) -> str:
    """An HTML table: a caption, a header row and one row per result. Cells: PIL images
    (thumbnails), floats (3 decimals), :class:`Error` (red), ``None`` (empty) or text
    (escaped). ``more``: rows left out, said under the table."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v, side)}</td>" for v in r) + "</tr>" for r in rows
    )
    tail = f"<div>… and {more} more (to_pandas() lists every row)</div>" if more > 0 else ""
    return (
        _STYLE % {"s": side}
        + '<table class="vitrina-table"><caption style="text-align:left"><b>'
        + f"{html.escape(title)}</b></caption><thead><tr>{head}</tr></thead>"
        + f"<tbody>{body}</tbody></table>{tail}"
    )


def dataframe(records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Any:
    """A ``pandas.DataFrame`` of ``records`` (one dict per row) with ``columns`` in order."""
    try:
        import pandas as pd
    except ImportError:
        raise VitrinaError(
            "to_pandas() needs pandas, which is not installed: pip install 'vitrina[notebook]'"
        ) from None
    return pd.DataFrame.from_records(list(records), columns=list(columns))
