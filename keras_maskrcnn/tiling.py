"""Sliced ("tiled") inference for small objects in large images: tile geometry, per-tile
detections mapped into the image, and the merge of duplicates across tile borders.

Why: the model resizes its whole input to about `min_size`..`max_size` pixels, so on a
4000 x 3000 photo a 30-pixel object shrinks to a few input pixels and is lost. Running the model
on `S x S` tiles of the full-resolution image keeps objects at their native size (`S` near the
model's input size: no downscaling at all).

Everything here is numpy (and pycocotools for RLE): the Keras path (`inference.predict_tiled`)
and a SavedModel client (`examples/saved_model_tiled.py`) share these functions.

Geometry (`tile_grid`): along each axis the tiles start at `n` evenly spread integer positions
from 0 to `length - S`, with `n` the fewest tiles whose stride is at most `S * (1 - overlap)`;
so the first tile is flush with the top/left border, the last with the bottom/right border,
every tile is exactly `S` pixels (no padding, hence no detections on padding) and neighbours
overlap by at least `overlap * S` pixels. An axis shorter than `S` gets one tile, the whole
axis. Tiles are numpy views of the one decoded image (`crop_tiles`), never copies.

Masks: a detection keeps its binary mask only as a crop (`Detections.mask_crops`, uint8, the
tight extent of its pixels) with the crop's top-left `mask_origins` in image pixels; a full-image
`[h, w]` mask is made only on request (`Detections.full_masks`, `Detections.mask`), and COCO
RLE is written from the crop directly (`crop_rle`), so a 12000 x 8000 image with 500 detections
does not hold 500 full-size masks.

Merge (`merge_detections`): greedy per class, in descending score order:
- two detections are the same object when their box IoU is >= `iou_threshold` (the model's
  own per-class NMS threshold, `config.nms_threshold`), or, when at least one of them is *cut*
  (its box touches, within `edge_margin` pixels, an edge of its tile that is not an image
  border), when their boxes or their masks, restricted to the pixels both tiles saw, have an
  IoU >= `iou_threshold`, or when a cut one lies at least `CONTAINED` (70 %) inside the box of
  a whole one grown by the margin (a sliver at a tile edge, or a truncated object's box that
  the model placed badly, still lies on the whole object);
- two whole (uncut) detections: the lower-scored one is suppressed (NMS);
- a whole and a cut detection: the whole one's box and mask are kept (with the higher score);
- two cut detections (an object larger than the overlap, seen in parts by several tiles): they
  are merged: the union of the boxes, the union of the masks, the higher score. A part that
  matches several merged groups joins them into one; a merged detection still counts as cut
  (its parts need not cover the object), so that a later whole detection replaces all its
  parts and further parts join it.

Why not plain NMS: a tile that sees 40 % of an object near its border reports a box whose IoU
with the whole object's box is about 0.4, below any usual NMS threshold, so NMS keeps both (a
duplicate). Why not merge every overlapping pair (by intersection over the smaller box, as
"non-maximum merging" does): that glues touching or nested objects of the same class into one.
Comparing a part with the whole object (or two parts) only where both tiles saw the object
makes them agree exactly there, whatever the rest of the object looks like, while whole
detections are still compared by plain box IoU, as the model's NMS does. Masks are compared
as well as boxes because the box of a merged, non-rectangular object, clipped to a small
shared region, can be much larger than the object's part there; boxes alone are kept for the
whole-whole case (cheap for thousands of tile detections).

The optional whole-image pass (`full_image=True` in `inference.predict_tiled`) adds the model's
detections on the downscaled whole image with the whole image as their view (never cut): they
recover objects larger than a tile, which the tiles only see in parts.

Frames: boxes `(y1, x1, y2, x2)` float32 in original image pixels; tiles and views
`(y0, x0, y1, x1)` int pixel edges (`[y0, y1) x [x0, x1)`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from keras_maskrcnn.ops.paste import paste_masks

DEFAULT_OVERLAP = 0.2
MIN_TILE = 32  # the coarsest FPN level (stride 32) needs one pixel
EDGE_MARGIN_FRACTION = 0.03  # of the tile side, at least MIN_EDGE_MARGIN pixels
MIN_EDGE_MARGIN = 2.0
CONTAINED = 0.7  # a cut part this much inside a whole detection's box (grown by the margin)


# --------------------------------------------------------------------------------- checks
def check_tiling(tile, overlap) -> tuple[int, float]:
    """`(tile, overlap)` as (int, float); ValueError naming the bad one: `tile` an int >= 32
    (pixels of the original image), `overlap` a fraction in [0, 1)."""
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < MIN_TILE:
        raise ValueError(f"tile must be an int >= {MIN_TILE} (tile side in image pixels), "
                         f"got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"tile_overlap must be a fraction in [0, 1) (e.g. 0.2), got {overlap!r}")
    return int(tile), float(overlap)


# --------------------------------------------------------------------------------- geometry
def tile_starts(length: int, tile: int, overlap: float) -> np.ndarray:
    """Start offsets `[n]` int64 of the tiles along one axis of `length` pixels.

    `n = ceil((length - tile) / stride) + 1` with `stride = max(1, floor(tile * (1 -
    overlap)))`, starts `round(i * (length - tile) / (n - 1))`: first 0, last `length - tile`
    (flush with the border), steps <= stride (overlap >= `overlap * tile`). `[0]` when
    `length <= tile` (one tile, the whole axis)."""
    tile, overlap = check_tiling(tile, overlap)
    if length <= tile:
        return np.zeros(1, np.int64)
    stride = max(1, math.floor(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    return np.round(np.arange(count) * ((length - tile) / (count - 1))).astype(np.int64)


def tile_grid(image_shape: Sequence[int], tile: int, overlap: float = DEFAULT_OVERLAP) -> np.ndarray:
    """Tiles covering an image `(h, w)`: `[T, 4]` int64 `(y0, x0, y1, x1)` pixel edges, row
    by row; each is `min(tile, h) x min(tile, w)` (see the module doc)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image_shape must be positive (h, w), got {tuple(image_shape)}")
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    y0, x0 = np.meshgrid(ys, xs, indexing="ij")
    y0, x0 = y0.ravel(), x0.ravel()
    return np.stack([y0, x0, y0 + th, x0 + tw], axis=1)


def crop_tiles(image: np.ndarray, tiles: np.ndarray) -> list[np.ndarray]:
    """Views (no copies) `image[y0:y1, x0:x1]` of `image [h, w, ...]` for each tile `[T, 4]`."""
    return [image[y0:y1, x0:x1] for y0, x0, y1, x1 in np.asarray(tiles).tolist()]


# --------------------------------------------------------------------------------- detections
@dataclass
class Detections:
    """Detections of one image in original pixels, masks stored as crops.

    Attributes:
        boxes: `[D, 4]` float32 (y1, x1, y2, x2).
        scores: `[D]` float32.
        labels: `[D]` int32, 1..K.
        mask_origins: `[D, 2]` int64 (row, column) of each crop's top-left pixel.
        mask_crops: D uint8 {0, 1} arrays `[h_d, w_d]` (0 x 0 for an empty mask).
        views: `[D, 4]` int64 (y0, x0, y1, x1): the image region the model saw when it made the
            detection (its tile; the whole image for a whole-image pass).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    mask_origins: np.ndarray
    mask_crops: list[np.ndarray]
    views: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32),
                   np.zeros((0, 2), np.int64), [], np.zeros((0, 4), np.int64))

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.boxes for p in parts]).astype(np.float32),
                   np.concatenate([p.scores for p in parts]).astype(np.float32),
                   np.concatenate([p.labels for p in parts]).astype(np.int32),
                   np.concatenate([p.mask_origins for p in parts]).astype(np.int64),
                   [c for p in parts for c in p.mask_crops],
                   np.concatenate([p.views for p in parts]).astype(np.int64))

    def select(self, index) -> Detections:
        """The detections at `index` (int array or bool mask), in that order."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, int)
        return Detections(self.boxes[index], self.scores[index], self.labels[index],
                          self.mask_origins[index], [self.mask_crops[i] for i in index],
                          self.views[index])

    def mask(self, i: int, image_shape: Sequence[int]) -> np.ndarray:
        """Detection `i`'s mask in the image: `[h, w]` uint8 {0, 1}."""
        out = np.zeros((int(image_shape[0]), int(image_shape[1])), np.uint8)
        paste_crop(out, self.mask_crops[i], self.mask_origins[i])
        return out

    def full_masks(self, image_shape: Sequence[int]) -> np.ndarray:
        """All masks in the image, `[D, h, w]` uint8 (D * h * w bytes: only when needed)."""
        out = np.zeros((len(self), int(image_shape[0]), int(image_shape[1])), np.uint8)
        for i, crop in enumerate(self.mask_crops):
            paste_crop(out[i], crop, self.mask_origins[i])
        return out

    def as_dict(self, image_shape: Sequence[int]) -> dict[str, np.ndarray]:
        """`inference.predict_images`' dict: boxes, scores, labels and `masks [D, h, w]`."""
        return {"boxes": self.boxes.astype(np.float32), "scores": self.scores.astype(np.float32),
                "labels": self.labels.astype(np.int32), "masks": self.full_masks(image_shape)}


def paste_crop(out: np.ndarray, crop: np.ndarray, origin) -> None:
    """ORs `crop [ch, cw]` into `out [h, w]` at `origin` (row, column), clipped to `out`."""
    r, c = int(origin[0]), int(origin[1])
    ch, cw = crop.shape
    r0, c0 = max(r, 0), max(c, 0)
    r1, c1 = min(r + ch, out.shape[0]), min(c + cw, out.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] |= crop[r0 - r:r1 - r, c0 - c:c1 - c]


def tight_crop(mask: np.ndarray, origin) -> tuple[np.ndarray, np.ndarray]:
    """(`mask` cut to the extent of its nonzero pixels as uint8, the new origin `[2]`);
    a 0 x 0 crop at `origin` for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    origin = np.asarray(origin, np.int64)
    if not rows.size:
        return np.zeros((0, 0), np.uint8), origin
    crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.uint8)
    return crop, origin + np.array([rows[0], cols[0]], np.int64)


def tile_detections(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, masks: np.ndarray,
    view: Sequence[int], mask_threshold: float = 0.5, paste_method: str = "exact",
) -> Detections:
    """One tile's detections (model outputs in the tile's own pixels) in image pixels.

    Args:
        boxes: `[D, 4]` float (y1, x1, y2, x2) in the tile's pixels (clipped to the tile), as
            `inference.postprocess` or the SavedModel's `detection_boxes` give them.
        scores, labels: `[D]`; padding rows already removed.
        masks: `[D, P, P]` float mask probabilities of each box (`detection_masks`).
        view: `(y0, x0, y1, x1)` the tile in the image (a whole-image pass: `(0, 0, h, w)`).
        mask_threshold, paste_method: as `ops.paste.paste_masks`.

    Each mask is pasted (`ops.paste.paste_masks`) only into a window around its box (the box
    grown by `max(box side) / P + 2` pixels, where the pasted mask can reach, clipped to the
    tile) and kept as its tight crop.
    """
    view = np.asarray(view, np.int64)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    masks = np.asarray(masks, np.float32)
    th, tw = int(view[2] - view[0]), int(view[3] - view[1])
    origins, crops = [], []
    for box, mask in zip(boxes, masks, strict=True):
        grow = max(box[2] - box[0], box[3] - box[1]) / mask.shape[-1] + 2.0
        r0, c0 = max(math.floor(box[0] - grow), 0), max(math.floor(box[1] - grow), 0)
        r1, c1 = min(math.ceil(box[2] + grow), th), min(math.ceil(box[3] + grow), tw)
        window = np.zeros((0, 0), np.uint8)
        if r1 > r0 and c1 > c0:
            local = box - np.array([r0, c0, r0, c0], np.float32)
            window = paste_masks(mask[None], local[None], (r1 - r0, c1 - c0),
                                 threshold=mask_threshold, method=paste_method)[0]
        crop, origin = tight_crop(window, (r0, c0)) if window.size else (window, (r0, c0))
        crops.append(crop)
        origins.append(np.asarray(origin, np.int64) + view[:2])
    n = len(boxes)
    return Detections(
        boxes + np.array([view[0], view[1], view[0], view[1]], np.float32),
        np.asarray(scores, np.float32).reshape(n), np.asarray(labels, np.int32).reshape(n),
        np.asarray(origins, np.int64).reshape(n, 2), crops, np.tile(view, (n, 1)))


# --------------------------------------------------------------------------------- merge
def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU `[K]` of `box [4]` (or `[K, 4]`, elementwise) with `others [K, 4]`; 0 where the
    union is empty."""
    y1 = np.maximum(box[..., 0], others[:, 0])
    x1 = np.maximum(box[..., 1], others[:, 1])
    y2 = np.minimum(box[..., 2], others[:, 2])
    x2 = np.minimum(box[..., 3], others[:, 3])
    inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
    area_a = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    area_b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def clip_to(boxes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """`boxes [K, 4]` (or one `[4]`) clipped to `regions [K, 4]` (empty when outside)."""
    lo = np.maximum(boxes[..., :2], regions[:, :2])
    hi = np.minimum(boxes[..., 2:], regions[:, 2:])
    return np.concatenate([lo, np.maximum(hi, lo)], axis=-1)


def edge_margins(views: np.ndarray, edge_margin: float | None = None) -> np.ndarray:
    """`[D]` float64 pixels: `edge_margin`, or (None) `max(2, 3 %` of each view's longer side`)`
    (the box of a truncated object often stops a few pixels short of the tile edge)."""
    views = np.asarray(views, np.float64).reshape(-1, 4)
    if edge_margin is not None:
        return np.full(len(views), float(edge_margin))
    side = np.maximum(views[:, 2] - views[:, 0], views[:, 3] - views[:, 1])
    return np.maximum(MIN_EDGE_MARGIN, EDGE_MARGIN_FRACTION * side)


def is_cut(boxes: np.ndarray, views: np.ndarray, image_shape: Sequence[int],
           edge_margin: float | None = None) -> np.ndarray:
    """`[D]` bool: box touches, within `edge_margins`, an edge of its view that is not an
    image border."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    views = np.asarray(views, np.float64).reshape(-1, 4)
    h, w = float(image_shape[0]), float(image_shape[1])
    margin = edge_margins(views, edge_margin)
    return (((views[:, 0] > 0) & (boxes[:, 0] <= views[:, 0] + margin))
            | ((views[:, 1] > 0) & (boxes[:, 1] <= views[:, 1] + margin))
            | ((views[:, 2] < h) & (boxes[:, 2] >= views[:, 2] - margin))
            | ((views[:, 3] < w) & (boxes[:, 3] >= views[:, 3] - margin)))


def merge_detections(
    parts: Sequence[Detections] | Detections, image_shape: Sequence[int],
    iou_threshold: float = 0.5, edge_margin: float | None = None,
) -> Detections:
    """Merges the detections of overlapping tiles (and an optional whole-image pass) into one
    set without duplicates: the rule of the module doc, per class, highest score first.

    Args:
        parts: per-tile `Detections` (`tile_detections`), or one already concatenated.
        image_shape: (h, w) of the image.
        iou_threshold: two whole detections with box IoU at or above this are one object
            (NMS); a cut one is one object with another when their boxes, or their masks inside
            the region both views saw, have at least this IoU.
        edge_margin: pixels within which a box touching an inner tile edge counts as cut
            (None: `max(2, 3 %` of the tile side`)`).

    Returns:
        `Detections`, descending score; merged parts have the union box, mask and view.
    """
    det = parts if isinstance(parts, Detections) else Detections.concat(parts)
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if not len(det):
        return det
    cut = is_cut(det.boxes, det.views, image_shape, edge_margin)
    margins = edge_margins(det.views, edge_margin)
    order = np.lexsort((np.arange(len(det)), -det.scores))  # score down, stable
    groups: list[_Group] = []
    for label in np.unique(det.labels):
        groups.extend(_merge_class(det, order[det.labels[order] == label], cut, margins,
                                   iou_threshold))
    groups.sort(key=lambda g: (-float(det.scores[g.head]), g.head))
    heads = np.array([g.head for g in groups], np.int64)
    return Detections(
        np.array([g.box for g in groups], np.float32).reshape(-1, 4), det.scores[heads],
        det.labels[heads], np.array([g.origin for g in groups], np.int64).reshape(-1, 2),
        [g.crop for g in groups], np.array([g.view for g in groups], np.int64).reshape(-1, 4))


@dataclass
class _Group:
    """One kept object while merging: the detection whose score it has, its box, view (the
    bounding box of `seen`), mask (crop, origin), whether it is (made of) cut parts, and the
    views of its parts."""

    head: int
    box: np.ndarray
    view: np.ndarray
    crop: np.ndarray
    origin: np.ndarray
    cut: bool
    seen: list[np.ndarray]
    margin: float


def _merge_class(det: Detections, idx: np.ndarray, cut: np.ndarray, margins: np.ndarray,
                 iou_threshold: float) -> list[_Group]:
    """Greedy merge of one class's detections `idx` (descending score)."""
    boxes, views = det.boxes.astype(np.float64), det.views.astype(np.float64)
    kept_boxes = np.zeros((len(idx), 4))
    kept_views = np.zeros((len(idx), 4))
    kept_cut = np.zeros(len(idx), bool)
    kept_margin = np.zeros(len(idx))
    alive = np.zeros(len(idx), bool)
    groups: list[_Group] = []
    for i in idx:
        k = len(groups)
        new = _Group(int(i), boxes[i], views[i], det.mask_crops[i], det.mask_origins[i],
                     bool(cut[i]), [views[i]], float(margins[i]))
        same = alive[:k] & _matches(new, groups, kept_boxes[:k], kept_views[:k], kept_cut[:k],
                                    kept_margin[:k], iou_threshold)
        if not same.any():
            groups.append(new)
            kept_boxes[k], kept_views[k], kept_cut[k] = new.box, new.view, new.cut
            kept_margin[k], alive[k] = new.margin, True
            continue
        if (same & ~kept_cut[:k]).any():
            continue  # a whole object is kept: suppressed, as NMS does
        # every match is a cut part: the first (highest score) takes them all and `new`
        first, *rest = np.flatnonzero(same)
        group = groups[first]
        if not new.cut:  # the whole object replaces its parts
            group.box, group.view, group.crop, group.origin = new.box, new.view, new.crop, \
                new.origin
            group.cut, group.seen, group.margin = False, new.seen, new.margin
        else:  # parts of one object (`new` may join several groups): union; still cut, since
            # the parts need not cover the object (a later whole one replaces them)
            for other in [new, *(groups[j] for j in rest)]:
                group.box, group.view = _union(group.box, other.box), _union(group.view,
                                                                               other.view)
                group.crop, group.origin = _union_mask(group, other)
                group.seen = group.seen + other.seen
        kept_boxes[first], kept_views[first], kept_cut[first] = group.box, group.view, group.cut
        kept_margin[first] = group.margin
        alive[rest] = False
    return [g for n, g in enumerate(groups) if alive[n]]


def _matches(new: _Group, groups: list[_Group], kept_boxes: np.ndarray, kept_views: np.ndarray,
             kept_cut: np.ndarray, kept_margin: np.ndarray, iou_threshold: float) -> np.ndarray:
    """`[K]` bool: `new` is the same object as each kept group: box IoU; where one is cut and
    the other whole, the cut box lying `CONTAINED` inside the whole box grown by the cut one's
    margin; where either is cut, the IoU of the boxes or of the masks inside the region both
    views saw (the larger)."""
    if not len(kept_boxes):
        return np.zeros(0, bool)
    same = box_iou(new.box, kept_boxes) >= iou_threshold
    if new.cut:
        same |= ~kept_cut & (_inside(new.box, _grow(kept_boxes, new.margin)) >= CONTAINED)
    else:
        same |= kept_cut & (_inside(kept_boxes, _grow(new.box, kept_margin)) >= CONTAINED)
    shared = clip_to(new.view, kept_views)  # [K, 4] the region both saw
    in_new, in_kept = clip_to(new.box, shared), clip_to(kept_boxes, shared)
    seen = box_iou(in_new, in_kept)
    for j in np.flatnonzero(~same & (new.cut | kept_cut) & (seen > 0)):
        same[j] = seen[j] >= iou_threshold \
            or (_mask_iou_in(new, groups[j], shared[j]) or 0.0) >= iou_threshold
    return same


def _grow(boxes: np.ndarray, margin) -> np.ndarray:
    """`boxes [..., 4]` grown by `margin` (scalar or `[K]`) pixels on each side."""
    margin = np.asarray(margin, np.float64)[..., None]
    return boxes + margin * np.array([-1.0, -1.0, 1.0, 1.0])


def _inside(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of the area of `a` inside `b` (`[4]` / `[K, 4]`, broadcast); 0 for empty `a`."""
    lo = np.maximum(a[..., :2], b[..., :2])
    hi = np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = np.prod(np.clip(a[..., 2:] - a[..., :2], 0, None), axis=-1)
    return np.where(area > 0, inter / np.where(area > 0, area, 1.0), 0.0)


def _mask_iou_in(a: _Group, b: _Group, region: np.ndarray) -> float | None:
    """IoU of the masks of `a` and `b` over the pixels of `region` (y0, x0, y1, x1) that both
    saw (a merged group saw the union of its parts' views, not all of their bounding box);
    None when both masks are empty there."""
    y0, x0, y1, x1 = (int(v) for v in np.round(region))
    shape = (max(y1 - y0, 0), max(x1 - x0, 0))
    both = np.ones(shape, bool)
    masks = []
    for g in (a, b):
        seen = np.zeros(shape, bool)
        for vy0, vx0, vy1, vx1 in (np.asarray(v, np.int64) - (y0, x0, y0, x0) for v in g.seen):
            seen[max(vy0, 0):max(vy1, 0), max(vx0, 0):max(vx1, 0)] = True
        both &= seen
        mask = np.zeros(shape, np.uint8)
        paste_crop(mask, g.crop, np.asarray(g.origin) - (y0, x0))
        masks.append(mask.astype(bool))
    union = np.count_nonzero((masks[0] | masks[1]) & both)
    return np.count_nonzero(masks[0] & masks[1] & both) / union if union else None


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])


def _union_mask(a: _Group, b: _Group) -> tuple[np.ndarray, np.ndarray]:
    """(crop, origin) of the union of two masks."""
    start = np.minimum(a.origin, b.origin)
    end = np.maximum(a.origin + a.crop.shape, b.origin + b.crop.shape)
    frame = np.zeros(tuple(end - start), np.uint8)
    for g in (a, b):
        paste_crop(frame, g.crop, g.origin - start)
    return tight_crop(frame, start)


# --------------------------------------------------------------------------------- COCO output
def crop_rle(crop: np.ndarray, origin: Sequence[int], image_shape: Sequence[int]) -> dict:
    """COCO compressed RLE (`{"size": [h, w], "counts": str}`) of the full-image mask that is
    `crop` at `origin` and 0 elsewhere, equal to `pycocotools.mask.encode` of that mask, but
    built from a column band of `h x crop width` bytes (never the whole `[h, w]` mask)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    r, c = int(origin[0]), int(origin[1])
    ch, cw = crop.shape
    r0, c0, r1, c1 = max(r, 0), max(c, 0), min(r + ch, h), min(c + cw, w)
    if r1 <= r0 or c1 <= c0 or not crop.any():
        counts = [h * w]
    else:
        band = np.zeros((h, c1 - c0), np.uint8)
        band[r0:r1] = crop[r0 - r:r1 - r, c0 - c:c1 - c] != 0
        flat = band.ravel(order="F")
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
        if flat[0]:
            runs.insert(0, 0)
        runs[0] += c0 * h  # the all-zero columns left of the band
        after = (w - c1) * h
        if len(runs) % 2:  # ends on a zero run
            runs[-1] += after
        elif after:
            runs.append(after)
        counts = runs
    rle = mask_utils.frPyObjects({"counts": counts, "size": [h, w]}, h, w)
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def coco_records(det: Detections, image_id: int, image_shape: Sequence[int],
                 label_to_category_id: Mapping[int, int]) -> list[dict]:
    """COCO result dicts of `det`: `image_id`, `category_id`, `bbox` [x, y, w, h] (2
    decimals), `score`, `segmentation` (compressed RLE from the crops, `crop_rle`)."""
    records = []
    for i in range(len(det)):
        y1, x1, y2, x2 = (float(v) for v in det.boxes[i])
        label = int(det.labels[i])
        if label not in label_to_category_id:
            raise ValueError(f"label {label} is not in label_to_category_id (known labels: "
                             f"{sorted(label_to_category_id)})")
        records.append({
            "image_id": int(image_id),
            "category_id": int(label_to_category_id[label]),
            "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)],
            "score": float(det.scores[i]),
            "segmentation": crop_rle(det.mask_crops[i], det.mask_origins[i], image_shape),
        })
    return records
