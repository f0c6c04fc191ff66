"""tf.data input pipeline and the image resize rule shared by training, predict and export.

Shape glossary: B batch, G max ground-truth instances per image, M mini-mask size, (H, W) canvas,
(h, w) original image, (h', w') resized image inside the canvas.

Resize rule (torchvision `GeneralizedRCNNTransform`, Detectron2 `ResizeShortestEdge`):
`scale = min(min_size / min(h, w), max_size / max(h, w))`, computed in Python floats (float64) as
torchvision's eager transform does, and the resized size is `floor(h * scale)` x
`floor(w * scale)` (torchvision calls `F.interpolate(scale_factor=scale,
recompute_scale_factor=True)`, which floors). The image is
resized bilinearly with half-pixel centres and no antialias, placed top-left on the canvas, and
zero-padded bottom/right.

Mini masks (docs/CONVENTIONS.md): `gt_masks[g, i, j]` is the bilinear sample of instance g's
binary mask at the pixel-centre point `y = y1 + (i + 0.5) * (y2 - y1) / M - 0.5` (x likewise) of
its box, reads clamped to the image. Boxes map to input pixels by `box * scale` and the mask by
the same continuous transform (input coordinate `p` reads original `(p + 0.5) / scale - 0.5`),
so the sample points are the same in both frames: the mini masks are computed once from the
original-resolution mask (no full-size resized masks in the pipeline) and a horizontal flip
simply reverses their columns.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

logger = logging.getLogger("keras_maskrcnn")

_SIZE_MULTIPLE = 32


# --------------------------------------------------------------------------------- checks
def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return int(value)


def _check_canvas(canvas_size, multiple: int = 1) -> tuple[int, int]:
    if not isinstance(canvas_size, (tuple, list)) or len(canvas_size) != 2:
        raise ValueError(f"canvas_size must be a (height, width) pair, got {canvas_size!r}")
    hw = tuple(_check_positive_int("canvas_size", v) for v in canvas_size)
    if any(v % multiple for v in hw):
        raise ValueError(f"canvas_size must be multiples of {multiple}, got {hw}")
    return hw


def _check_sizes(min_size, max_size) -> None:
    for name, value in (("min_size", min_size), ("max_size", max_size)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


# --------------------------------------------------------------------------------- resize rule
def compute_resize_scale(height: int, width: int, min_size: float, max_size: float) -> float:
    """Scale (input pixels / original pixels) that brings the short side to `min_size`, reduced
    so that the long side is at most `max_size`. Python (float64) arithmetic, as torchvision's
    eager transform computes it."""
    _check_sizes(min_size, max_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be > 0, got {height} x {width}")
    short, long = float(min(height, width)), float(max(height, width))
    return min(float(min_size) / short, float(max_size) / long)


def compute_resized_shape(height: int, width: int, min_size: float,
                          max_size: float) -> tuple[int, int]:
    """(h', w') = (floor(height * scale), floor(width * scale)) with `compute_resize_scale`."""
    scale = compute_resize_scale(height, width, min_size, max_size)
    return math.floor(height * scale), math.floor(width * scale)


def _resize_scale_tf(hw: tf.Tensor, min_size, max_size) -> tf.Tensor:
    """float64 scalar scale for `hw [2] int32`; the same arithmetic as `compute_resize_scale`."""
    hw = tf.cast(hw, tf.float64)
    short, long = tf.reduce_min(hw), tf.reduce_max(hw)
    return tf.minimum(tf.cast(min_size, tf.float64) / short, tf.cast(max_size, tf.float64) / long)


def _resize(image: tf.Tensor, min_size, max_size) -> tuple[tf.Tensor, tf.Tensor]:
    """Resized image `[h', w', 3]` float32 and its scale (float32)."""
    hw = tf.shape(image)[:2]
    scale = _resize_scale_tf(hw, min_size, max_size)
    new_hw = tf.cast(tf.floor(tf.cast(hw, tf.float64) * scale), tf.int32)
    new_hw = tf.maximum(new_hw, 1)
    resized = tf.image.resize(tf.cast(image, tf.float32), new_hw, method="bilinear",
                              antialias=False)
    return resized, tf.cast(scale, tf.float32)


def _pad_to_canvas(image: tf.Tensor, canvas: tuple[int, int]) -> tf.Tensor:
    """Zero-pads `[h', w', 3]` bottom/right to `[H, W, 3]`; clear error if it does not fit."""
    hw = tf.shape(image)[:2]
    message = (f"the resized image does not fit the canvas {canvas} (height, width); enlarge "
               "canvas_size or lower min_size/max_size")
    static_hw = tf.get_static_value(hw)  # known eagerly, and in graphs of static-shape inputs
    if static_hw is not None:
        h, w = (int(v) for v in static_hw)
        if h > canvas[0] or w > canvas[1]:
            raise ValueError(f"{message} (resized image {h} x {w})")
        checks = []
    else:
        checks = [tf.debugging.assert_less_equal(hw, tf.constant(canvas, tf.int32),
                                                 message=message)]
    with tf.control_dependencies(checks):
        padded = tf.pad(image, [[0, canvas[0] - hw[0]], [0, canvas[1] - hw[1]], [0, 0]])
    padded.set_shape([canvas[0], canvas[1], image.shape[-1]])
    return padded


def _check_image_tensor(image) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    rank = image.shape.rank
    if rank is not None and (rank != 3 or image.shape[-1] not in (3, None)):
        raise ValueError(f"image must be [height, width, 3], got shape {image.shape}")
    if not (image.dtype.is_integer or image.dtype.is_floating):
        raise TypeError(f"image must be uint8 or float, got {image.dtype.name}")
    return image


def resize_and_pad_image(
    image, canvas_size: tuple[int, int], min_size, max_size
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Resizes an image by the resize rule and zero-pads it onto the canvas.

    Works eagerly and inside `tf.function` / `tf.data` (then a too-small canvas fails a
    `tf.debugging` assertion instead of the eager ValueError).

    Args:
        image: `[h, w, 3]` uint8 or float RGB, 0..255.
        canvas_size: (H, W) ints.
        min_size, max_size: target short side and cap on the long side (numbers or scalar
            tensors).

    Returns:
        padded `[H, W, 3]` float32 0..255, image_shape `[2]` float32 (h', w') of the resized
        image, scale float32 scalar (input pixels / original pixels).
    """
    canvas = _check_canvas(canvas_size)
    if not isinstance(min_size, tf.Tensor) and not isinstance(max_size, tf.Tensor):
        _check_sizes(min_size, max_size)
    image = _check_image_tensor(image)
    resized, scale = _resize(image, min_size, max_size)
    image_shape = tf.cast(tf.shape(resized)[:2], tf.float32)
    return _pad_to_canvas(resized, canvas), image_shape, scale


# --------------------------------------------------------------------------------- ground truth
def make_mini_masks(masks: np.ndarray, boxes: np.ndarray, mask_size: int) -> np.ndarray:
    """Crops each instance mask to its box and resizes it to `M x M` (bilinear, no threshold).

    Args:
        masks: `[G, h, w]` binary masks (any numeric dtype).
        boxes: `[G, 4]` (y1, x1, y2, x2) in the masks' pixels.
        mask_size: M.

    Returns:
        `[G, M, M]` float32 in [0, 1]: sample (i, j) reads the mask bilinearly at
        `y = y1 + (i + 0.5) * (y2 - y1) / M - 0.5`, `x = x1 + (j + 0.5) * (x2 - x1) / M - 0.5`
        (pixel index coordinates), clamped to `[0, h - 1] x [0, w - 1]`.
    """
    num, height, width = masks.shape
    if num == 0:
        return np.zeros((0, mask_size, mask_size), np.float32)
    boxes = np.asarray(boxes, np.float64)
    steps = (np.arange(mask_size) + 0.5) / mask_size
    ys = boxes[:, :1] + steps * (boxes[:, 2:3] - boxes[:, :1]) - 0.5
    xs = boxes[:, 1:2] + steps * (boxes[:, 3:4] - boxes[:, 1:2]) - 0.5
    y0, y1, wy = _bilinear_taps(ys, height)
    x0, x1, wx = _bilinear_taps(xs, width)
    g = np.arange(num)[:, None, None]

    def read(yi: np.ndarray, xi: np.ndarray) -> np.ndarray:
        return masks[g, yi[:, :, None], xi[:, None, :]].astype(np.float64)

    wy, wx = wy[:, :, None], wx[:, None, :]
    top = read(y0, x0) * (1 - wx) + read(y0, x1) * wx
    bottom = read(y1, x0) * (1 - wx) + read(y1, x1) * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


def _bilinear_taps(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    coords = np.clip(coords, 0.0, size - 1.0)
    lo = np.floor(coords).astype(np.int64)
    hi = np.minimum(lo + 1, size - 1)
    return lo, hi, coords - lo


class _Loader:
    """Loads one image id from a dataset source into fixed-size numpy ground truth.

    Returns image uint8 `[h, w, 3]`, boxes `[G, 4]` float32 original pixels (clipped to the
    image), classes `[G]` int32 (crowd -1, padding 0), mini masks `[G, M, M]` float32, original
    shape `[2]` int32.
    """

    def __init__(self, source, max_instances: int, mask_size: int) -> None:
        self.source = source
        self.max_instances = max_instances
        self.mask_size = mask_size
        self._warned: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, image_id) -> tuple[np.ndarray, ...]:
        image_id = int(image_id)
        image = np.asarray(self.source.load_image(image_id))
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"load_image({image_id}) must return uint8 [h, w, 3], got "
                             f"{image.dtype} {image.shape}")
        height, width = image.shape[:2]
        ann = self.source.load_annotations(image_id)
        boxes, classes, masks = self._instances(image_id, ann, height, width)
        boxes = np.clip(boxes, 0.0, [height, width, height, width]).astype(np.float32)
        mini = make_mini_masks(masks, boxes, self.mask_size)
        pad = self.max_instances - len(classes)
        return (
            image,
            np.pad(boxes, [(0, pad), (0, 0)]),
            np.pad(classes, [(0, pad)]),
            np.pad(mini, [(0, pad), (0, 0), (0, 0)]),
            np.array([height, width], np.int32),
        )

    def _instances(self, image_id: int, ann: dict, height: int, width: int):
        boxes = np.asarray(ann["boxes"], np.float32).reshape(-1, 4)
        classes = np.asarray(ann["labels"], np.int32).reshape(-1)
        crowd = np.asarray(ann["is_crowd"], bool).reshape(-1)
        masks = np.asarray(ann["masks"])
        if masks.shape != (len(classes), height, width) or len(boxes) != len(classes):
            raise ValueError(f"load_annotations({image_id}): expected boxes [G, 4], labels [G], "
                             f"masks [G, {height}, {width}]; got {boxes.shape}, "
                             f"{classes.shape}, {masks.shape}")
        classes = np.where(crowd, -1, classes).astype(np.int32)
        if len(classes) > self.max_instances:
            keep = self._largest(image_id, masks)
            boxes, classes, masks = boxes[keep], classes[keep], masks[keep]
        return boxes, classes, masks

    def _largest(self, image_id: int, masks: np.ndarray) -> np.ndarray:
        """Indices (in their original order) of the max_instances largest masks; warns once."""
        with self._lock:
            first = image_id not in self._warned
            self._warned.add(image_id)
        if first:
            logger.warning("image id %d has %d instances, more than max_instances=%d: keeping "
                           "the %d largest", image_id, len(masks), self.max_instances,
                           self.max_instances)
        areas = masks.reshape(len(masks), -1).sum(axis=1)
        return np.sort(np.argsort(-areas, kind="stable")[: self.max_instances])


# --------------------------------------------------------------------------------- tf.data
def _check_source(source) -> list[int]:
    missing = [a for a in ("image_ids", "load_image", "load_annotations")
               if not hasattr(source, a)]
    if missing:
        raise TypeError("source must be a dataset source (CocoDataset, ShapesDataset, ...) with "
                        f"image_ids, load_image and load_annotations; {type(source).__name__} "
                        f"lacks {', '.join(missing)}")
    ids = [int(i) for i in source.image_ids]
    if not ids:
        raise ValueError("source has no images (image_ids is empty)")
    return ids


def _check_min_sizes(train_min_sizes) -> tuple[int, ...] | None:
    if train_min_sizes is None:
        return None
    if isinstance(train_min_sizes, (int, np.integer)) or not isinstance(train_min_sizes,
                                                                          Sequence):
        raise TypeError(f"train_min_sizes must be a tuple of ints, got {train_min_sizes!r}")
    if not train_min_sizes:
        raise ValueError("train_min_sizes must not be empty (use None)")
    return tuple(_check_positive_int("train_min_sizes", v) for v in train_min_sizes)


def _flip(image: tf.Tensor, boxes: tf.Tensor, mini: tf.Tensor):
    """Mirrors the resized image `[h', w', 3]`, boxes `[G, 4]` (x -> w' - x), masks `[G, M, M]`."""
    width = tf.cast(tf.shape(image)[1], tf.float32)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    boxes = tf.stack([y1, width - x2, y2, width - x1], axis=-1)
    return tf.reverse(image, [1]), boxes, tf.reverse(mini, [2])


def _make_transform(canvas, min_size, max_size, train_min_sizes, horizontal_flip):
    """The per-image tf map: random short side, resize, flip, pad, boxes to input pixels."""

    def transform(image, boxes, classes, mini, image_id, original_shape, seeds):
        if train_min_sizes is not None:
            index = tf.random.stateless_uniform([], seeds[:2], 0, len(train_min_sizes), tf.int32)
            short = tf.gather(tf.constant(train_min_sizes, tf.int32), index)
        else:
            short = min_size
        resized, scale = _resize(image, short, max_size)
        image_shape = tf.cast(tf.shape(resized)[:2], tf.float32)
        limits = tf.tile(image_shape, [2])
        boxes = tf.clip_by_value(boxes * scale, 0.0, limits)
        if horizontal_flip:
            do_flip = tf.random.stateless_uniform([], seeds[2:]) < 0.5
            resized, boxes, mini = tf.cond(do_flip, lambda: _flip(resized, boxes, mini),
                                           lambda: (resized, boxes, mini))
        valid = tf.cast(tf.not_equal(classes, 0), tf.float32)[:, None]
        inputs = {
            "images": _pad_to_canvas(resized, canvas),
            "image_shape": image_shape,
            "gt_boxes": boxes * valid,
            "gt_classes": classes,
            "gt_masks": mini,
            "image_id": image_id,
            "scale": scale,
            "original_shape": original_shape,
        }
        return (inputs,)

    return transform


def _load_fn(loader: _Loader, max_instances: int, mask_size: int):
    def load(image_id, seeds):
        image, boxes, classes, mini, shape = tf.numpy_function(
            loader, [image_id], [tf.uint8, tf.float32, tf.int32, tf.float32, tf.int32],
            stateful=False)
        image.set_shape([None, None, 3])
        boxes.set_shape([max_instances, 4])
        classes.set_shape([max_instances])
        mini.set_shape([max_instances, mask_size, mask_size])
        shape.set_shape([2])
        return image, boxes, classes, mini, image_id, shape, seeds

    return load


def make_dataset(
    source,
    *,
    canvas_size: tuple[int, int],
    min_size: int,
    max_size: int,
    train_min_sizes: tuple[int, ...] | None = None,
    horizontal_flip: bool = False,
    max_instances: int = 100,
    mask_size: int = 28,
    batch_size: int = 2,
    shuffle: bool = False,
    repeat: bool = False,
    seed: int | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches `(inputs,)` for `model.fit` (docs/CONVENTIONS.md) from a dataset source.

    Args:
        source: a dataset source (`CocoDataset`, `ShapesDataset`, ...).
        canvas_size: (H, W), multiples of 32.
        min_size, max_size: resize rule (see the module docstring).
        train_min_sizes: when given, each image's short side is drawn uniformly from these
            (Detectron2 multi-scale training) instead of `min_size`.
        horizontal_flip: mirror each image with probability 0.5.
        max_instances: G; images with more instances keep the G largest (mask area) and log a
            warning naming the image id (once per image id).
        mask_size: M of the mini masks.
        batch_size, drop_remainder: batching (drop_remainder=True makes B static).
        shuffle: shuffle the image ids every epoch; repeat: repeat forever.
        seed: makes shuffling and augmentation reproducible (None: random).

    Returns:
        A dataset of `(inputs,)` with images `[B, H, W, 3]` float32 0..255, image_shape `[B, 2]`
        float32, gt_boxes `[B, G, 4]` float32 input pixels (clipped to image_shape, mirrored
        when flipped; zeros on padding), gt_classes `[B, G]` int32 (0 pad, -1 crowd, 1..K),
        gt_masks `[B, G, M, M]` float32, image_id `[B]` int64, scale `[B]` float32,
        original_shape `[B, 2]` int32.
    """
    ids = _check_source(source)
    canvas = _check_canvas(canvas_size, _SIZE_MULTIPLE)
    _check_sizes(min_size, max_size)
    train_min_sizes = _check_min_sizes(train_min_sizes)
    max_instances = _check_positive_int("max_instances", max_instances)
    mask_size = _check_positive_int("mask_size", mask_size)
    batch_size = _check_positive_int("batch_size", batch_size)

    dataset = tf.data.Dataset.from_tensor_slices(np.array(ids, np.int64))
    if shuffle:
        dataset = dataset.shuffle(len(ids), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(4)
    dataset = tf.data.Dataset.zip(dataset, seeds)
    loader = _Loader(source, max_instances, mask_size)
    dataset = dataset.map(_load_fn(loader, max_instances, mask_size),
                          num_parallel_calls=tf.data.AUTOTUNE)
    transform = _make_transform(canvas, min_size, max_size, train_min_sizes,
                                bool(horizontal_flip))
    dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_inference_inputs(
    images: Sequence[np.ndarray], canvas_size: tuple[int, int], min_size: int, max_size: int
) -> dict[str, np.ndarray]:
    """Resizes and pads a list of images into one batch for `predict`.

    Args:
        images: B arrays `[h, w, 3]` (or `[h, w]` grayscale) RGB, uint8 (or float 0..255).
        canvas_size: (H, W), multiples of 32, large enough for every resized image.

    Returns:
        dict of numpy arrays: images `[B, H, W, 3]` float32, image_shape `[B, 2]` float32,
        scale `[B]` float32, original_shape `[B, 2]` int32.
    """
    canvas = _check_canvas(canvas_size, _SIZE_MULTIPLE)
    _check_sizes(min_size, max_size)
    if (isinstance(images, np.ndarray) and images.ndim in (2, 3)) or not len(images):
        raise ValueError("images must be a non-empty list of [h, w, 3] arrays")
    out = {"images": [], "image_shape": [], "scale": [], "original_shape": []}
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"images[{i}] must be [h, w, 3] RGB, got shape {image.shape}")
        if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
            raise TypeError(f"images[{i}] must be uint8 or float, got {image.dtype}")
        padded, image_shape, scale = resize_and_pad_image(image, canvas, min_size, max_size)
        out["images"].append(padded.numpy())
        out["image_shape"].append(image_shape.numpy())
        out["scale"].append(scale.numpy())
        out["original_shape"].append(np.array(image.shape[:2], np.int32))
    return {
        "images": np.stack(out["images"]).astype(np.float32),
        "image_shape": np.stack(out["image_shape"]).astype(np.float32),
        "scale": np.array(out["scale"], np.float32),
        "original_shape": np.stack(out["original_shape"]).astype(np.int32),
    }
