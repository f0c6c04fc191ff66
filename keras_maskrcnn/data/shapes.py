"""Synthetic "shapes" instance segmentation dataset (generated, nothing to download).

Each image has a random solid background colour and `min_shapes..max_shapes` solid shapes
(square, circle, triangle) of random contrasting colours, sizes 12%-35% of the shorter image side
and random positions. Later shapes are drawn over earlier ones, so masks are the visible regions;
a configuration where any shape keeps less than `MIN_VISIBLE_FRACTION` of its area is rejected
and drawn again (never a silently dropped instance). Everything is a pure function of
`(seed, index)`, generated lazily.
"""

from __future__ import annotations

import threading

import numpy as np
from pycocotools import mask as mask_utils

from keras_maskrcnn.data.coco import build_coco_index, empty_annotations

CLASS_NAMES = ["background", "square", "circle", "triangle"]
MIN_VISIBLE_FRACTION = 0.3
MIN_SIZE_FRACTION = 0.12
MAX_SIZE_FRACTION = 0.35
# Minimum Euclidean RGB distances: shape vs background, and shape vs shape.
_MIN_BG_CONTRAST = 120.0
_MIN_SHAPE_CONTRAST = 80.0
_MAX_TRIES = 1000


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _image_hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        size = (_check_int("image_size[0]", image_size[0], 1),
                _check_int("image_size[1]", image_size[1], 1))
    else:
        raise TypeError(f"image_size must be an int or a (height, width) pair, got {image_size!r}")
    if min(size) < 32:
        raise ValueError(f"image_size must be at least 32 pixels a side, got {size}")
    return size


def _rasterize(kind: int, cy: float, cx: float, size: float, hw: tuple[int, int]) -> np.ndarray:
    """Binary mask `[h, w]` bool of one shape, tested at pixel centres.

    kind: 1 square (side `size`), 2 circle (diameter `size`), 3 triangle (apex up, base and
    height `size`), all centred on (cy, cx) in pixels.
    """
    ys = np.arange(hw[0], dtype=np.float64)[:, None] + 0.5
    xs = np.arange(hw[1], dtype=np.float64)[None, :] + 0.5
    half = size / 2.0
    if kind == 1:
        return (np.abs(ys - cy) <= half) & (np.abs(xs - cx) <= half)
    if kind == 2:
        return (ys - cy) ** 2 + (xs - cx) ** 2 <= half**2
    # Triangle: apex (cy - half, cx); the half-width grows linearly to `half` at the base.
    depth = ys - (cy - half)
    return (depth >= 0) & (depth <= size) & (np.abs(xs - cx) <= depth / 2.0)


def _pick_colour(rng: np.random.Generator, background: np.ndarray, used: list) -> np.ndarray:
    for _ in range(_MAX_TRIES):
        colour = rng.integers(0, 256, size=3).astype(np.float64)
        if np.linalg.norm(colour - background) < _MIN_BG_CONTRAST:
            continue
        if all(np.linalg.norm(colour - c) >= _MIN_SHAPE_CONTRAST for c in used):
            return colour
    raise RuntimeError("could not find a contrasting shape colour")


def _visible_masks(full: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each mask when later masks are drawn over earlier ones."""
    covered = np.zeros_like(full[0]) if full else None
    visible = []
    for mask in reversed(full):
        visible.append(mask & ~covered)
        covered = covered | mask
    return visible[::-1]


class ShapesDataset:
    """Deterministic synthetic dataset of squares, circles and triangles.

    Args:
        num_images: number of images (ids `0..num_images-1`).
        image_size: side in pixels, or (height, width); every image has this size.
        seed: non-negative int; image `i` depends only on `(seed, i)`, so different seeds give
            different splits (the CLI uses seed 0 for train, 1 for val).
        max_shapes / min_shapes: the number of shapes per image is uniform in
            `[min_shapes, max_shapes]`.

    The dataset-source protocol of docs/CONVENTIONS.md: labels 1 square, 2 circle, 3 triangle
    (category ids equal labels); masks are the visible regions, boxes their tight boxes.
    """

    def __init__(
        self,
        num_images: int,
        image_size: int | tuple = 128,
        seed: int = 0,
        max_shapes: int = 4,
        min_shapes: int = 1,
    ) -> None:
        self.num_images = _check_int("num_images", num_images, 0)
        self.image_size = _image_hw(image_size)
        self.seed = _check_int("seed", seed, 0)
        self.max_shapes = _check_int("max_shapes", max_shapes, 1)
        self.min_shapes = _check_int("min_shapes", min_shapes, 0)
        if self.min_shapes > self.max_shapes:
            raise ValueError(f"min_shapes ({min_shapes}) must be <= max_shapes ({max_shapes})")
        self.class_names = list(CLASS_NAMES)
        self.num_classes = len(CLASS_NAMES) - 1
        self.label_to_category_id = {i: i for i in range(1, self.num_classes + 1)}
        self.category_id_to_label = dict(self.label_to_category_id)
        self.image_ids = list(range(self.num_images))
        self._coco = None
        self._coco_lock = threading.Lock()

    # ----------------------------------------------------------------------------- generation
    def _check_id(self, image_id: int) -> int:
        if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer)):
            raise TypeError(f"image_id must be an int, got {type(image_id).__name__}")
        if not 0 <= image_id < self.num_images:
            raise ValueError(f"image_id must be in [0, {self.num_images}), got {image_id}")
        return int(image_id)

    def _random_shape(self, rng: np.random.Generator) -> tuple[int, float, float, float]:
        h, w = self.image_size
        size = rng.uniform(MIN_SIZE_FRACTION, MAX_SIZE_FRACTION) * min(h, w)
        half = size / 2.0
        cy = rng.uniform(half, h - half)
        cx = rng.uniform(half, w - half)
        return int(rng.integers(1, 4)), cy, cx, size

    def _layout(self, rng: np.random.Generator) -> tuple[list[int], list[np.ndarray]]:
        """Classes and visible masks of a configuration that passes the occlusion rule."""
        for _ in range(_MAX_TRIES):
            n = int(rng.integers(self.min_shapes, self.max_shapes + 1))
            shapes = [self._random_shape(rng) for _ in range(n)]
            full = [_rasterize(k, cy, cx, s, self.image_size) for k, cy, cx, s in shapes]
            visible = _visible_masks(full)
            if all(v.sum() >= MIN_VISIBLE_FRACTION * f.sum() and v.any()
                   for v, f in zip(visible, full, strict=True)):
                return [k for k, *_ in shapes], visible
        raise RuntimeError(f"no shape layout with visible fraction >= {MIN_VISIBLE_FRACTION} "
                           f"after {_MAX_TRIES} tries; lower max_shapes or enlarge image_size")

    def _generate(self, image_id: int) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
        """(image uint8 [h, w, 3], labels, visible masks [h, w] bool) of one image."""
        rng = np.random.default_rng([self.seed, self._check_id(image_id)])
        background = rng.integers(0, 256, size=3).astype(np.float64)
        labels, visible = self._layout(rng)
        colours: list[np.ndarray] = []
        for _ in labels:
            colours.append(_pick_colour(rng, background, colours))
        image = np.empty((*self.image_size, 3), np.uint8)
        image[:] = background.astype(np.uint8)
        for colour, mask in zip(colours, visible, strict=True):
            image[mask] = colour.astype(np.uint8)
        return image, labels, visible

    # ----------------------------------------------------------------------------- protocol
    def image_info(self, image_id: int) -> dict:
        """dict with "id", "height", "width", "file_name"."""
        image_id = self._check_id(image_id)
        h, w = self.image_size
        return {"id": image_id, "height": h, "width": w, "file_name": self.file_name(image_id)}

    def file_name(self, image_id: int) -> str:
        """A nominal file name, `shape_00012.png` for id 12 (nothing is written)."""
        return f"shape_{self._check_id(image_id):05d}.png"

    def load_image(self, image_id: int) -> np.ndarray:
        """uint8 RGB `[h, w, 3]`."""
        return self._generate(image_id)[0]

    def load_annotations(self, image_id: int) -> dict[str, np.ndarray]:
        """boxes `[G, 4]` float32 (y1, x1, y2, x2) tight around the visible masks (original
        pixels, edges: y2 = last row + 1), labels `[G]` int32 in 1..3, masks `[G, h, w]` uint8,
        is_crowd `[G]` bool (all False)."""
        _, labels, visible = self._generate(image_id)
        if not labels:
            return empty_annotations(*self.image_size)
        masks = np.stack(visible).astype(np.uint8)
        return {
            "boxes": np.stack([_tight_box(m) for m in visible]),
            "labels": np.array(labels, np.int32),
            "masks": masks,
            "is_crowd": np.zeros(len(labels), bool),
        }

    @property
    def coco(self):
        """pycocotools `COCO` ground truth, built in memory on first access (generates all
        images once): segmentation as compressed RLE (counts str), area, bbox [x, y, w, h]."""
        with self._coco_lock:
            if self._coco is None:
                self._coco = build_coco_index(self._coco_dict())
        return self._coco

    def _coco_dict(self) -> dict:
        h, w = self.image_size
        images, annotations = [], []
        for image_id in self.image_ids:
            images.append(self.image_info(image_id))
            _, labels, visible = self._generate(image_id)
            for label, mask in zip(labels, visible, strict=True):
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": self.label_to_category_id[label],
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                })
        categories = [{"id": self.label_to_category_id[i], "name": name, "supercategory": "shape"}
                      for i, name in enumerate(self.class_names[1:], start=1)]
        return {"info": {"description": f"keras_maskrcnn shapes, seed {self.seed}"},
                "licenses": [], "images": images, "annotations": annotations,
                "categories": categories}

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (f"ShapesDataset(num_images={self.num_images}, image_size={self.image_size}, "
                f"seed={self.seed})")


def _tight_box(mask: np.ndarray) -> np.ndarray:
    """`[4]` float32 (y1, x1, y2, x2) pixel edges of the nonzero region of `mask [h, w]`."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32)


class ScatteredShapesDataset(ShapesDataset):
    """Large images with many small shapes: the case of sliced inference (aerial photos,
    microscopy), e.g. 20-40 px shapes on 4000 x 3000 canvases.

    The shapes of `ShapesDataset` (same classes, colours contrasting with the background) with
    sides uniform in `[min_side, max_side]` pixels, at random positions where their bounding
    squares do not touch (so no shape hides another: masks are whole shapes). Each shape is
    rasterized in a small window, so generation costs about one image of memory.

    Args:
        num_images, seed: as `ShapesDataset`.
        image_size: (height, width) or a side; default (3000, 4000).
        min_shapes / max_shapes: shapes per image, uniform in `[min_shapes, max_shapes]`.
        min_side / max_side: shape size in pixels (>= 4).

    `load_annotations` returns full `[G, h, w]` masks (the dataset protocol): G * h * w bytes.
    The COCO ground truth (`coco`) is built without them.
    """

    GAP = 2  # pixels between the bounding squares of two shapes

    def __init__(self, num_images: int, image_size: int | tuple = (3000, 4000), seed: int = 0,
                 max_shapes: int = 40, min_shapes: int = 20, min_side: float = 20.0,
                 max_side: float = 40.0) -> None:
        super().__init__(num_images, image_size, seed, max_shapes, min_shapes)
        if not 4.0 <= float(min_side) <= float(max_side) <= min(self.image_size) - 4:
            raise ValueError(f"need 4 <= min_side <= max_side <= image side - 4, got "
                             f"min_side={min_side}, max_side={max_side}, image {self.image_size}")
        self.min_side, self.max_side = float(min_side), float(max_side)

    def _place(self, rng: np.random.Generator) -> list[tuple[int, float, float, float]]:
        """(kind, cy, cx, side) of each shape; bounding squares GAP pixels apart."""
        h, w = self.image_size
        count = int(rng.integers(self.min_shapes, self.max_shapes + 1))
        placed: list[tuple[int, float, float, float]] = []
        for _ in range(count * 50):
            if len(placed) == count:
                break
            side = rng.uniform(self.min_side, self.max_side)
            half = side / 2.0
            cy, cx = rng.uniform(half + 1, h - half - 1), rng.uniform(half + 1, w - half - 1)
            if all(max(abs(cy - y), abs(cx - x)) >= half + s / 2.0 + self.GAP
                   for _, y, x, s in placed):
                placed.append((int(rng.integers(1, 4)), cy, cx, side))
        if len(placed) < count:
            raise RuntimeError(f"could not place {count} shapes of up to {self.max_side} px on "
                               f"{self.image_size}; lower max_shapes")
        return placed

    def _generate_crops(self, image_id: int):
        """(image uint8 [h, w, 3], labels, origins [(row, col)], crops [bool [hh, ww]])."""
        rng = np.random.default_rng([self.seed, self._check_id(image_id)])
        background = rng.integers(0, 256, size=3).astype(np.float64)
        image = np.empty((*self.image_size, 3), np.uint8)
        image[:] = background.astype(np.uint8)
        labels, origins, crops = [], [], []
        for kind, cy, cx, side in self._place(rng):
            r0, c0 = int(cy - side / 2.0) - 1, int(cx - side / 2.0) - 1
            size = int(np.ceil(side)) + 3
            r1, c1 = min(r0 + size, self.image_size[0]), min(c0 + size, self.image_size[1])
            crop = _rasterize(kind, cy - r0, cx - c0, side, (r1 - r0, c1 - c0))
            image[r0:r1, c0:c1][crop] = _pick_colour(rng, background, []).astype(np.uint8)
            labels.append(kind)
            origins.append((r0, c0))
            crops.append(crop)
        return image, labels, origins, crops

    def load_image(self, image_id: int) -> np.ndarray:
        return self._generate_crops(image_id)[0]

    def load_annotations(self, image_id: int) -> dict[str, np.ndarray]:
        _, labels, origins, crops = self._generate_crops(image_id)
        h, w = self.image_size
        masks = np.zeros((len(labels), h, w), np.uint8)
        for g, ((r0, c0), crop) in enumerate(zip(origins, crops, strict=True)):
            masks[g, r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]] = crop
        return {"boxes": np.stack([_tight_box(m) for m in masks]).reshape(-1, 4),
                "labels": np.array(labels, np.int32), "masks": masks,
                "is_crowd": np.zeros(len(labels), bool)}

    def _coco_dict(self) -> dict:
        h, w = self.image_size
        frame = np.zeros((h, w), np.uint8, order="F")  # one reused full-size mask
        images, annotations = [], []
        for image_id in self.image_ids:
            images.append(self.image_info(image_id))
            _, labels, origins, crops = self._generate_crops(image_id)
            for label, (r0, c0), crop in zip(labels, origins, crops, strict=True):
                window = frame[r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]]
                window[...] = crop
                rle = mask_utils.encode(frame)
                window[...] = 0
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id,
                    "category_id": self.label_to_category_id[label],
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
        categories = [{"id": self.label_to_category_id[i], "name": name, "supercategory": "shape"}
                      for i, name in enumerate(self.class_names[1:], start=1)]
        return {"info": {"description": f"keras_maskrcnn scattered shapes, seed {self.seed}"},
                "licenses": [], "images": images, "annotations": annotations,
                "categories": categories}

    def __repr__(self) -> str:
        return (f"ScatteredShapesDataset(num_images={self.num_images}, "
                f"image_size={self.image_size}, seed={self.seed})")
