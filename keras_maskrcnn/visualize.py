"""Drawing of detections (masks, boxes, labels) on images with Pillow and numpy."""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MASK_ALPHA = 0.45
BOX_WIDTH = 2
_GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def instance_colors(count: int) -> np.ndarray:
    """Distinct deterministic colours, one per instance index.

    Hues step by the golden ratio so neighbouring indices get far-apart hues.

    Returns:
        `[count, 3]` uint8 RGB.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    colors = np.zeros((count, 3), dtype=np.uint8)
    for i in range(count):
        hue = (0.1 + i * _GOLDEN_RATIO_CONJUGATE) % 1.0
        value = 0.95 if i % 2 == 0 else 0.8
        rgb = colorsys.hsv_to_rgb(hue, 0.85, value)
        colors[i] = [round(c * 255) for c in rgb]
    return colors


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be a uint8 [h, w, 3] RGB array, got {image.dtype} {image.shape}"
        )
    return image


def _check_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    boxes = np.asarray(boxes, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [D, 4] (y1, x1, y2, x2), got {boxes.shape}")
    num = boxes.shape[0]
    if labels.shape != (num,) or scores.shape != (num,):
        raise ValueError(
            f"labels and scores must have shape [D]=[{num}], got {labels.shape}, {scores.shape}"
        )
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape != (num, *image.shape[:2]):
            raise ValueError(
                f"masks must have shape [D, h, w]={[num, *image.shape[:2]]}, got {masks.shape}"
            )
    return boxes, labels, scores, masks


def _binary_mask(mask: np.ndarray) -> np.ndarray:
    if np.issubdtype(mask.dtype, np.floating):
        return mask >= 0.5
    return mask != 0


def _blend_masks(
    image: np.ndarray, masks: np.ndarray, keep: np.ndarray, colors: np.ndarray
) -> np.ndarray:
    """Alpha-blend each kept instance mask over `image` (float32 [h, w, 3])."""
    out = image.astype(np.float32)
    for i in keep:
        region = _binary_mask(masks[i])
        out[region] = (1.0 - MASK_ALPHA) * out[region] + MASK_ALPHA * colors[i]
    return out


def _text_color(color: np.ndarray) -> tuple[int, int, int]:
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _draw_label(
    draw: ImageDraw.ImageDraw, text: str, x: float, y: float, color: np.ndarray, size: tuple
) -> None:
    """Draw `text` on a filled box at the box's top-left corner, kept inside the image."""
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    text_w, text_h = right - left + 2, bottom - top + 2
    width, height = size
    # Above the box when there is room, otherwise just inside its top edge.
    ty = y - text_h if y - text_h >= 0 else y
    tx = min(max(x, 0), max(width - text_w, 0))
    ty = min(max(ty, 0), max(height - text_h, 0))
    draw.rectangle([tx, ty, tx + text_w - 1, ty + text_h - 1], fill=tuple(int(c) for c in color))
    draw.text((tx + 1 - left, ty + 1 - top), text, fill=_text_color(color), font=font)


def _box_outline(box: np.ndarray, size: tuple) -> list[float]:
    y1, x1, y2, x2 = box
    width, height = size
    x1, x2 = sorted((min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)))
    y1, y2 = sorted((min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)))
    return [x1, y1, x2, y2]


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
    class_names: Sequence[str],
    score_threshold: float = 0.0,
) -> np.ndarray:
    """Draw detections on a copy of an image.

    Each kept detection gets a colour from `instance_colors` (by its index in the inputs): its
    mask is blended in with alpha `MASK_ALPHA`, its box is outlined in the same colour, and a
    label "name 0.93" (PIL's default font, filled background) sits at the box's top-left.

    Args:
        image: `[h, w, 3]` uint8 RGB, not modified.
        boxes: `[D, 4]` float `(y1, x1, y2, x2)` in the image's pixels.
        labels: `[D]` int contiguous labels `1..K`; rows with label <= 0 (padding) are skipped.
        scores: `[D]` float confidence scores.
        masks: `[D, h, w]` uint8 0/1 (or float probabilities, cut at 0.5) in the image's pixels,
            or None.
        class_names: names indexed by label (index 0 = "background").
        score_threshold: detections with `score < score_threshold` are not drawn.

    Returns:
        `[h, w, 3]` uint8 RGB.
    """
    image = _check_image(image)
    boxes, labels, scores, masks = _check_detections(image, boxes, labels, scores, masks)
    keep = np.nonzero((labels > 0) & (scores >= score_threshold))[0]
    if keep.size and labels[keep].max() >= len(class_names):
        raise ValueError(
            f"label {labels[keep].max()} has no entry in class_names (length {len(class_names)})"
        )
    colors = instance_colors(boxes.shape[0])
    if masks is not None:
        canvas = _blend_masks(image, masks, keep, colors)
        pil = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    else:  # no float copy of the image (large images: masks blended by `blend_mask_crops`)
        pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    for i in keep:
        outline = _box_outline(boxes[i], pil.size)
        draw.rectangle(outline, outline=tuple(int(c) for c in colors[i]), width=BOX_WIDTH)
    for i in keep:
        text = f"{class_names[labels[i]]} {scores[i]:.2f}"
        x1, y1 = _box_outline(boxes[i], pil.size)[:2]
        _draw_label(draw, text, x1, y1, colors[i], pil.size)
    return np.asarray(pil, dtype=np.uint8).copy()


def blend_mask_crops(image: np.ndarray, crops: Sequence[np.ndarray], origins: np.ndarray,
                     ) -> np.ndarray:
    """`draw_detections`' mask blending for masks stored as crops (`tiling.Detections`), so
    that no `[D, h, w]` mask array is needed: then draw boxes and labels with
    `draw_detections(blended, ..., masks=None)`; detection `i` gets `instance_colors`' colour i.

    Args:
        image: `[h, w, 3]` uint8 RGB, not modified.
        crops: D `[h_d, w_d]` 0/1 masks; origins: `[D, 2]` (row, column) of each in the image.

    Returns:
        `[h, w, 3]` uint8 copy with each mask blended in (alpha `MASK_ALPHA`, rounded per mask).
    """
    out = _check_image(image).copy()
    colors = instance_colors(len(crops))
    for i, crop in enumerate(crops):
        r, c = (int(v) for v in origins[i])
        r0, c0 = max(r, 0), max(c, 0)
        r1, c1 = min(r + crop.shape[0], out.shape[0]), min(c + crop.shape[1], out.shape[1])
        if r1 <= r0 or c1 <= c0:
            continue
        region = out[r0:r1, c0:c1]
        inside = crop[r0 - r:r1 - r, c0 - c:c1 - c] != 0
        # the arithmetic of `_blend_masks` (a float32 image), rounded at once
        blended = ((1.0 - MASK_ALPHA) * region[inside].astype(np.float32)
                   + MASK_ALPHA * colors[i]).astype(np.float32)
        region[inside] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def save_image(image: np.ndarray, path: str | os.PathLike) -> None:
    """Save a `[h, w, 3]` uint8 RGB image as PNG (parent folders are created)."""
    image = _check_image(image)
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
