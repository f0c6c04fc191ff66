"""FPN level assignment and multi-level RoI pooling (RoIAlign or RoIPool over P2..P5).

Each box is pooled from level floor(canonical_level + log2(sqrt(area) / canonical_size) + eps),
clamped to the available levels (torchvision's LevelMapper). All levels are flattened and
concatenated so that one gather serves every box of every level with static shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from keras_maskrcnn.ops.roi_align_ops import roi_align, roi_align_flat
from keras_maskrcnn.ops.roi_common import (
    check_boxes,
    check_features,
    check_implementation,
    check_max_bin_size,
    check_max_samples,
    check_sampling_ratio,
    custom_module,
    no_autograph,
    pair,
    resolve_implementation,
)
from keras_maskrcnn.ops.roi_pool_ops import roi_pool, roi_pool_flat


@no_autograph
def assign_fpn_levels(
    boxes: tf.Tensor,
    min_level: int = 2,
    max_level: int = 5,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> tf.Tensor:
    """FPN level of each box (FPN paper eq. 1), as torchvision's ``LevelMapper``.

    ``k = floor(canonical_level + log2(sqrt(area) / canonical_size) + eps)`` clamped to
    ``[min_level, max_level]``. As in torchvision, eps is added to the level, outside the log
    (Detectron2's ``assign_boxes_to_levels`` adds 1e-8 inside: ``log2(size / canonical +
    1e-8)``, which in float32 is a no-op near the level boundaries). A box with zero, negative
    or NaN area gets `min_level`.

    Args:
        boxes: [..., 4] (y1, x1, y2, x2) in input pixels.

    Returns:
        [...] int32 levels in [min_level, max_level].
    """
    boxes = tf.convert_to_tensor(boxes)
    if boxes.shape.rank is not None and (boxes.shape.rank < 1 or boxes.shape[-1] not in (None, 4)):
        raise ValueError(f"`boxes` must have shape [..., 4], got {boxes.shape}")
    if min_level > max_level:
        raise ValueError(f"`min_level` ({min_level}) must be <= `max_level` ({max_level})")
    if not canonical_size > 0:
        raise ValueError(f"`canonical_size` must be positive, got {canonical_size!r}")
    boxes = tf.cast(boxes, tf.float32)
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=-1)
    area = (y2 - y1) * (x2 - x1)
    area = tf.where(area > 0.0, area, 0.0)  # also maps NaN to 0
    log2 = tf.math.log(tf.sqrt(area) / float(canonical_size)) / math.log(2.0)
    level = tf.math.floor(float(canonical_level) + log2 + float(eps))
    level = tf.clip_by_value(level, float(min_level), float(max_level))
    return tf.cast(level, tf.int32)


# --------------------------------------------------------------------------- multi-level


def _check_levels(features: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    if isinstance(features, tf.Tensor) or not isinstance(features, Sequence) or not features:
        raise TypeError("`features` must be a non-empty list of [B, H_l, W_l, C] tensors")
    levels = [check_features(f, name=f"features[{i}]") for i, f in enumerate(features)]
    dtypes = {f.dtype for f in levels}
    channels = {f.shape[3] for f in levels if f.shape[3] is not None}
    if len(dtypes) > 1 or len(channels) > 1:
        raise ValueError("all `features` levels must share one dtype and one channel count")
    return levels


def _check_method(method: str) -> str:
    if method not in ("align", "pool"):
        raise ValueError(f"`method` must be 'align' or 'pool', got {method!r}")
    return method


def _flatten_rois(boxes: tf.Tensor):
    """[B, R, 4] -> ([B*R, 4] boxes, [B*R] int32 image index, B, R)."""
    shape = tf.shape(boxes, out_type=tf.int32)
    batch = boxes.shape[0] if boxes.shape[0] is not None else shape[0]
    num = boxes.shape[1] if boxes.shape[1] is not None else shape[1]
    image = tf.repeat(tf.range(batch, dtype=tf.int32), num)
    return tf.reshape(boxes, [-1, 4]), image, batch, num


def _multilevel_flat(levels: list[tf.Tensor], level_index: tf.Tensor, image: tf.Tensor):
    """Concatenates all levels into one [T, C] table; per-box base / H / W [N] int32."""
    sizes = [tf.shape(f, out_type=tf.int32) for f in levels]
    heights = tf.stack([s[1] for s in sizes])
    widths = tf.stack([s[2] for s in sizes])
    counts = tf.stack([s[0] * s[1] * s[2] for s in sizes])
    offsets = tf.cumsum(counts, exclusive=True)
    height = tf.gather(heights, level_index)
    width = tf.gather(widths, level_index)
    base = tf.gather(offsets, level_index) + image * height * width
    channels = levels[0].shape[3] if levels[0].shape[3] is not None else tf.shape(levels[0])[3]
    flat = tf.concat([tf.reshape(f, [-1, channels]) for f in levels], axis=0)
    return flat, base, height, width, channels


@no_autograph
def _multilevel_custom_op(
    levels, boxes, output_size, min_level, canonical_size, canonical_level, sampling_ratio, aligned
):
    """All levels in one call of the compiled multi-level op."""
    custom = custom_module(required=True)
    flat_boxes, image, batch, num = _flatten_rois(boxes)
    max_level = min_level + len(levels) - 1
    level = assign_fpn_levels(flat_boxes, min_level, max_level, canonical_size, canonical_level)
    scales = [2.0 ** -(min_level + i) for i in range(len(levels))]
    pooled = custom.multilevel_roi_align_custom(
        levels, flat_boxes, image, level - min_level, output_size, scales,
        sampling_ratio=sampling_ratio, aligned=aligned,
    )
    channels = levels[0].shape[-1]
    return tf.reshape(pooled, [batch, num, output_size[0], output_size[1], channels])


def multilevel_roi_align(
    features: Sequence[tf.Tensor],
    boxes: tf.Tensor,
    output_size: int | Sequence[int],
    min_level: int = 2,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
    sampling_ratio: int = 0,
    aligned: bool = True,
    method: str = "align",
    implementation: str = "auto",
    max_bin_size: int | None = None,
    max_samples: int | None = None,
) -> tf.Tensor:
    """Pools every box from its FPN level (torchvision ``MultiScaleRoIAlign``).

    Each box gets level ``assign_fpn_levels(box, min_level, min_level + L - 1, ...)`` and is
    pooled from that level with ``spatial_scale = 2 ** -level``. The "gather" path flattens and
    concatenates all levels and reads every box with one gather (per-box base offset and map
    bounds): no per-level loop, static shapes for a fixed R when sampling_ratio > 0; B may be
    dynamic. With the adaptive ratio (0), "static" (selected by itself under XLA jit_compile)
    gives the same numbers with static shapes (`roi_align_ops._roi_align_static`: a loop over
    each box's own sample pairs, all levels in one gather per step; nothing capped, so no RoI
    of any level is clipped). "custom_op" / "crop_and_resize" run per level
    (`multilevel_roi_align_per_level`).

    Args:
        features: list of L maps [B, H_l, W_l, C] for levels min_level .. min_level + L - 1.
        boxes: [B, R, 4] float32 (y1, x1, y2, x2) in input pixels.
        output_size: int or (ph, pw).
        sampling_ratio, aligned, implementation, max_samples: as in `roi_align`
            (max_samples: method="align", gather / static / auto only).
        method: "align" (RoIAlign) or "pool" (RoIPool semantics, `roi_pool`; gather only).
        max_bin_size: only for method="pool", see `roi_pool`.

    Returns:
        [B, R, ph, pw, C] in the dtype of the features.
    """
    levels = _check_levels(features)
    boxes = check_boxes(boxes, rank=3)
    output_size = pair(output_size)
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    method = _check_method(method)
    max_bin_size = check_max_bin_size(max_bin_size)
    implementation = check_implementation(implementation)
    max_samples = check_max_samples(max_samples, sampling_ratio)
    if max_samples is not None:
        if implementation in ("custom_op", "crop_and_resize"):
            raise ValueError(
                f"`max_samples` needs implementation 'gather', 'static' or 'auto', got "
                f"{implementation!r}"
            )
        implementation = "gather" if implementation == "auto" else implementation
    implementation = resolve_implementation(implementation, levels[0].dtype)
    if method == "align" and implementation == "custom_op":
        return _multilevel_custom_op(
            levels, boxes, output_size, min_level, canonical_size, canonical_level,
            sampling_ratio, aligned,
        )
    if method == "align" and implementation not in ("gather", "static"):
        return multilevel_roi_align_per_level(
            levels,
            boxes,
            output_size,
            min_level,
            canonical_size,
            canonical_level,
            sampling_ratio,
            aligned,
            method,
            implementation,
        )
    flat_boxes, image, batch, num = _flatten_rois(boxes)
    max_level = min_level + len(levels) - 1
    level = assign_fpn_levels(flat_boxes, min_level, max_level, canonical_size, canonical_level)
    flat, base, height, width, channels = _multilevel_flat(levels, level - min_level, image)
    scale = tf.pow(2.0, -tf.cast(level, tf.float32))  # exact powers of two
    if method == "pool":
        pooled = roi_pool_flat(
            flat, base, height, width, flat_boxes, scale, output_size, max_bin_size
        )
    else:
        pooled = roi_align_flat(
            flat,
            base,
            height,
            width,
            flat_boxes,
            scale,
            output_size,
            sampling_ratio,
            bool(aligned),
            static=implementation == "static",
            max_samples=max_samples,
        )
    return tf.reshape(pooled, [batch, num, output_size[0], output_size[1], channels])


@no_autograph
def multilevel_roi_align_per_level(
    features: Sequence[tf.Tensor],
    boxes: tf.Tensor,
    output_size: int | Sequence[int],
    min_level: int = 2,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
    sampling_ratio: int = 0,
    aligned: bool = True,
    method: str = "align",
    implementation: str = "gather",
    max_bin_size: int | None = None,
) -> tf.Tensor:
    """Same result as `multilevel_roi_align`, computed by one `roi_align` / `roi_pool` call per
    level on the boxes of that level, then stitched back in order (dynamic shapes).

    Args and returns as in `multilevel_roi_align`: [B, R, ph, pw, C].
    """
    levels = _check_levels(features)
    boxes = check_boxes(boxes, rank=3)
    output_size = pair(output_size)
    method = _check_method(method)
    flat_boxes, image, batch, num = _flatten_rois(boxes)
    max_level = min_level + len(levels) - 1
    level = assign_fpn_levels(flat_boxes, min_level, max_level, canonical_size, canonical_level)
    positions, pooled = [], []
    for offset, feature in enumerate(levels):
        k = min_level + offset
        where = tf.cast(tf.where(tf.equal(level, k))[:, 0], tf.int32)
        level_boxes = tf.gather(flat_boxes, where)
        level_image = tf.gather(image, where)
        if method == "pool":
            out = roi_pool(feature, level_boxes, level_image, output_size, 2.0**-k, max_bin_size)
        else:
            out = roi_align(
                feature,
                level_boxes,
                level_image,
                output_size,
                2.0**-k,
                sampling_ratio,
                aligned,
                implementation,
            )
        positions.append(where)
        pooled.append(out)
    stitched = tf.dynamic_stitch(positions, pooled)
    channels = levels[0].shape[3] if levels[0].shape[3] is not None else tf.shape(levels[0])[3]
    return tf.reshape(stitched, [batch, num, output_size[0], output_size[1], channels])
