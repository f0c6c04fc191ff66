"""FPN level assignment and multi-level RoI pooling (RoIAlign or RoIPool over P2..P5).

Each box is pooled from level floor(canonical_level + log2(sqrt(area) / canonical_size) + eps),
clamped to the available levels (torchvision's LevelMapper). All levels are flattened and
concatenated so that one gather serves every box of every level with static shapes.

Written in `keras.ops` (TensorFlow, JAX, PyTorch). TensorFlow-only: the compiled multi-level op
(`implementation="custom_op"`), and `multilevel_roi_align_per_level` (dynamic per-level
partitions; it serves "crop_and_resize").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from keras import ops

from keras_maskrcnn import backend
from keras_maskrcnn.ops import torch_fast
from keras_maskrcnn.ops.roi_align_ops import roi_align, roi_align_flat
from keras_maskrcnn.ops.roi_common import (
    check_boxes,
    check_features,
    check_implementation,
    check_max_bin_size,
    check_max_samples,
    check_sampling_ratio,
    custom_module,
    dtype_name,
    no_autograph,
    pair,
    resolve_implementation,
    tensor_rank,
)
from keras_maskrcnn.ops.roi_pool_ops import roi_pool, roi_pool_flat


@no_autograph
def assign_fpn_levels(
    boxes,
    min_level: int = 2,
    max_level: int = 5,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
):
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
    boxes = ops.convert_to_tensor(boxes)
    found = tensor_rank(boxes)
    if found is not None and (found < 1 or boxes.shape[-1] not in (None, 4)):
        raise ValueError(f"`boxes` must have shape [..., 4], got {tuple(boxes.shape)}")
    if min_level > max_level:
        raise ValueError(f"`min_level` ({min_level}) must be <= `max_level` ({max_level})")
    if not canonical_size > 0:
        raise ValueError(f"`canonical_size` must be positive, got {canonical_size!r}")
    boxes = ops.cast(boxes, "float32")
    y1, x1, y2, x2 = ops.unstack(boxes, num=4, axis=-1)
    area = (y2 - y1) * (x2 - x1)
    area = ops.where(area > 0.0, area, 0.0)  # also maps NaN to 0
    log2 = ops.log(ops.sqrt(area) / float(canonical_size)) / math.log(2.0)
    level = ops.floor(float(canonical_level) + log2 + float(eps))
    level = ops.clip(level, float(min_level), float(max_level))
    return ops.cast(level, "int32")


# --------------------------------------------------------------------------- multi-level


def _check_levels(features: Sequence) -> list:
    if hasattr(features, "shape") or not isinstance(features, Sequence) or not features:
        raise TypeError("`features` must be a non-empty list of [B, H_l, W_l, C] tensors")
    levels = [check_features(f, name=f"features[{i}]") for i, f in enumerate(features)]
    dtypes = {dtype_name(f) for f in levels}
    channels = {f.shape[3] for f in levels if f.shape[3] is not None}
    if len(dtypes) > 1 or len(channels) > 1:
        raise ValueError("all `features` levels must share one dtype and one channel count")
    return levels


def _check_method(method: str) -> str:
    if method not in ("align", "pool"):
        raise ValueError(f"`method` must be 'align' or 'pool', got {method!r}")
    return method


def _flatten_rois(boxes):
    """[B, R, 4] -> ([B*R, 4] boxes, [B*R] int32 image index, B, R)."""
    batch, num = backend.static_dim(boxes, 0), backend.static_dim(boxes, 1)
    image = ops.repeat(ops.arange(batch, dtype="int32"), num)
    return ops.reshape(boxes, (-1, 4)), image, batch, num


def _int32_vector(values: list):
    """[L] int32 from Python ints and / or scalar tensors (static or run-time sizes)."""
    return ops.stack([ops.cast(ops.convert_to_tensor(v), "int32") for v in values])


def _multilevel_flat(levels: list, level_index, image):
    """Concatenates all levels into one [T, C] table; per-box base / H / W [N] int32."""
    heights = [backend.static_dim(f, 1) for f in levels]
    widths = [backend.static_dim(f, 2) for f in levels]
    offsets = [0]
    for f, h, w in zip(levels[:-1], heights, widths, strict=False):
        offsets.append(offsets[-1] + backend.static_dim(f, 0) * h * w)
    height = ops.take(_int32_vector(heights), level_index)
    width = ops.take(_int32_vector(widths), level_index)
    base = ops.take(_int32_vector(offsets), level_index) + image * height * width
    channels = backend.static_dim(levels[0], 3)
    flat = ops.concatenate([ops.reshape(f, (-1, channels)) for f in levels], axis=0)
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
    return ops.reshape(pooled, (batch, num, output_size[0], output_size[1], channels))


@no_autograph
def multilevel_roi_align(
    features: Sequence,
    boxes,
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
):
    """Pools every box from its FPN level (torchvision ``MultiScaleRoIAlign``).

    Each box gets level ``assign_fpn_levels(box, min_level, min_level + L - 1, ...)`` and is
    pooled from that level with ``spatial_scale = 2 ** -level``. The "gather" path flattens and
    concatenates all levels and reads every box with one gather (per-box base offset and map
    bounds): no per-level loop, static shapes for a fixed R when sampling_ratio > 0; B may be
    dynamic. With the adaptive ratio (0), "static" (selected by itself under XLA jit_compile)
    gives the same numbers with static shapes (`roi_align_ops._roi_align_static`: a loop over
    each box's own sample pairs, all levels in one gather per step; nothing capped, so no RoI
    of any level is clipped). "crop_and_resize" runs per level
    (`multilevel_roi_align_per_level`), "custom_op" as one compiled multi-level op (both
    TensorFlow only; ValueError on JAX / PyTorch, where "auto" is "gather"). JAX takes the
    static formulation for every ratio, PyTorch for the adaptive one (`roi_align_ops`); with
    torchvision installed, PyTorch's "gather" (method "align", no `max_samples`) calls
    ``torchvision.ops.roi_align`` once per level on that level's boxes (`ops.torch_fast`).

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
    # 2 ** -level per box, read from a table of exact powers of two
    scales = [2.0 ** -(min_level + i) for i in range(len(levels))]
    scale = ops.take(ops.convert_to_tensor(scales, "float32"), level - min_level)
    if method == "align" and implementation == "gather" and max_samples is None:
        pooled = torch_fast.multilevel_roi_align(levels, flat_boxes, image, level - min_level,
                                                 scales, output_size, sampling_ratio,
                                                 bool(aligned))
        if pooled is not None:  # PyTorch with torchvision
            return ops.reshape(pooled, (batch, num, output_size[0], output_size[1],
                                        backend.static_dim(levels[0], 3)))
    flat, base, height, width, channels = _multilevel_flat(levels, level - min_level, image)
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
    return ops.reshape(pooled, (batch, num, output_size[0], output_size[1], channels))


@no_autograph
def multilevel_roi_align_per_level(
    features: Sequence,
    boxes,
    output_size: int | Sequence[int],
    min_level: int = 2,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
    sampling_ratio: int = 0,
    aligned: bool = True,
    method: str = "align",
    implementation: str = "gather",
    max_bin_size: int | None = None,
):
    """Same result as `multilevel_roi_align`, computed by one `roi_align` / `roi_pool` call per
    level on the boxes of that level, then stitched back in order (dynamic shapes; TensorFlow
    only, ValueError on another backend).

    Args and returns as in `multilevel_roi_align`: [B, R, ph, pw, C].
    """
    if not backend.is_tensorflow():
        raise ValueError(
            "multilevel_roi_align_per_level partitions the boxes with dynamic shapes "
            f"(TensorFlow only) and the Keras backend is {backend.name()!r}; use "
            "multilevel_roi_align"
        )
    tf = backend.tensorflow()
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
