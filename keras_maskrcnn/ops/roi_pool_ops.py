"""RoIPool (quantized max pooling, torchvision.ops.roi_pool semantics) in `keras.ops`:
`roi_pool` (exported as `keras_maskrcnn.ops.roi_pool`) and `roi_pool_flat`, the kernel shared
with `ops.poolers`.

Feature maps are NHWC; boxes (y1, x1, y2, x2) float32 in input pixels. The RoI is scaled and
rounded (halves away from zero), its size clamped to >= 1, split into bins with floor / ceil
boundaries clipped to the map, and each bin is max-pooled (an empty bin is 0). This is the
quantized pooling of Fast R-CNN that the Mask R-CNN paper ablates against RoIAlign.

Backends: TensorFlow, JAX and PyTorch. The default window (`max_bin_size=None`, as large as
the largest bin) is a data-dependent shape: TensorFlow (outside XLA) and PyTorch compute it;
under `jax.jit` pass a fixed `max_bin_size` (a ValueError says so).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from keras import ops

from keras_maskrcnn import backend
from keras_maskrcnn.ops.roi_common import (
    check_box_indices,
    check_boxes,
    check_features,
    check_max_bin_size,
    check_scale,
    dtype_name,
    flat_geometry,
    gather_rows,
    no_autograph,
    pair,
)


def _round_half_away(values):
    """C++ std::round (halves away from zero) as int32; tf.round rounds halves to even.

    Non-finite values (undefined behaviour in the reference kernel) become 0.
    """
    values = ops.where(ops.isfinite(values), values, 0.0)
    trunc = ops.where(values >= 0.0, ops.floor(values), ops.ceil(values))
    frac = values - trunc  # exact in float32
    step = ops.where(ops.abs(frac) >= 0.5, ops.sign(values), 0.0)
    return ops.cast(trunc + step, "int32")


def _lowest(dtype: str) -> float:
    """The lowest finite value of a floating-point dtype (what an excluded pixel reads)."""
    if dtype == "bfloat16":  # 8 exponent bits as float32, 7 mantissa bits
        return -(2.0 - 2.0**-7) * 2.0**127
    return float(np.finfo(dtype).min)


def _max_over_windows(values):
    """[N, ph, Ky, pw, Kx, C] -> [N, ph, pw, C] maxima, also for N = 0."""
    if backend.is_tensorflow():  # keras' max asserts a non-empty tensor when eager
        return backend.tensorflow().reduce_max(values, axis=[2, 4])
    return ops.amax(values, axis=(2, 4))


def _window(span, max_bin_size: int | None):
    """Rows read per bin: `max_bin_size`, or the largest bin (at least 1; data-dependent)."""
    if max_bin_size is not None:
        return max_bin_size
    window = ops.max(span, initial=1)
    if backend.name() != "jax":
        return window
    try:  # JAX: a Python int from concrete values; a traced one has no static shape
        return int(ops.convert_to_numpy(window))
    except Exception as err:  # a tracer under jax.jit (ConcretizationTypeError)
        raise ValueError(
            "roi_pool with max_bin_size=None sizes its window from the boxes, which jax.jit "
            "cannot trace; pass a fixed `max_bin_size` (pixels per bin and axis)"
        ) from err


def _pool_axis(start, end, pooled: int, size, max_bin_size: int | None):
    """Quantized RoIPool bins on one axis: rows [N, P, K] int32 (clipped) and their mask."""
    extent = ops.maximum(end - start + 1, 1)
    bin_size = ops.cast(extent, "float32")[:, None] / float(pooled)
    bins = ops.arange(pooled, dtype="float32")[None, :]
    lo = ops.cast(ops.floor(bins * bin_size), "int32") + start[:, None]
    hi = ops.cast(ops.ceil((bins + 1.0) * bin_size), "int32") + start[:, None]
    size = size[:, None]
    lo = ops.minimum(ops.maximum(lo, 0), size)  # clip_by_value(lo, 0, size)
    hi = ops.minimum(ops.maximum(hi, 0), size)
    span = hi - lo  # <= 0: empty bin
    steps = ops.arange(_window(span, max_bin_size), dtype="int32")
    rows = lo[..., None] + steps
    valid = steps < span[..., None]
    return ops.minimum(rows, size[..., None] - 1), valid, span > 0


def roi_pool_flat(flat, base, height, width, boxes, scale, output_size, max_bin_size):
    """RoIPool of every box on its own map inside `flat` [T, C] -> [N, ph, pw, C].

    The kernel behind `roi_pool` and `ops.poolers.multilevel_roi_align(method="pool")`; takes
    already-checked arguments laid out as for `roi_align_ops.roi_align_flat`.
    """
    ph, pw = output_size
    y1, x1, y2, x2 = ops.unstack(_round_half_away(boxes * scale[..., None]), num=4, axis=-1)
    rows, row_ok, row_full = _pool_axis(y1, y2, ph, height, max_bin_size)
    cols, col_ok, col_full = _pool_axis(x1, x2, pw, width, max_bin_size)
    index = (
        base[:, None, None, None, None]
        + (rows * width[:, None, None])[:, :, :, None, None]
        + cols[:, None, None, :, :]
    )
    values = gather_rows(flat, index)  # [N, ph, Ky, pw, Kx, C]
    ok = row_ok[:, :, :, None, None] & col_ok[:, None, None, :, :]
    dtype = dtype_name(flat)
    values = ops.where(ok[..., None], values, ops.convert_to_tensor(_lowest(dtype), dtype))
    pooled = _max_over_windows(values)
    full = row_full[:, :, None] & col_full[:, None, :]
    return ops.where(full[..., None], pooled, ops.zeros((), dtype))


@no_autograph
def roi_pool(
    features,
    boxes,
    box_indices,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    max_bin_size: int | None = None,
):
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
            dynamic shape; not under jax.jit); an int fixes the window to that many pixels per
            axis (static shapes, XLA-compilable), ignoring any pixel of a larger bin past the
            window.

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
        ops.convert_to_tensor(scale, "float32"),
        output_size,
        max_bin_size,
    )
