"""tf.data input pipeline: dataset sources -> the batches `model.fit` consumes, and the
inference batches of `predict`.

Shape glossary: B batch, G max ground-truth instances per image, M mini-mask size, (H, W) canvas,
(h, w) original image, (h', w') resized image inside the canvas.

The image transform (resize rule, canvas, box maps) is `keras_maskrcnn.transform`, shared with
inference and export; `compute_resize_scale`, `compute_resized_shape` and
`resize_and_pad_image` are re-exported here for compatibility. Ground-truth boxes map to input
pixels per axis, `y * h' / h` and `x * w' / w` (`transform.boxes_to_input_tf`): the same
continuous map as the resized image, so training and inference share one coordinate frame.

Mini masks (docs/CONVENTIONS.md): `gt_masks[g, i, j]` is the bilinear sample of instance g's
binary mask at the pixel-centre point `y = y1 + (i + 0.5) * (y2 - y1) / M - 0.5` (x likewise) of
its box, reads clamped to the image. The points are box-relative, and the per-axis box map and
the image resize (`tf.image.resize`, half-pixel centres: input index `p` reads original
`(p + 0.5) * h / h' - 0.5`) are the same continuous map, so the sample points are the same in
both frames: the mini masks are computed once from the original-resolution mask and box (no
full-size resized masks in the pipeline), and a horizontal flip simply reverses their columns.

With `mask_target_rule="torchvision"` (config) `gt_masks` are instead canvas masks `[G, H, W]`
uint8 (0 / 1): each instance mask mirrored first when the image is, then resized to (h', w')
as torchvision's transform resizes target masks (`ops.masks.resize_masks_nearest`), then
zero-padded to the canvas, which is what torchvision's mask targets read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_maskrcnn.config import MaskRCNNConfig
from keras_maskrcnn.data.images import BadImageError
from keras_maskrcnn.ops.masks import resize_masks_nearest
from keras_maskrcnn.transform import (
    SIZE_MULTIPLE,
    boxes_to_input_tf,
    check_canvas_size,
    check_positive_int,
    compute_resize_scale,
    compute_resized_shape,
    letterbox,
    pad_to_canvas,
    resize_and_pad_image,
    resize_image_tf,
)

__all__ = [
    "compute_resize_scale",
    "compute_resized_shape",
    "make_dataset",
    "make_inference_inputs",
    "make_mini_masks",
    "resize_and_pad_image",
]

logger = logging.getLogger("keras_maskrcnn")


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
    image), classes `[G]` int32 (crowd -1, padding 0), mini masks `[G, M, M]` float32 (with
    `full_masks`: the instance masks `[G, h, w]` uint8 0 / 1), original shape `[2]` int32.
    """

    def __init__(self, source, max_instances: int, mask_size: int,
                 skip_bad_images: bool = False, full_masks: bool = False) -> None:
        self.source = source
        self.max_instances = max_instances
        self.mask_size = mask_size
        self.full_masks = full_masks
        self.skip_bad_images = skip_bad_images
        self.skipped: list[str] = []
        self._warned: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, image_id) -> tuple[np.ndarray, ...]:
        """The example of `image_id` and True; with `skip_bad_images`, for a bad image file a
        placeholder and False (warned, counted in `skipped`)."""
        try:
            return (*self.load(int(image_id)), np.bool_(True))
        except BadImageError as err:
            if not self.skip_bad_images:
                raise
            with self._lock:
                self.skipped.append(err.path)
            logger.warning("skipping %s", err)
            m, g = self.mask_size, self.max_instances
            masks = np.zeros((g, 1, 1), np.uint8) if self.full_masks else \
                np.zeros((g, m, m), np.float32)
            return (np.zeros((1, 1, 3), np.uint8), np.zeros((g, 4), np.float32),
                    np.zeros((g,), np.int32), masks, np.ones((2,), np.int32), np.bool_(False))

    def load(self, image_id: int) -> tuple[np.ndarray, ...]:
        image = np.asarray(self.source.load_image(image_id))
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"load_image({image_id}) must return uint8 [h, w, 3], got "
                             f"{image.dtype} {image.shape}")
        height, width = image.shape[:2]
        ann = self.source.load_annotations(image_id)
        boxes, classes, masks = self._instances(image_id, ann, height, width)
        boxes = np.clip(boxes, 0.0, [height, width, height, width]).astype(np.float32)
        if self.full_masks:
            mini = (masks > 0).astype(np.uint8)
        else:
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


def _check_config(config) -> MaskRCNNConfig:
    if not isinstance(config, MaskRCNNConfig):
        raise TypeError(f"config must be a MaskRCNNConfig, got {type(config).__name__}")
    return config


def _check_min_sizes(train_min_sizes) -> tuple[int, ...] | None:
    """The config's multi-scale short sides as ints, or None when empty (one scale)."""
    if isinstance(train_min_sizes, (int, np.integer)) or not isinstance(train_min_sizes,
                                                                          Sequence):
        raise TypeError(f"train_min_sizes must be a tuple of ints, got {train_min_sizes!r}")
    if not train_min_sizes:
        return None
    return tuple(check_positive_int("train_min_sizes", v) for v in train_min_sizes)


def _flip(image: tf.Tensor, boxes: tf.Tensor, mini: tf.Tensor):
    """Mirrors the resized image `[h', w', 3]`, boxes `[G, 4]` (x -> w' - x), masks `[G, M, M]`."""
    width = tf.cast(tf.shape(image)[1], tf.float32)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    boxes = tf.stack([y1, width - x2, y2, width - x1], axis=-1)
    return tf.reverse(image, [1]), boxes, tf.reverse(mini, [2])


def _canvas_masks(masks: tf.Tensor, image_shape: tf.Tensor, canvas) -> tf.Tensor:
    """Instance masks `[G, h, w]` -> `[G, H, W]` uint8: resized to `image_shape` (h', w') as
    torchvision resizes target masks, zero-padded to the canvas."""
    resized = resize_masks_nearest(masks, tf.cast(image_shape, tf.int32))
    shape = tf.shape(resized)
    padded = tf.pad(resized, [[0, 0], [0, canvas[0] - shape[1]], [0, canvas[1] - shape[2]]])
    return tf.ensure_shape(padded, [None, canvas[0], canvas[1]])


def _make_transform(canvas, min_size, max_size, train_min_sizes, horizontal_flip,
                    full_masks: bool = False):
    """The per-image tf map: random short side, resize, boxes to input pixels (per axis), flip,
    pad; with `full_masks` the instance masks become canvas masks (`_canvas_masks`)."""

    def transform(image, boxes, classes, mini, image_id, original_shape, seeds):
        if train_min_sizes is not None:
            index = tf.random.stateless_uniform([], seeds[:2], 0, len(train_min_sizes), tf.int32)
            short = tf.gather(tf.constant(train_min_sizes, tf.int32), index)
        else:
            short = min_size
        resized, scale = resize_image_tf(image, short, max_size)
        image_shape = tf.cast(tf.shape(resized)[:2], tf.float32)
        boxes = boxes_to_input_tf(boxes, original_shape, image_shape)
        if horizontal_flip:
            do_flip = tf.random.stateless_uniform([], seeds[2:4]) < 0.5
            resized, boxes, mini = tf.cond(do_flip, lambda: _flip(resized, boxes, mini),
                                           lambda: (resized, boxes, mini))
        if full_masks:  # mirrored (if at all) at the original size, as torchvision does
            mini = _canvas_masks(mini, image_shape, canvas)
        valid = tf.cast(tf.not_equal(classes, 0), tf.float32)[:, None]
        inputs = {
            "images": pad_to_canvas(resized, canvas),
            "image_shape": image_shape,
            "gt_boxes": boxes * valid,
            "gt_classes": classes,
            "gt_masks": mini,
            "image_id": image_id,
            "scale": scale,
            "original_shape": original_shape,
            # The in-graph RPN / RoI samplers' per-image stateless seed (ops.sampling).
            "sample_seed": tf.cast(seeds[4:6] % (2**31 - 1), tf.int32),
        }
        return (inputs,)

    return transform


def _load_fn(loader: _Loader, max_instances: int, mask_size: int):
    mask_dtype = tf.uint8 if loader.full_masks else tf.float32
    mask_shape = [max_instances, None, None] if loader.full_masks else \
        [max_instances, mask_size, mask_size]

    def load(image_id, seeds):
        image, boxes, classes, mini, shape, ok = tf.numpy_function(
            loader, [image_id], [tf.uint8, tf.float32, tf.int32, mask_dtype, tf.int32, tf.bool],
            stateful=False)
        ok.set_shape([])
        image.set_shape([None, None, 3])
        boxes.set_shape([max_instances, 4])
        classes.set_shape([max_instances])
        mini.set_shape(mask_shape)
        shape.set_shape([2])
        return image, boxes, classes, mini, image_id, shape, seeds, ok

    return load


def _drop_flag(*example):
    return example[:-1]


def num_batches(source, batch_size: int) -> int:
    """Full batches in one pass over `source` (an epoch of `make_dataset(training=True)`)."""
    return len(list(source.image_ids)) // int(batch_size)


def make_dataset(
    source,
    config: MaskRCNNConfig,
    *,
    training: bool,
    batch_size: int | None = None,
    shuffle: bool | None = None,
    repeat: bool | None = None,
    seed: int | None = None,
    drop_remainder: bool | None = None,
    skip_batches: int = 0,
    skip_bad_images: bool = False,
    skipped: list | None = None,
) -> tf.data.Dataset:
    """Batches `(inputs,)` for `model.fit` (docs/CONVENTIONS.md) from a dataset source.

    Everything about the input comes from `config`: the canvas `image_size`, the resize rule
    (`min_size`, `max_size`), `max_instances` (G; images with more instances keep the G largest
    by mask area and log a warning naming the image id, once per id) and `gt_mask_size` (M).
    With `training=True` the augmentation of the config applies too: each image's short side is
    drawn uniformly from `train_min_sizes` when not empty (Detectron2 multi-scale training,
    instead of `min_size`), and images are mirrored with probability 0.5 when
    `horizontal_flip`. With `training=False` there is neither (one scale, no flip).

    Args:
        source: a dataset source (`CocoDataset`, `ShapesDataset`, ...).
        config: the model's `MaskRCNNConfig`.
        training: training batches (augmented, and by default shuffled, repeated, fixed B) or
            evaluation batches (plain, one pass in order).
        batch_size: B (default `config.batch_size`).
        shuffle: shuffle the image ids every epoch (default: `training`).
        repeat: repeat forever (default: `training`).
        seed: makes shuffling and augmentation reproducible (None: random).
        drop_remainder: drop the last partial batch, making B static (default: `training`).
        skip_batches: start after this many batches of the stream (resuming a run at that
            step: the order, augmentation and sampler seeds of what follows are unchanged).
        skip_bad_images: images that cannot be read (`BadImageError`) are left out with a
            warning naming them, instead of failing the iteration with that message; their
            paths are appended to `skipped` when given.

    Returns:
        A dataset of `(inputs,)` with images `[B, H, W, 3]` float32 0..255, image_shape `[B, 2]`
        float32 (h', w'), gt_boxes `[B, G, 4]` float32 input pixels (the per-axis map
        `transform.boxes_to_input` of the original boxes, mirrored when flipped; zeros on
        padding), gt_classes `[B, G]` int32 (0 pad, -1 crowd, 1..K), gt_masks `[B, G, M, M]`
        float32 (`mask_target_rule="torchvision"`: `[B, G, H, W]` uint8 canvas masks),
        image_id `[B]` int64, scale `[B]` float32 (the resize rule's scale),
        original_shape `[B, 2]` int32 (h, w).
    """
    config = _check_config(config)
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {training!r}")
    ids = _check_source(source)
    canvas = check_canvas_size(config.image_size, SIZE_MULTIPLE)
    train_min_sizes = _check_min_sizes(config.train_min_sizes) if training else None
    horizontal_flip = training and bool(config.horizontal_flip)
    max_instances = check_positive_int("max_instances", config.max_instances)
    mask_size = check_positive_int("gt_mask_size", config.gt_mask_size)
    batch_size = check_positive_int(
        "batch_size", config.batch_size if batch_size is None else batch_size)
    shuffle = training if shuffle is None else bool(shuffle)
    repeat = training if repeat is None else bool(repeat)
    drop_remainder = training if drop_remainder is None else bool(drop_remainder)

    dataset = tf.data.Dataset.from_tensor_slices(np.array(ids, np.int64))
    if shuffle:
        dataset = dataset.shuffle(len(ids), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(6)
    dataset = tf.data.Dataset.zip(dataset, seeds)
    if skip_batches:  # resume: the same stream, without loading what was already trained on
        dataset = dataset.skip(int(skip_batches) * batch_size)
    full_masks = config.mask_target_rule == "torchvision"
    loader = _Loader(source, max_instances, mask_size, skip_bad_images, full_masks)
    if skipped is not None:
        loader.skipped = skipped
    dataset = dataset.map(_load_fn(loader, max_instances, mask_size),
                          num_parallel_calls=tf.data.AUTOTUNE)
    if skip_bad_images:
        dataset = dataset.filter(lambda *example: example[-1])
    dataset = dataset.map(_drop_flag)
    transform = _make_transform(canvas, config.min_size, config.max_size, train_min_sizes,
                                horizontal_flip, full_masks)
    dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_inference_inputs(
    images: Sequence[np.ndarray], config: MaskRCNNConfig,
    canvas: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Resizes and pads a list of images into one batch for `predict` (`transform.letterbox`
    with the config's resize rule).

    Args:
        images: B arrays `[h, w, 3]` (or `[h, w]` grayscale) RGB, uint8 (or float 0..255).
        config: the model's `MaskRCNNConfig` (`min_size`, `max_size`, `image_size`).
        canvas: (H, W), multiples of 32, large enough for every resized image (default
            `config.image_size`; `transform.canvas_for` gives the per-image canvas).

    Returns:
        dict of numpy arrays: images `[B, H, W, 3]` float32, image_shape `[B, 2]` float32,
        scale `[B]` float32, original_shape `[B, 2]` int32.
    """
    config = _check_config(config)
    canvas = check_canvas_size(config.image_size if canvas is None else canvas, SIZE_MULTIPLE)
    if (isinstance(images, np.ndarray) and images.ndim in (2, 3)) or not len(images):
        raise ValueError("images must be a non-empty list of [h, w, 3] arrays")
    out = []
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
            raise ValueError(f"images[{i}] must be [h, w, 3] RGB, got shape {image.shape}")
        if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
            raise TypeError(f"images[{i}] must be uint8 or float, got {image.dtype}")
        out.append(letterbox(image, canvas, config.min_size, config.max_size))
    return {key: np.stack([o[key] for o in out]) for key in out[0]}
