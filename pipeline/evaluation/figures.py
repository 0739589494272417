"""The drawing of the review evidence (pipeline.evaluation.evidence chooses what to draw): contact
sheets of films with their Grad-CAM heat maps, ROC and precision-recall curves of two models on the
same cases, one sheet of films under every stress shift. matplotlib (Agg), one PNG per figure,
written through evaluate.save_figure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen: no display on servers)
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from pipeline.evaluation.evaluate import save_figure  # noqa: E402

COLUMNS = 4             # gallery tiles per row
TILE_IN = 2.3           # gallery tile side, inches (at 100 dpi: a 160 px film at 1.4x)
WRONG, RIGHT = "#c0392b", "#1e7b34"
MODEL_COLOURS = {"challenger": "#d35400", "champion": "#2c3e50"}


@dataclass
class Tile:
    film: np.ndarray           # uint8 [S, S], what the model saw (before its intensity normalisation)
    heat: np.ndarray | None    # Grad-CAM in [0, 1], [S, S]; None: the film alone
    caption: str
    colour: str = "black"


def heat_alpha(heat: np.ndarray) -> np.ndarray:
    """Opacity of the heat map over the film: faint evidence transparent, as on the site's result page."""
    return np.clip((np.asarray(heat, np.float32) - 0.15) / 0.5, 0.0, 1.0) * 0.6


def show(ax, tile: Tile) -> None:
    """One film (grey) with its heat map ('jet', transparent where faint) and its caption below."""
    ax.imshow(tile.film, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
    if tile.heat is not None:
        ax.imshow(tile.heat, cmap="jet", vmin=0, vmax=1, alpha=heat_alpha(tile.heat), interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(tile.caption, fontsize=8, color=tile.colour, labelpad=2)


def message(text: str, path: Path, title: str) -> Path:
    """A figure that says in words why there is nothing to show (an empty gallery is stated, not absent)."""
    fig, ax = plt.subplots(figsize=(6.5, 1.8))
    ax.axis("off")
    ax.set_title(title, fontsize=11, loc="left")
    ax.text(0.0, 0.4, text, fontsize=10, va="center", ha="left", transform=ax.transAxes, wrap=True)
    return save_figure(fig, path)


def gallery(tiles: list[Tile], title: str, path: Path, empty: str) -> Path:
    """A contact sheet of `tiles`, COLUMNS per row, titled; `empty` is said instead when there are none."""
    if not tiles:
        return message(empty, path, title)
    rows = math.ceil(len(tiles) / COLUMNS)   # always COLUMNS wide: the title fits, tiles keep one size
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(COLUMNS * TILE_IN, rows * (TILE_IN + 0.35) + 0.9), squeeze=False)
    for ax in axes.flat[len(tiles):]:
        ax.axis("off")
    for ax, tile in zip(axes.flat, tiles):
        show(ax, tile)
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    return save_figure(fig, path)


def curves(sets: dict[str, dict], title: str, path: Path, points: dict[str, tuple[float, float]] | None = None) -> Path:
    """ROC (left) and precision-recall (right) of each model on the same cases, areas in the legend.
    sets: model label -> curve data (evidence.curve_data); points: label -> (1 - specificity,
    sensitivity) at the model's threshold, marked on the ROC."""
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.6))
    roc.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    for label, c in sets.items():
        colour = MODEL_COLOURS.get(label.split()[0])
        roc.plot(c["fpr"], c["tpr"], color=colour, lw=1.6, label=f"{label}: AUC {c['auc']:.3f}")
        pr.plot(c["recall"], c["precision"], color=colour, lw=1.6, label=f"{label}: AP {c['ap']:.3f}",
                drawstyle="steps-post")
        if points and label in points:
            x, y = points[label]
            roc.plot([x], [y], "o", color=colour, ms=6, markeredgecolor="white")
    any_set = next(iter(sets.values()))
    prevalence = any_set["positives"] / max(1, any_set["n"])
    pr.axhline(prevalence, ls="--", color="grey", lw=0.8, label=f"prevalence {prevalence:.2f}")
    roc.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
            xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title="ROC" + (" (dot: stored threshold)" if points else ""))
    pr.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           title="Precision-recall")
    roc.legend(loc="lower right", fontsize=8)
    pr.legend(loc="lower left", fontsize=8)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def shift_sheet(films: list[dict], shifts: list[tuple[str, str]], title: str, path: Path, side: int = 128) -> Path:
    """Rows: the clean films, then one row per shift family; columns: each film at each strength.
    films: {"caption", "clean": Tile, "shifted": {shift name: Tile}}; shifts: (family, row label).
    Drawn with PIL as one mosaic (as matplotlib axes, the hundred tiles took seconds)."""
    label_w, top, gap, cap = 150, 80, 10, 18      # pixels
    col_x = [label_w + j * (2 * side + 3 * gap) + k * (side + gap) for j in range(len(films)) for k in range(2)]
    row_h = side + cap + gap
    sheet = Image.new("RGB", (col_x[-1] + side + gap, top + row_h * (1 + len(shifts))), "white")
    draw = ImageDraw.Draw(sheet)
    small, large = font(12), font(15)

    def put(tile: Tile, x: int, y: int) -> None:
        sheet.paste(Image.fromarray(tile.film).resize((side, side), Image.Resampling.BILINEAR), (x, y))
        draw.text((x + side // 2, y + side + 2), tile.caption, fill=tile.colour, font=small, anchor="ma")

    def row_label(text: str, y: int) -> None:
        draw.multiline_text((label_w - 12, y + side // 2), text, fill="black", font=small, anchor="rm", align="right")

    draw.multiline_text((10, 8), title, fill="black", font=large)
    for j, film in enumerate(films):
        x = col_x[2 * j] + (side + gap) // 2
        draw.multiline_text((x + side // 2, top - 34), film["caption"], fill="black", font=small, anchor="ma",
                            align="center")
        put(film["clean"], x, top)
    row_label("clean film", top)
    for i, (family, label) in enumerate(shifts, start=1):
        y = top + i * row_h
        row_label(label, y)
        for j, film in enumerate(films):
            for k, strength in enumerate(("mild", "strong")):
                tile = film["shifted"].get(f"{family}:{strength}")
                if tile is not None:
                    put(tile, col_x[2 * j + k], y)
    sheet.save(path, format="PNG", optimize=False)
    return path


def font(size: int):
    """Pillow's own scalable font (no system font needed); its small bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()
