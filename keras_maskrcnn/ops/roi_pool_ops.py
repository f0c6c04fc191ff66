"""RoIPool (quantized max pooling, torchvision.ops.roi_pool semantics) in TensorFlow:
`roi_pool` (exported as `keras_maskrcnn.ops.roi_pool`) and `roi_pool_flat`, the kernel shared
with `ops.poolers`.

Feature maps are NHWC; boxes (y1, x1, y2, x2) float32 in input pixels. The RoI is scaled and
rounded (halves away from zero), its size clamped to >= 1, split into bins with floor / ceil
boundaries clipped to the map, and each bin is max-pooled (an empty bin is 0). This is the
quantized pooling of Fast R-CNN that the Mask R-CNN paper ablates against RoIAlign.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_maskrcnn.ops.roi_common import (
    check_box_indices,
    check_boxes,
    check_features,
    check_max_bin_size,
    check_scale,
    flat_geometry,
    no_autograph,
    pair,
)


def _round_half_away(values: tf.Tensor) -> tf.Tensor:
    """C++ std::round (halves away from zero) as int32; tf.round rounds halves to even.

    Non-finite values (undefined behaviour in the reference kernel) become 0.
    """
    values = tf.where(tf.math.is_finite(values), values, 0.0)
    trunc = tf.where(values >= 0.0, tf.math.floor(values), tf.math.ceil(values))
    frac = values - trunc  # exact in float32
    step = tf.where(tf.abs(frac) >= 0.5, tf.sign(values), 0.0)
    return tf.cast(trunc + step, tf.int32)


def _pool_axis(start, end, pooled: int, size, max_bin_size: int | None):
    """Quantized RoIPool bins on one axis: rows [N, P, K] int32 (clipped) and their mask."""
    extent = tf.maximum(end - start + 1, 1)
    bin_size = tf.cast(extent, tf.float32)[:, None] / float(pooled)
    bins = tf.range(pooled, dtype=tf.float32)[None, :]
    lo = tf.cast(tf.math.floor(bins * bin_size), tf.int32) + start[:, None]
    hi = tf.cast(tf.math.ceil((bins + 1.0) * bin_size), tf.int32) + start[:, None]
    size = size[:, None]
    lo = tf.clip_by_value(lo, 0, size)
    hi = tf.clip_by_value(hi, 0, size)
    span = hi - lo  # <= 0: empty bin
    if max_bin_size is None:
        window = tf.maximum(tf.reduce_max(span), 1)
    else:
        window = max_bin_size
    steps = tf.range(window, dtype=tf.int32)
    rows = lo[..., None] + steps
    valid = steps < span[..., None]
    return tf.minimum(rows, size[..., None] - 1), valid, span > 0


def roi_pool_flat(flat, base, height, width, boxes, scale, output_size, max_bin_size):
    """RoIPool of every box on its own map inside `flat` [T, C] -> [N, ph, pw, C].

    The kernel behind `roi_pool` and `ops.poolers.multilevel_roi_align(method="pool")`; takes
    already-checked arguments laid out as for `roi_align_ops.roi_align_flat`.
    """
    ph, pw = output_size
    y1, x1, y2, x2 = tf.unstack(_round_half_away(boxes * scale[..., None]), num=4, axis=-1)
    rows, row_ok, row_full = _pool_axis(y1, y2, ph, height, max_bin_size)
    cols, col_ok, col_full = _pool_axis(x1, x2, pw, width, max_bin_size)
    index = (
        base[:, None, None, None, None]
        + (rows * width[:, None, None])[:, :, :, None, None]
        + cols[:, None, None, :, :]
    )
    values = tf.gather(flat, index)  # [N, ph, Ky, pw, Kx, C]
    ok = row_ok[:, :, :, None, None] & col_ok[:, None, None, :, :]
    values = tf.where(ok[..., None], values, tf.constant(flat.dtype.min, flat.dtype))
    pooled = tf.reduce_max(values, axis=[2, 4])
    full = row_full[:, :, None] & col_full[:, None, :]
    return tf.where(full[..., None], pooled, tf.zeros([], flat.dtype))


@no_autograph
def roi_pool(
    features: tf.Tensor,
    boxes: tf.Tensor,
    box_indices: tf.Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    max_bin_size: int | None = None,
) -> tf.Tensor:
    """RoIPool with torchvision.ops.roi_pool semantics (max over quantized bins).

    The scaled RoI corners are rounded half away from zero (C++ ``round``), the RoI spans
    ``max(end - start + 1, 1)`` pixels, bin ``p`` covers rows ``floor(p * bin)`` to
    ``ceil((p + 1) * bin)`` (exclusive) past the RoI start, clipped to the map; the output is
    the max over the bin, 0 for an empty bin. Gradients flow to the maxima (split evenly
    between ties, where torchvision picks the first).

    Args:
        features: [B, H, W, C] float feature maps (NHWC).
        boxes: [N, 4] float32 (y1, x1, y2, x2) in input pixels.
        box_indices: [N] int32 image index of each box.
        output_size: int or (ph, pw).
        spatial_scale: 1 / stride.
        max_bin_size: None reads a window as large as the largest bin over the boxes (exact,
            dynamic shape); an int fixes the window to that many pixels per axis (static
            shapes, XLA-compilable), ignoring any pixel of a larger bin past the window.

    Returns:
        [N, ph, pw, C] in the dtype of `features`.
    """
    features = check_features(features)
    boxes = check_boxes(boxes, rank=2)
    box_indices = check_box_indices(box_indices)
    output_size = pair(output_size)
    scale = check_scale(spatial_scale)
    max_bin_size = check_max_bin_size(max_bin_size)
    flat, base, height, width = flat_geometry(features, box_indices)
    return roi_pool_flat(
        flat,
        base,
        height,
        width,
        boxes,
        tf.constant(scale, tf.float32),
        output_size,
        max_bin_size,
    )
