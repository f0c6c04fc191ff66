"""Readable reports of `evaluate_coco` results: per-class and per-size AP tables, PR curves.

`format_per_class_table` / `print_per_class_table` take the metrics dict (fresh from
`evaluate_coco` or read back from `save_metrics_json`'s file). `save_pr_curves` needs the
precision arrays, which only the `CocoMetrics` returned by `evaluate_coco` carries; it draws with
matplotlib when it is installed and with Pillow otherwise.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from keras_maskrcnn.evaluation.coco_eval import IOU_TYPES, PER_CLASS_METRICS, PrecisionRecall

SIZE_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MISSING = "-"

# The curves drawn per iou type: (label, IoU threshold or None for the 0.50:0.95 mean, the AP
# the curve averages to).
PR_CURVES = (("IoU=0.50", 0.5, "AP50"), ("IoU=0.75", 0.75, "AP75"),
             ("IoU=0.50:0.95", None, "AP"))
_CURVE_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44))
# Drawn in order, each thinner than the one before, so that coinciding curves all stay visible.
_CURVE_WIDTHS = (6, 4, 2)


def _fmt(value: Any, digits: int) -> str:
    """A metric in [0, 1] with `digits` decimals; "-" for None, NaN or pycocotools' -1."""
    if value is None or not isinstance(value, (int, float)):
        return MISSING
    value = float(value)
    if not math.isfinite(value) or value < 0:
        return MISSING
    return f"{value:.{digits}f}"


def _iou_types(metrics: Mapping[str, Any], iou_types: Sequence[str] | None) -> list[str]:
    if iou_types is None:
        return [t for t in IOU_TYPES if t in metrics]
    missing = [t for t in iou_types if t not in metrics]
    if missing:
        raise KeyError(f"metrics have no {missing} results (they hold {sorted(metrics)})")
    return list(iou_types)


def _grid(title: str, groups: list[tuple[str, Sequence[str]]], rows: list[tuple[str, list[str]]],
          footer: list[tuple[str, list[str]]]) -> str:
    """Columns grouped under a label ("bbox", "segm"), a first column of row names."""
    name_width = max([len("category"), *(len(r[0]) for r in rows + footer)])
    cell_width = 6
    group_widths = [max(len(label), len(names) * (cell_width + 1) - 1) for label, names in groups]
    cells_per_group = [len(names) for _, names in groups]

    def line(name: str, values: list[str]) -> str:
        parts, start = [], 0
        for count, width in zip(cells_per_group, group_widths, strict=True):
            chunk = " ".join(v.rjust(cell_width) for v in values[start:start + count])
            parts.append(chunk.rjust(width))
            start += count
        return " | ".join([name.ljust(name_width), *parts])

    rule = "-+-".join(["-" * name_width, *("-" * w for w in group_widths)])
    header_groups = " | ".join(
        [" " * name_width, *(label.center(w) for (label, _), w in zip(groups, group_widths,
                                                                     strict=True))])
    header_names = line("category", [n for _, names in groups for n in names])
    out = [title, header_groups.rstrip(), header_names, rule]
    out += [line(name, values) for name, values in rows]
    if footer:
        out.append(rule)
        out += [line(name, values) for name, values in footer]
    return "\n".join(out)


def format_per_class_table(metrics: Mapping[str, Any], iou_types: Sequence[str] | None = None,
                           digits: int = 3, hide_missing: bool = False) -> str:
    """Per-category AP / AP50 / AP75 of each iou type as an aligned text table.

    `metrics` is what `evaluate_coco` returns (or its JSON read back). Values are in [0, 1];
    "-" marks a category without ground truth on the evaluated images (`hide_missing` leaves
    those rows out). The last row, "all", is the overall AP / AP50 / AP75 (the mean over the
    categories that have ground truth).
    """
    types = _iou_types(metrics, iou_types)
    for t in types:
        if "per_class" not in metrics[t]:
            raise KeyError(f"metrics[{t!r}] has no 'per_class' table")
    names: list[str] = []
    for t in types:
        names += [n for n in metrics[t]["per_class"] if n not in names]
    rows = []
    for name in names:
        values = []
        for t in types:
            entry = metrics[t]["per_class"].get(name) or {}
            values += [_fmt(entry.get(m), digits) for m in PER_CLASS_METRICS]
        if not (hide_missing and all(v == MISSING for v in values)):
            rows.append((name, values))
    footer = [("all", [_fmt(metrics[t].get(m), digits) for t in types
                       for m in PER_CLASS_METRICS])]
    title = ('Per-class AP (IoU 0.50:0.95 / 0.50 / 0.75, area all, maxDets 100; '
             '"-" = no ground truth)')
    return _grid(title, [(t, PER_CLASS_METRICS) for t in types], rows, footer)


def format_size_table(metrics: Mapping[str, Any], iou_types: Sequence[str] | None = None,
                      digits: int = 3) -> str:
    """AP / AP50 / AP75 and AP by object size (small / medium / large), one row per iou type;
    "-" where there is no ground truth of that size."""
    types = _iou_types(metrics, iou_types)
    rows = [(t, [_fmt(metrics[t].get(m), digits) for m in SIZE_METRICS]) for t in types]
    lines = _grid("AP overall and by object size (s < 32^2 <= m < 96^2 <= l pixels)",
                  [("", SIZE_METRICS)], rows, []).splitlines()
    lines[2] = "iou type".ljust(len("category")) + lines[2][len("category"):]
    del lines[1]  # no group label
    return "\n".join(lines)


def print_per_class_table(metrics: Mapping[str, Any], iou_types: Sequence[str] | None = None,
                          digits: int = 3, hide_missing: bool = False,
                          file: TextIO | None = None) -> None:
    """Print `format_per_class_table(metrics, ...)` (to stdout by default)."""
    print(format_per_class_table(metrics, iou_types, digits, hide_missing),
          file=file or sys.stdout)


def _precision_recall_of(metrics: Any) -> Mapping[str, PrecisionRecall]:
    pr = getattr(metrics, "precision_recall", None)
    if pr is None and isinstance(metrics, Mapping) and metrics and all(
            isinstance(v, PrecisionRecall) for v in metrics.values()):
        pr = metrics
    if not pr:
        raise ValueError(
            "no precision arrays: pass the CocoMetrics returned by evaluate_coco (or "
            "keras_maskrcnn.inference.evaluate), or its `precision_recall` dict; metrics read "
            "back from JSON do not hold them")
    return pr


def pr_curve_series(pr: PrecisionRecall) -> list[tuple[str, np.ndarray, float]]:
    """The curves `save_pr_curves` draws for one iou type: `(label, precision [R], AP)` for
    IoU 0.50, IoU 0.75 and the mean over 0.50:0.95, all categories averaged."""
    series = []
    for label, threshold, _ in PR_CURVES:
        curve = pr.curve(threshold)
        ap = float(np.mean(curve)) if np.all(np.isfinite(curve)) else math.nan
        series.append((label, curve, ap))
    return series


def save_pr_curves(metrics: Any, path: str | os.PathLike, iou_types: Sequence[str] | None = None,
                   backend: str = "auto") -> str:
    """Draw precision-recall curves as a PNG: one panel per iou type (bbox, segm), each with the
    curves at IoU 0.50, 0.75 and the mean over 0.50:0.95 (all categories averaged, area "all",
    maxDets 100), the legend giving the AP each curve averages to.

    Args:
        metrics: the `CocoMetrics` from `evaluate_coco` / `inference.evaluate`, or a
            `{iou_type: PrecisionRecall}` dict.
        path: PNG file to write (parent folders are created).
        iou_types: panels to draw (default: every iou type evaluated).
        backend: "matplotlib", "pillow", or "auto" (matplotlib when installed, else Pillow).

    Returns:
        The path written, as a string.
    """
    pr = _precision_recall_of(metrics)
    types = _iou_types(pr, iou_types)
    if backend == "auto":
        try:
            import matplotlib  # noqa: F401
            backend = "matplotlib"
        except ImportError:
            backend = "pillow"
    if backend not in ("matplotlib", "pillow"):
        raise ValueError(f"backend must be 'auto', 'matplotlib' or 'pillow', got {backend!r}")
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    panels = [(t, pr[t].recall, pr_curve_series(pr[t])) for t in types]
    if backend == "matplotlib":
        _draw_matplotlib(panels, path)
    else:
        _draw_pillow(panels, path)
    return path


def _legend(label: str, ap: float) -> str:
    return f"{label}  AP={ap:.3f}" if math.isfinite(ap) else f"{label}  (no ground truth)"


def _draw_matplotlib(panels, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0 * len(panels), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    for i, (iou_type, recall, series) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for (label, curve, ap), color, width in zip(series, _CURVE_COLORS, _CURVE_WIDTHS,
                                                    strict=True):
            finite = np.all(np.isfinite(curve))
            ax.plot(recall if finite else [], curve if finite else [],
                    color=np.array(color) / 255.0, linewidth=width * 0.6,
                    label=_legend(label, ap))
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.05)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"{iou_type} (area all, maxDets 100)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, format="png")


# Pillow layout of one panel, in pixels.
_PANEL_W, _PANEL_H = 520, 440
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 32, 48
_Y_MAX = 1.05


def _plot_xy(recall: float, precision: float, x0: int) -> tuple[float, float]:
    """Pixel coordinates of a (recall, precision) point in the panel starting at x0."""
    width = _PANEL_W - _LEFT - _RIGHT
    height = _PANEL_H - _TOP - _BOTTOM
    return (x0 + _LEFT + recall * width, _TOP + (1.0 - precision / _Y_MAX) * height)


def _text(draw, xy: tuple[float, float], text: str, font, anchor: str) -> None:
    """Black text placed by a two-letter anchor (l/m/r horizontally, a/m/d vertically: top,
    middle, bottom), computed from the text's box so that bitmap fonts work too."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    x, y = xy
    x -= {"l": x0, "m": (x0 + x1) / 2, "r": x1}[anchor[0]]
    y -= {"a": y0, "m": (y0 + y1) / 2, "d": y1}[anchor[1]]
    draw.text((x, y), text, fill="black", font=font)


def _draw_pillow(panels, path: str) -> None:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (_PANEL_W * len(panels), _PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for i, (iou_type, recall, series) in enumerate(panels):
        x0 = i * _PANEL_W
        left, top = _plot_xy(0.0, _Y_MAX, x0)
        right, bottom = _plot_xy(1.0, 0.0, x0)
        for tick in np.linspace(0.0, 1.0, 6):
            gx, _ = _plot_xy(tick, 0.0, x0)
            _, gy = _plot_xy(0.0, tick, x0)
            draw.line([(gx, top), (gx, bottom)], fill=(225, 225, 225))
            draw.line([(left, gy), (right, gy)], fill=(225, 225, 225))
            _text(draw, (gx, bottom + 4), f"{tick:.1f}", font, "ma")
            _text(draw, (left - 4, gy), f"{tick:.1f}", font, "rm")
        draw.rectangle([left, top, right, bottom], outline="black")
        _text(draw, ((left + right) / 2, bottom + 22), "recall", font, "ma")
        _text(draw, (x0 + 4, top - 4), "precision", font, "ld")
        _text(draw, ((left + right) / 2, 6), f"{iou_type} (area all, maxDets 100)", font, "ma")
        for j, ((label, curve, ap), color, width) in enumerate(
                zip(series, _CURVE_COLORS, _CURVE_WIDTHS, strict=True)):
            if np.all(np.isfinite(curve)):
                points = [_plot_xy(float(r), float(p), x0) for r, p in zip(recall, curve,
                                                                          strict=True)]
                draw.line(points, fill=color, width=width, joint="curve")
            ly = bottom - 14 - 16 * (len(series) - 1 - j)
            draw.line([(left + 10, ly), (left + 34, ly)], fill=color, width=3)
            _text(draw, (left + 40, ly), _legend(label, ap), font, "lm")
    image.save(path, format="PNG")
