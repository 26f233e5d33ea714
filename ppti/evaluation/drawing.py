"""Pictures of an evaluation (Pillow only: matplotlib is not a ppti requirement).

    plot           the scores against the step, one panel per score, the recommended step marked; beside them the
                   image/text similarity of every step with the Pareto front and the recommendation
    contact sheet  one row per saved step: the reconstruction images, then one image per edit prompt (first
                   seed); the recommended step is starred
"""

from __future__ import annotations

from typing import Optional, Sequence

from PIL import Image, ImageDraw

from .scores import Row, pareto_front

PANELS = (("image_similarity", "image similarity (higher: more like the training images)"),
          ("text_similarity", "text similarity (higher: follows the edit prompts)"),
          ("eval_loss", "eval loss (frozen batch)"),
          ("norm", "embedding norm"))
COLOURS = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd")
PANEL_COLOURS = COLOURS + ("#8c564b", "#17becf")
MARK = "#ff7f0e"
PANEL_W, PANEL_H, MARGIN = 520, 120, 60
SCATTER = 300
HEADER_H = 14  # the contact sheet's column names


def _axes_range(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or abs(high) * 0.05 or 1.0
    return low - pad, high + pad


def _labels(low: float, high: float) -> tuple[str, str]:
    """The axis ends with just enough significant digits to tell them apart (at most 7)."""
    for digits in range(3, 8):
        texts = f"{low:.{digits}g}", f"{high:.{digits}g}"
        if texts[0] != texts[1]:
            break
    return texts


def _line_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], steps: list[int], values: list[float],
                title: str, colour: str, recommended: Optional[int]) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline="#888888")
    draw.text((left, top - 13), title, fill="black")
    low, high = _axes_range(values)
    first, last = steps[0], steps[-1] if steps[-1] != steps[0] else steps[0] + 1

    def xy(step: float, value: float) -> tuple[float, float]:
        return (left + (step - first) / (last - first) * (right - left - 20) + 10,
                bottom - (value - low) / (high - low) * (bottom - top))

    for value, text in zip((low, high), _labels(low, high)):
        draw.text((left - MARGIN + 2, xy(first, value)[1] - 6), text, fill="#555555")
    if recommended is not None:
        x = xy(recommended, low)[0]
        for y in range(top, bottom, 6):
            draw.line((x, y, x, min(y + 3, bottom)), fill=MARK)
    points = [xy(s, v) for s, v in zip(steps, values)]
    if len(points) > 1:
        draw.line(points, fill=colour, width=2)
    for x, y in points:
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)


def _scatter(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], rows: Sequence[Row],
             recommended: Optional[Row]) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline="#888888")
    draw.text((left, top - 13), "text vs image similarity (front: -)", fill="black")
    draw.text((left + 4, bottom + 4), "image similarity ->", fill="#555555")
    draw.text((left + 4, top + 4), "^ text similarity", fill="#555555")
    x_low, x_high = _axes_range([r.image_similarity for r in rows])
    y_low, y_high = _axes_range([r.text_similarity for r in rows])

    def xy(r: Row) -> tuple[float, float]:
        return (left + (r.image_similarity - x_low) / (x_high - x_low) * (right - left),
                bottom - (r.text_similarity - y_low) / (y_high - y_low) * (bottom - top))

    front = sorted(pareto_front(rows), key=lambda r: r.image_similarity)
    if len(front) > 1:
        draw.line([xy(r) for r in front], fill="#888888", width=1)
    for r in rows:
        x, y = xy(r)
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=COLOURS[0])
        draw.text((x + 5, y - 6), str(r.step), fill="black")
    if recommended is not None:
        x, y = xy(recommended)
        draw.ellipse((x - 7, y - 7, x + 7, y + 7), outline=MARK, width=2)


def plot(rows: Sequence[Row], recommended: Optional[Row], panels: Sequence[tuple[str, str]] = PANELS,
         title: Optional[str] = None) -> Image.Image:
    """The score plot (see module doc) as an RGB image; `panels`: (column of Row.as_dict(), label) per panel."""
    steps = [r.step for r in rows]
    width = MARGIN + PANEL_W + 40 + SCATTER + 20
    height = 30 + len(panels) * (PANEL_H + 30) + 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    title = title or "scores per saved step" + (f"; recommended step {recommended.step} (dashed)" if recommended else "")
    draw.text((MARGIN, 6), title, fill="black")
    mark = recommended.step if recommended else None
    for i, (key, label) in enumerate(panels):
        top = 40 + i * (PANEL_H + 30)
        _line_panel(draw, (MARGIN, top, MARGIN + PANEL_W, top + PANEL_H), steps, [r.as_dict()[key] for r in rows],
                    label, PANEL_COLOURS[i % len(PANEL_COLOURS)], mark)
    last_bottom = 40 + (len(panels) - 1) * (PANEL_H + 30) + PANEL_H
    draw.text((MARGIN, last_bottom + 4), f"step {steps[0]}", fill="#555555")
    draw.text((MARGIN + PANEL_W - 60, last_bottom + 4), f"step {steps[-1]}", fill="#555555")
    left = MARGIN + PANEL_W + 40
    _scatter(draw, (left, 40, left + SCATTER, 40 + SCATTER), rows, recommended)
    return image


def contact_sheet(rows: Sequence[Row], images: Sequence[Sequence[Image.Image]], num_reconstruction: int,
                  recommended: Optional[Row]) -> Image.Image:
    """images[i]: the pictures of rows[i] (the reconstruction images, then one per edit prompt), one sheet row
    each, under a header naming the columns; the recommended step is starred."""
    from ..generate import labelled
    from ..validation import image_grid

    sheet = []
    for row, pictures in zip(rows, images):
        star = " *" if recommended is not None and row.step == recommended.step else ""
        sheet.append([labelled(pictures[0], f"step {row.step}{star}")] + list(pictures[1:]))
    grid = image_grid(sheet)
    width = grid.size[0] // max(len(p) for p in images)
    header = Image.new("RGB", (grid.size[0], HEADER_H), "white")
    draw = ImageDraw.Draw(header)
    for column in range(len(images[0])):
        name = "recon" if column < num_reconstruction else f"edit {column - num_reconstruction + 1}"
        draw.text((column * width + 2, 2), name, fill="black")
    out = Image.new("RGB", (grid.size[0], grid.size[1] + HEADER_H), "white")
    out.paste(header, (0, 0))
    out.paste(grid, (0, HEADER_H))
    return out
