"""Why two images match: both images with the regions that drive their similarity."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from vitrina.explain.attribution import explain_similarity, overlay

__all__ = ["explain_matches", "match_figure", "write_match_explanations"]

SIDE = 320


def _fit(img: Image.Image) -> Image.Image:
    """Scaled (up or down) so its long side is SIDE."""
    img = img.convert("RGB")
    scale = SIDE / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


def match_figure(model, query, result, *, method: str = "gradcam") -> Image.Image:  # type: ignore[no-untyped-def]
    """Query and result side by side, each overlaid with its similarity map, captioned with
    the cosine similarity of their embeddings."""
    from vitrina.io import read_image

    q_img, r_img = read_image(query), read_image(result)
    ex_q, ex_r = explain_similarity(model, q_img, r_img, method=method)
    tiles = [_fit(overlay(q_img, ex_q.heatmap)), _fit(overlay(r_img, ex_r.heatmap))]
    cap = 22
    fig = Image.new("RGB", (2 * SIDE + 12, SIDE + cap + 6), "white")
    for i, t in enumerate(tiles):
        fig.paste(t, (4 + i * (SIDE + 4) + (SIDE - t.width) // 2, cap + (SIDE - t.height) // 2))
    draw = ImageDraw.Draw(fig)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw.text(
        (6, 4),
        f"query  |  result:  cosine similarity {ex_q.score:.3f} ({method} on the embedding)",
        fill="black",
        font=font,
    )
    return fig


def write_match_explanations(  # type: ignore[no-untyped-def]
    model, query, result, rank: int, out_dir, *, method: str = "gradcam"
) -> Path:
    """``out_dir/<query stem>/rank-<rank>-<result stem>.jpg``; never overwrites."""
    from vitrina.io import save_new_image

    figure = match_figure(model, query, result, method=method)
    name = f"rank-{rank:02d}-{Path(result).stem}.jpg"
    return save_new_image(figure, Path(out_dir) / Path(query).stem / name)


def explain_matches(  # type: ignore[no-untyped-def]
    model,
    results: Iterable[Any],
    out_dir: str | Path,
    *,
    top: int = 3,
    method: str = "gradcam",
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Why the best hits match their query: for each search result (anything with ``query``,
    ``hits`` of ``path`` and ``rank``, and ``error``, like
    :class:`vitrina.search.QueryResult`), the first ``top`` hits are drawn beside the query
    with :func:`write_match_explanations`; queries with an error are skipped.

    ``model`` is the embedding model the index was searched with. Returns the figures written;
    ``on_progress(done, total)`` after each."""
    pairs = [(r.query, h) for r in results if not r.error for h in r.hits[: max(0, top)]]
    written = []
    for n, (query, hit) in enumerate(pairs, 1):
        written.append(
            write_match_explanations(model, query, hit.path, hit.rank, out_dir, method=method)
        )
        if on_progress:
            on_progress(n, len(pairs))
    return written
