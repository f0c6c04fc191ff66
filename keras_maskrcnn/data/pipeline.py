"""tf.data input pipeline: dataset sources -> the batches `model.fit` consumes, and the
inference batches of `predict`.

Shape glossary: B batch, G max ground-truth instances per image, M mini-mask size, (H, W) canvas,
(h, w) original image, (h', w') resized image inside the canvas.

The image transform (resize rule, canvas, box maps) is `keras_maskrcnn.transform`, shared with
inference and export. Ground-truth boxes map to input
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
import math
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_maskrcnn import backend
from keras_maskrcnn.config import MaskRCNNConfig
from keras_maskrcnn.data.images import BadImageError
from keras_maskrcnn.ops.masks import resize_masks_nearest
from keras_maskrcnn.transform import (
    SIZE_MULTIPLE,
    boxes_to_input_tf,
    check_canvas_size,
    check_positive_int,
    letterbox,
    pad_to_canvas,
    resize_image_tf,
)

tf = backend.lazy_tensorflow()  # tf.data: imported when a dataset is made, not by predict

__all__ = [
    "ExampleError",
    "describe_image",
    "distributed_dataset",
    "input_error_message",
    "make_dataset",
    "make_inference_inputs",
    "make_mini_masks",
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


class ExampleError(ValueError):
    """An error raised while loading one example; the message is one line naming the image id,
    its file and annotation file, and starts with `cannot load image id`."""


def describe_image(source, image_id: int) -> str:
    """"image id 7 (IMAGES_DIR/a.jpg of ANNOTATIONS.json)": the id with whatever the source
    knows of its file (`file_name`, `images_dir`, `annotations_path`; all optional)."""
    try:
        name = str(source.file_name(image_id)) if hasattr(source, "file_name") else ""
    except Exception:  # noqa: BLE001 - a description must not fail
        name = ""
    if name and getattr(source, "images_dir", None) is not None:
        name = str(Path(source.images_dir) / name)
    annotations = getattr(source, "annotations_path", None)
    where = " of ".join(str(x) for x in (name, annotations) if x)
    return f"image id {image_id} ({where})" if where else f"image id {image_id}"


def one_line(err: BaseException) -> str:
    """`TypeName: message` with the message's lines joined (for one-line errors)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


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
        image_id = int(image_id)
        try:
            return (*self.load(image_id), np.bool_(True))
        except BadImageError as err:
            if "image id" not in str(err):  # a source that does not name the id itself
                where = describe_image(self.source, image_id)
                err = BadImageError(err.path, err.reason, f" ({where})")
            if not self.skip_bad_images:
                raise err from None
            with self._lock:
                self.skipped.append(err.path)
            logger.warning("skipping %s", err)
            m, g = self.mask_size, self.max_instances
            masks = np.zeros((g, 1, 1), np.uint8) if self.full_masks else \
                np.zeros((g, m, m), np.float32)
            return (np.zeros((1, 1, 3), np.uint8), np.zeros((g, 4), np.float32),
                    np.zeros((g,), np.int32), masks, np.ones((2,), np.int32), np.bool_(False))
        except Exception as err:  # noqa: BLE001 - any failure of the source names the image
            raise ExampleError(f"cannot load {describe_image(self.source, image_id)}: "
                               f"{one_line(err)}") from err

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


def num_batches(source, batch_size: int, repeat_factor_threshold: float = 0.0) -> int:
    """Full batches in one pass over `source` (an epoch of `make_dataset(training=True)`);
    with repeat-factor sampling, in floor(sum_i r_i) images, the mean sampling epoch
    (`data.repeat_factor`)."""
    if repeat_factor_threshold:
        from keras_maskrcnn.data.repeat_factor import expected_epoch_length, source_repeat_factors

        factors = source_repeat_factors(source, repeat_factor_threshold)
        return int(math.floor(expected_epoch_length(factors))) // int(batch_size)
    return len(list(source.image_ids)) // int(batch_size)


def _repeat_factor_ids(source, ids: list[int], threshold: float, seed: int | None,
                       shuffle: bool, repeat: bool) -> tf.data.Dataset:
    """The image ids of repeat-factor sampling epochs 0, 1, ... (one if not `repeat`), each
    `repeat_factor.epoch_order(ids, factors, seed, epoch)`: a pure function of (seed, epoch)."""
    from keras_maskrcnn.data.repeat_factor import epoch_order, source_repeat_factors

    factors = source_repeat_factors(source, threshold)
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31))
    logger.info("repeat-factor sampling (threshold %g): %d images, %.1f per sampling epoch on "
                "average, largest factor %.2f", threshold, len(ids), float(factors.sum()),
                float(factors.max()))

    def order(epoch):
        return epoch_order(ids, factors, seed, int(epoch), shuffle)

    def one_epoch(epoch):
        ids_of_epoch = tf.numpy_function(order, [epoch], tf.int64, stateful=False)
        ids_of_epoch.set_shape([None])
        return tf.data.Dataset.from_tensor_slices(ids_of_epoch)

    epochs = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(1)
    return epochs.flat_map(one_epoch)


def _example_stream(source, ids: list[int], shuffle: bool, repeat: bool, seed: int | None,
                    repeat_factor_threshold: float = 0.0):
    """The stream `(image_id int64, seeds [6] int64)` of a run: the ids in (shuffled, repeated
    or repeat-factor sampled) order, each with its position's augmentation / sampler seeds."""
    if repeat_factor_threshold > 0:
        dataset = _repeat_factor_ids(source, ids, repeat_factor_threshold, seed, shuffle, repeat)
    else:
        dataset = tf.data.Dataset.from_tensor_slices(np.array(ids, np.int64))
        if shuffle:
            dataset = dataset.shuffle(len(ids), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            dataset = dataset.repeat()
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(6)
    return tf.data.Dataset.zip(dataset, seeds)


def _shard(dataset: tf.data.Dataset, batch_size: int, context) -> tf.data.Dataset:
    """Input pipeline `context.input_pipeline_id`'s share of the id stream: slice i of N equal
    contiguous slices of every global batch of `batch_size`, so that the N pipelines together
    read each global batch once (a last partial global batch is dropped)."""
    pipelines, index = int(context.num_input_pipelines), int(context.input_pipeline_id)
    if batch_size % pipelines:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {pipelines} input "
                         "pipelines (workers)")
    share = batch_size // pipelines
    lo, hi = index * share, (index + 1) * share
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.map(lambda ids, seeds: (ids[lo:hi], seeds[lo:hi])).unbatch()


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
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batches `(inputs,)` for `model.fit` (docs/CONVENTIONS.md) from a dataset source.

    Everything about the input comes from `config`: the canvas `image_size`, the resize rule
    (`min_size`, `max_size`), `max_instances` (G; images with more instances keep the G largest
    by mask area and log a warning naming the image id, once per id) and `gt_mask_size` (M).
    With `training=True` the augmentation of the config applies too: each image's short side is
    drawn uniformly from `train_min_sizes` when not empty (Detectron2 multi-scale training,
    instead of `min_size`), and images are mirrored with probability 0.5 when
    `horizontal_flip`. With `training=False` there is neither (one scale, no flip).
    With `training=True` and `config.repeat_factor_threshold` > 0, the image order is
    repeat-factor sampling (`data.repeat_factor`): sampling epochs of about sum_i r_i images,
    each a pure function of (seed, epoch), one after another.

    Args:
        source: a dataset source (`CocoDataset`, `ShapesDataset`, ...).
        config: the model's `MaskRCNNConfig`.
        training: training batches (augmented, and by default shuffled, repeated, fixed B) or
            evaluation batches (plain, one pass in order).
        batch_size: B, the global batch (default `config.batch_size`).
        shuffle: shuffle the image ids every epoch (default: `training`).
        repeat: repeat forever (default: `training`).
        seed: makes shuffling and augmentation reproducible (None: random).
        drop_remainder: drop the last partial batch, making B static (default: `training`).
        skip_batches: start after this many (global) batches of the stream (resuming a run at
            that step: the order, augmentation and sampler seeds of what follows are unchanged).
        skip_bad_images: bad image files (`BadImageError`: unreadable, or not the size the
            annotations give) are left out with a warning naming them, instead of failing the
            iteration with that message; their paths are appended to `skipped` when given.
            Any other error of the source fails the iteration with an `ExampleError` line
            naming the image id, its file and annotation file.
        input_context: one input pipeline of a `tf.distribute` strategy
            (`distributed_dataset`). With N > 1 pipelines this pipeline reads only slice
            `input_pipeline_id` of N equal contiguous slices of each global batch of the
            one-pipeline stream, chosen by image id before anything is decoded (same order,
            augmentation and sampler seeds: the N pipelines' batches of a step together are
            that step's global batch); batches are per replica
            (`get_per_replica_batch_size(B)`). With one pipeline the stream is the same as
            without `input_context`.

    Returns:
        A dataset of `(inputs,)` with images `[B, H, W, 3]` float32 0..255, image_shape `[B, 2]`
        float32 (h', w'), gt_boxes `[B, G, 4]` float32 input pixels (the per-axis map
        `transform.boxes_to_input` of the original boxes, mirrored when flipped; zeros on
        padding), gt_classes `[B, G]` int32 (0 pad, -1 crowd, 1..K), gt_masks `[B, G, M, M]`
        float32 (`mask_target_rule="torchvision"`: `[B, G, H, W]` uint8 canvas masks),
        image_id `[B]` int64, scale `[B]` float32 (the resize rule's scale),
        original_shape `[B, 2]` int32 (h, w); B is the per-replica batch with `input_context`.
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
    sharded = input_context is not None and input_context.num_input_pipelines > 1
    if sharded and shuffle and seed is None:
        raise ValueError("several input pipelines need a seed (the same on every worker) to "
                         "shuffle the image ids in the same order")

    threshold = float(config.repeat_factor_threshold) if training else 0.0
    dataset = _example_stream(source, ids, shuffle, repeat, seed, threshold)
    if skip_batches:  # resume: the same stream, without loading what was already trained on
        dataset = dataset.skip(int(skip_batches) * batch_size)
    if sharded:  # before anything is read: each pipeline loads only its own images
        dataset = _shard(dataset, batch_size, input_context)
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
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def distributed_dataset(
    strategy: tf.distribute.Strategy, source, config: MaskRCNNConfig, *, batch_size: int,
    seed: int, **options,
) -> tf.distribute.DistributedDataset:
    """The training batches of `make_dataset(training=True)` for `strategy`, built once per
    input pipeline (`strategy.distribute_datasets_from_function`): each worker reads and decodes
    only its share of every global batch of `batch_size` (`make_dataset`'s `input_context`),
    and its replicas get per-replica batches. With one pipeline (one worker, or `mirrored` on one
    host) each replica gets the same images as `experimental_distribute_dataset` of
    `make_dataset` would give it.

    Args:
        strategy: the run's `tf.distribute` strategy.
        source, config: as for `make_dataset`.
        batch_size: the global batch (a multiple of `strategy.num_replicas_in_sync`).
        seed: the run's seed, the same on every worker.
        options: further `make_dataset` arguments (`skip_batches`, `skip_bad_images`,
            `skipped`, `shuffle`, `repeat`).
    """
    if seed is None:
        raise ValueError("distributed_dataset needs a seed, the same on every worker")

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(source, config, training=True, batch_size=batch_size, seed=seed,
                            input_context=context, **options)

    return strategy.distribute_datasets_from_function(dataset_fn)


_LOADER_ERROR = re.compile(r"(cannot load image id [^\n]*)")
_BAD_IMAGE = re.compile(r"(bad image [^\n]*)")
_TF_ERROR_FRAME = ("Graph execution error", "Detected at node", "<stack traces")


def input_error_message(err: BaseException) -> str:
    """One line naming the bad input behind an error raised by the input pipeline (the text of
    a TensorFlow error wrapping an `ExampleError` or `BadImageError` of the loader)."""
    text = getattr(err, "message", None) or str(err)
    match = _LOADER_ERROR.search(text)
    if match:
        return match.group(1).rstrip(". ")
    match = _BAD_IMAGE.search(text)
    if match:
        return match.group(1).rstrip(". ") + " (fix or remove it, or pass `skip_bad_images=True`)"
    if isinstance(err, StopIteration) or "End of sequence" in text:
        return "the training data ran out (every image was skipped as unreadable?)"
    # A TF error: "Graph execution error:", "Detected at node N defined at:", an indented
    # stack, then the op's message, then "\t [[{{node N}}]]" lines.
    lines = [line for line in text.splitlines() if line.strip() and not line[0].isspace()
             and not line.startswith(_TF_ERROR_FRAME)]
    return f"the input pipeline failed: {(lines or [type(err).__name__])[0][:300]}"


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
