"""Explain a folder of photos: an overlay per photo and method, and one page comparing them."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitrina.errors import ImageReadError, VitrinaError
from vitrina.explain.attribution import METHODS, explain_batch, method_spec, overlay
from vitrina.models import VitrinaModel
from vitrina.report.explain_page import ExplainRow, write_explain_page

__all__ = ["FolderExplanation", "explain_photos"]

OVERLAY_SIDE = 1024  # overlays are written at most this large (the maps are at full size)


@dataclass
class FolderExplanation:
    page: Path
    overlays: Path
    methods: list[str]
    rows: list[ExplainRow] = field(default_factory=list)

    @property
    def explained(self) -> int:
        return sum(1 for r in self.rows if not r.error)

    @property
    def unreadable(self) -> list[str]:
        return [r.error for r in self.rows if r.error]


def explain_photos(
    model: VitrinaModel | str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | Path,
    methods: Sequence[str] = ("gradcam",),
    *,
    target: int | str | None = None,
    layer: str | None = None,
    seed: int = 0,
    title: str = "",
    on_photo: Callable[[int, str | None], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> FolderExplanation:
    """Explain each photo with each method (``["all"]``: every method); write
    ``out_dir/overlays/<stem>-<method>.jpg`` and ``out_dir/index.html`` (never overwriting).

    ``model``: a loaded model, or a run folder / zoo name (loaded in eval mode; the page's
    default title then says where its weights come from). ``paths``: photos, or folders of
    photos (searched recursively). An unreadable photo is recorded and skipped. After each
    photo: ``on_photo(done, error)`` and ``on_progress(done, total)``."""
    from vitrina.data import expand_image_paths
    from vitrina.io import read_image, save_new_image, unique_path

    chosen = METHODS.names() if list(methods) == ["all"] else list(dict.fromkeys(methods))
    for m in chosen:
        method_spec(m)  # unknown -> the valid names, before any work
    paths = expand_image_paths(paths)
    if not paths:
        raise VitrinaError("no photos given")
    if not isinstance(model, VitrinaModel):
        from vitrina.explain.files import load_model

        model, origin = load_model(model)
        title = title or f"explanations: {model.arch} ({origin})"
    total = len(paths)
    out_dir = Path(out_dir)
    res = FolderExplanation(unique_path(out_dir / "index.html"), out_dir / "overlays", chosen)
    for k, path in enumerate(map(Path, paths), 1):
        try:
            img = read_image(path)
        except ImageReadError as e:
            res.rows.append(ExplainRow(str(path), "", [], "", error=str(e)))
            if on_photo:
                on_photo(k, str(e))
            if on_progress:
                on_progress(k, total)
            continue
        (maps,) = explain_batch(model, [img], chosen, target=target, layer=layer, seed=seed)
        first = next(iter(maps.values()))
        row = ExplainRow(str(path), "", first.top3, first.label)
        thumb = img.convert("RGB")
        thumb.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
        rel = res.page.parent
        row.original = str(
            save_new_image(thumb, res.overlays / f"{path.stem}.jpg").relative_to(rel)
        )
        for m, ex in maps.items():
            dest = save_new_image(overlay(thumb, ex.heatmap), res.overlays / f"{path.stem}-{m}.jpg")
            row.overlays[m] = (str(dest.relative_to(rel)), ex.seconds)
        res.rows.append(row)
        if on_photo:
            on_photo(k, None)
        if on_progress:
            on_progress(k, total)
    write_explain_page(res.rows, chosen, res.page, title=title or f"explanations: {model.arch}")
    return res
