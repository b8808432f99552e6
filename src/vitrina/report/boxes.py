"""Pictures of detection: boxes drawn on photos, a sheet of the worst photos (predicted and
true boxes), training curves (loss, mAP per epoch) and precision-recall curves per class."""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "TRUE_COLOR",
    "BoxPanel",
    "class_color",
    "draw_boxes",
    "plot_detection_curves",
    "plot_pr_curves",
    "write_box_sheet",
]

TRUE_COLOR = (20, 170, 60)  # ground truth on the worst-photos sheet
WRONG_COLOR = (225, 30, 30)  # a prediction matching no true box


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def class_color(index: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per class (golden-ratio hues)."""
    h = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(
    image: Image.Image,
    boxes: np.ndarray,
    texts: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    *,
    dashed: Sequence[bool] | None = None,
) -> Image.Image:
    """A copy of ``image`` (RGB) with each box outlined in its colour and labelled."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    side = max(out.size)
    width = max(2, side // 300)
    font = _font(max(11, side // 45))
    for k, (box, text, color) in enumerate(
        zip(np.asarray(boxes).reshape(-1, 4), texts, colors, strict=True)
    ):
        x1, y1, x2, y2 = (float(v) for v in box)
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)  # a sliver of a box is still drawn
        if dashed is not None and dashed[k]:
            _dashed_rect(draw, (x1, y1, x2 - 1, y2 - 1), color, width)
        else:
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=color, width=width)
        if not text:
            continue
        left, t, r, b = draw.textbbox((0, 0), text, font=font)
        th = b - t + 4
        top = y1 - th if y1 >= th else min(y2, out.size[1] - th)
        draw.rectangle((x1, top, x1 + r - left + 6, top + th), fill=color)
        draw.text((x1 + 3, top + 2 - t), text, fill="white", font=font)
    return out


def _dashed_rect(draw: ImageDraw.ImageDraw, box: tuple[float, ...], color: Any, width: int) -> None:
    x1, y1, x2, y2 = box
    dash = max(4, 3 * width)
    for a, b, horizontal, fixed in (
        (x1, x2, True, y1),
        (x1, x2, True, y2),
        (y1, y2, False, x1),
        (y1, y2, False, x2),
    ):
        v = a
        while v < b:
            e = min(v + dash, b)
            seg = (v, fixed, e, fixed) if horizontal else (fixed, v, fixed, e)
            draw.line(seg, fill=color, width=width)
            v += 2 * dash


@dataclass
class BoxPanel:
    """One photo of a sheet: true boxes (green, dashed) and predicted ones (class colour;
    red when they match no true box), with a caption."""

    path: str
    true_boxes: np.ndarray
    true_texts: list[str]
    pred_boxes: np.ndarray
    pred_texts: list[str]
    pred_colors: list[tuple[int, int, int]]
    caption: str


def write_box_sheet(
    panels: Sequence[BoxPanel],
    out: str | Path,
    *,
    tile: int = 320,
    columns: int = 4,
    title: str = "",
) -> Path:
    """A grid of photos with their true and predicted boxes (e.g. the worst photos of an
    evaluation), written atomically as PNG."""
    from vitrina.io import read_image
    from vitrina.io.files import atomic_write_bytes

    font = _font(12)
    pad, cap_h, title_h = 8, 34, 24 if title else 0
    cols = max(1, min(columns, len(panels) or 1))
    rows = max(1, -(-len(panels) // cols))
    sheet = Image.new(
        "RGB", (pad + cols * (tile + pad), title_h + pad + rows * (tile + cap_h + pad)), "white"
    )
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 6), title, fill="black", font=_font(14))
    if not panels:
        draw.text((pad, title_h + pad), "nothing to show", fill="black", font=font)
    for k, p in enumerate(panels):
        x = pad + (k % cols) * (tile + pad)
        y = title_h + pad + (k // cols) * (tile + cap_h + pad)
        try:
            photo = read_image(p.path)
            n_true = len(p.true_texts)
            boxes = np.concatenate(
                [np.reshape(p.true_boxes, (-1, 4)), np.reshape(p.pred_boxes, (-1, 4))]
            )
            im = draw_boxes(
                photo,
                boxes,
                list(p.true_texts) + list(p.pred_texts),
                [TRUE_COLOR] * n_true + list(p.pred_colors),
                dashed=[True] * n_true + [False] * len(p.pred_texts),
            )
            im.thumbnail((tile, tile), Image.Resampling.LANCZOS)
        except Exception as e:  # an unreadable photo is a grey tile that says so
            im = Image.new("RGB", (tile, tile), (200, 200, 200))
            ImageDraw.Draw(im).text(
                (6, tile // 2), f"unreadable: {e}"[:60], fill=(120, 0, 0), font=font
            )
        sheet.paste(im, (x + (tile - im.width) // 2, y + (tile - im.height) // 2))
        for li, line in enumerate(p.caption.split("\n")[:2]):
            draw.text((x, y + tile + 3 + li * 14), line[:60], fill=(40, 40, 40), font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_detection_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Training loss (total and its parts) and validation mAP per epoch; best epoch marked."""
    from vitrina.report.plots import _plt, _save

    plt = _plt()
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="total")
    parts = sorted({k for r in history for k in r if k.startswith("loss_")})
    for k in parts:
        ax1.plot(epochs, [r.get(k, np.nan) for r in history], ".--", lw=1, label=k[5:])
    if history and "val_mAP" in history[0]:
        ax2.plot(epochs, [r["val_mAP"] for r in history], "s-", label="mAP@[.5:.95]")
        ax2.plot(epochs, [r["val_mAP50"] for r in history], "^-", label="mAP@.5")
    best = [r["epoch"] for r in history if r.get("best")]
    for ax, title in zip((ax1, ax2), ("training loss", "validation mAP"), strict=True):
        if best:
            ax.axvline(best[-1], color="grey", ls="--", lw=1, label=f"best (epoch {best[-1]})")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def plot_pr_curves(
    curves: dict[str, Sequence[float] | None],
    ap50: dict[str, float],
    path: str | Path,
    *,
    title: str = "precision-recall at IoU 0.5",
) -> Path:
    """One precision-recall curve per class (COCO's 101 recall points), AP@.5 in the legend;
    classes in a grid of small charts when there are many."""
    from vitrina.report.plots import _plt, _save

    plt = _plt()
    names = [n for n, c in curves.items() if c is not None]
    per = 8
    groups = [names[i : i + per] for i in range(0, len(names), per)] or [[]]
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    recall = np.linspace(0, 1, 101)
    for ax, group in zip(axes.flat, groups, strict=False):
        for n in group:
            ax.plot(recall, np.asarray(curves[n], float), lw=1.4, label=f"{n} ({ap50[n]:.2f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.suptitle(f"{title} (AP@.5 per class)")
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
