"""RoIAlign in `keras.ops` (TensorFlow, JAX, PyTorch): `roi_align` (exported as `keras_maskrcnn.ops.roi_align`) and
`roi_align_flat`, the kernel shared with `ops.poolers` (RoIPool: `ops.roi_pool_ops`; FPN levels
and multi-level pooling: `ops.poolers`; argument checks: `ops.roi_common`).

Feature maps are NHWC. Boxes are ``(y1, x1, y2, x2)`` float32 in input pixels; a feature map of
stride ``s`` is read with ``spatial_scale = 1 / s``.

RoIAlign follows ``torchvision.ops.roi_align`` / Detectron2 ``ROIAlign`` exactly (their CPU
kernel, ``roi_align_kernel.cpp`` + ``roi_align_common.h``):

- the RoI is scaled by ``spatial_scale`` and, with ``aligned=True``, shifted by -0.5 (pixel
  centres); with ``aligned=False`` (legacy) its height and width are clamped to at least 1;
- each of the ``ph x pw`` bins is sampled on an ``S_y x S_x`` grid at sub-cell centres, with
  ``S = sampling_ratio`` or, when it is 0, ``ceil(roi_extent / pooled)`` per box and per axis;
- a sample with ``y < -1``, ``y > H``, ``x < -1`` or ``x > W`` reads 0; otherwise ``y <= 0``
  becomes 0, and when ``floor(y) >= H - 1`` the point snaps to row ``H - 1`` (likewise x);
- the bin value is the sum of its bilinear samples divided by ``max(S_y * S_x, 1)``.

Bilinear sampling with these border rules is separable, so every axis is reduced to (row index,
weight) pairs and the features are read with one gather on the flattened maps. This keeps
the op exportable (gather / multiply / reduce only; TFLite builtins) and differentiable with
respect to the features. With ``sampling_ratio > 0`` every shape is static (XLA-compilable).
With the adaptive ratio (0) each bin's samples are merged into a window of consecutive rows and
columns, each box reads only its own window, and the per-bin sums use a sorted segment sum:
shapes are then data-dependent (no XLA), memory follows the boxes' own sample counts. As in
torchvision, there is no gradient with respect to the boxes.

The static formulation (``implementation="static"`` for the adaptive ratio; used for EVERY
ratio while tracing for XLA, ``tf.function(jit_compile=True)``, where a fixed ratio keeps the
one-gather forward above and only takes the loop gradient below) gives the same numbers with
static shapes only. Box n has ``S_y[n] * S_x[n]`` sample pairs per bin; all (box, pair)
entries form one box-major list of ``sum_n S_y[n] S_x[n]`` entries, and a ``tf.while_loop``
walks it in chunks of ``E = max(N, STATIC_MIN_CHUNK)`` entries: entry (n, t) reads the four
bilinear corners of sample ``(t // S_x[n], t % S_x[n])`` of every bin of box n (one
``[E, ph, 2, pw, 2]`` gather per step) and is added into box n's output, the weights
including box n's own ``1 / (S_y[n] S_x[n])``. Nothing is capped: the numbers are the
adaptive kernel's for every RoI size. Only the trip count, ``ceil(sum_n S_y S_x / E)`` (about
the MEAN pair count over the boxes, not the largest), is data-dependent, which XLA compiles (a
loop with a device-side condition). The gradient is a custom one: a second loop recomputes
the same (index, weight) entries and scatter-adds the incoming gradient, so memory stays one
step's gather, ``E * ph * pw * 4 * C`` values (100 MB for 512 RoIs x 7x7 bins x 256 float32
channels), whatever the sample counts, and no per-step activations are kept for the backward
pass. The optional ``max_samples`` cap bounds the per-axis count at ``S = min(ceil(
roi_extent / pooled), max_samples)`` ("gather" and "static"): the bin is then sampled on a
``max_samples`` grid along that axis, evenly spread over the bin, a deliberate departure from
torchvision (which uses more samples) for RoIs longer than ``max_samples * pooled`` feature
pixels along an axis; the default ``None`` never clips.

Backends. TensorFlow: everything above, with the same numbers and graphs as the original
TensorFlow code (plain ``tf.gather`` / ``tf.tensor_scatter_nd_add`` through
``roi_common.gather_rows`` / ``scatter_add_rows``); "crop_and_resize" and "custom_op" are
TensorFlow-only. JAX: every ratio takes the static formulation, forward loop included (shapes
are static under ``jax.jit``; the loop is ``ops.while_loop``, its gradient
``ops.custom_gradient``; a fixed ratio's numbers then differ from the one-gather forward by
float rounding only). PyTorch: with torchvision installed, "auto" / "gather" (without
``max_samples``) call ``torchvision.ops.roi_align`` (`ops.torch_fast`: the same semantics, NCHW
maps and ``(image, x1, y1, x2, y2)`` RoIs bridged there, non-finite boxes pooling 0 as here;
tested equal, gradients included, in tests/portable/test_torch_fast_paths.py); otherwise the
adaptive ratio takes the static formulation, a fixed ratio the one-gather forward with
autograd's gradient. JAX's eager mode re-traces the loop at every
call: call it under ``jax.jit`` (as Keras' fit / predict do).
"""

from __future__ import annotations

from collections.abc import Sequence

from keras import ops

from keras_maskrcnn import backend
from keras_maskrcnn.ops import torch_fast
from keras_maskrcnn.ops.roi_common import (
    axis_bilinear,
    check_backend,
    check_box_indices,
    check_boxes,
    check_features,
    check_implementation,
    check_max_samples,
    check_sampling_ratio,
    check_scale,
    custom_module,
    dtype_name,
    flat_geometry,
    gather_rows,
    in_xla_context,
    no_autograph,
    pair,
    resolve_implementation,
    scatter_add_rows,
)

# --------------------------------------------------------------------------- per-box geometry


def _roi_extents(boxes, scale, aligned: bool):
    """RoI start and extent per axis in feature-map pixels, each [N] float32 (torchvision rules)."""
    offset = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = ops.unstack(boxes, num=4, axis=-1)
    start_y = y1 * scale - offset
    start_x = x1 * scale - offset
    extent_y = (y2 * scale - offset) - start_y
    extent_x = (x2 * scale - offset) - start_x
    if not aligned:  # legacy: malformed RoIs are forced to be at least 1x1
        extent_y = ops.maximum(extent_y, 1.0)
        extent_x = ops.maximum(extent_x, 1.0)
    return start_y, extent_y, start_x, extent_x


def _adaptive_counts(extent, pooled: int, max_samples: int | None = None):
    """The adaptive ratio's samples per bin along one axis, [N] int32 (capped if asked)."""
    count = ops.ceil(extent / float(pooled))
    # Non-positive extents sample nothing (the kernel's loops run zero times); so do NaN / inf
    # ones (undefined in the kernel), which also keeps the int cast safe.
    count = ops.where((count > 0.0) & ops.isfinite(count), count, 0.0)
    if max_samples is not None:
        count = ops.minimum(count, float(max_samples))
    return ops.cast(count, "int32")


def _sample_counts(extent, pooled: int, sampling_ratio: int, max_samples: int | None = None):
    """Samples per bin along one axis: ([N] int32 per-box count, grid size: int or scalar)."""
    if sampling_ratio > 0:
        return ops.full_like(extent, sampling_ratio, dtype="int32"), sampling_ratio
    count = _adaptive_counts(extent, pooled, max_samples)
    return count, ops.max(count, initial=1)  # at least 1 (also with no boxes)


def _axis_points(start, extent, pooled: int, count, grid):
    """Sample coordinates [N, pooled, grid] float32 and a mask of the points each box uses."""
    bin_size = (extent / float(pooled))[:, None, None]
    divisor = ops.cast(ops.maximum(count, 1), "float32")[:, None, None]
    bins = ops.arange(pooled, dtype="float32")[None, :, None]
    steps = ops.arange(grid, dtype="int32")
    offsets = (ops.cast(steps, "float32") + 0.5)[None, None, :]
    # Same operation order as the reference kernel: start + p * bin + (i + .5) * bin / count.
    points = start[:, None, None] + bins * bin_size + offsets * bin_size / divisor
    used = steps[None, None, :] < count[:, None, None]
    used = ops.broadcast_to(used, ops.shape(points))
    return points, used, divisor


def _compact_axis(index, weight):
    """Merges (index, weight) pairs [N, P, E] into windows of consecutive rows per bin.

    Returns rows [N, P, K] int32 and weights [N, P, K] (K: the widest window over all boxes)
    and each box's own window width [N] int32 (>= 1). With the adaptive ratio a bin's S
    samples touch at most S + 1 consecutive rows, instead of 2 S (index, weight) pairs.
    """
    big = 2**31 - 1  # int32 max
    active = weight != 0.0
    start = ops.min(ops.where(active, index, big), axis=-1, keepdims=True, initial=big)
    start = ops.where(start == big, 0, start)
    slot = index - start
    per_box = ops.max(ops.where(active, slot, 0), axis=(1, 2), initial=0) + 1  # [N]
    width = ops.max(per_box, initial=1)  # at least 1 (also with no boxes)
    one_hot = ops.one_hot(slot, width, dtype=dtype_name(weight))
    merged = ops.sum(one_hot * weight[..., None], axis=-2)
    rows = start + ops.arange(width, dtype="int32")
    return rows, merged, per_box


def _axis_table(start, extent, pooled: int, sampling_ratio: int, size,
                max_samples: int | None = None):
    """Per-box rows (or columns) and weights for one axis, each [N, pooled, K].

    Also returns each box's window width [N] (adaptive ratio) or None (fixed ratio, K = 2 S).
    """
    count, grid = _sample_counts(extent, pooled, sampling_ratio, max_samples)
    points, used, divisor = _axis_points(start, extent, pooled, count, grid)
    low, high, w_low, w_high = axis_bilinear(points, used, size[:, None, None])
    index = ops.concatenate([low, high], axis=-1)
    weight = ops.concatenate([w_low, w_high], axis=-1) / divisor
    per_box = None
    if sampling_ratio == 0:
        index, weight, per_box = _compact_axis(index, weight)
    return ops.minimum(index, size[:, None, None] - 1), weight, per_box


def _gather_separable(flat, base, width, rows, row_w, cols, col_w):
    """out[n, p, q] = sum_{k, l} row_w[n, p, k] col_w[n, q, l] flat[base + rows * width + cols].

    flat [T, C]; base, width [N] int32; rows/row_w [N, ph, Ky]; cols/col_w [N, pw, Kx].
    Returns [N, ph, pw, C] in flat's dtype. Static shapes.
    """
    index = (
        base[:, None, None, None, None]
        + (rows * width[:, None, None])[:, :, :, None, None]
        + cols[:, None, None, :, :]
    )
    values = gather_rows(flat, index)  # [N, ph, Ky, pw, Kx, C]
    row_w = ops.cast(row_w, flat.dtype)[:, :, :, None, None, None]
    col_w = ops.cast(col_w, flat.dtype)[:, None, :, :, None]
    values = ops.sum(values * row_w, axis=2)  # [N, ph, pw, Kx, C]
    return ops.sum(values * col_w, axis=3)


def _exclusive_cumsum(x):
    """Exclusive cumulative sum of an int32 vector (exact)."""
    return ops.cast(ops.cumsum(x), "int32") - x


def _gather_ragged(flat, base, width, rows, row_w, ky, cols, col_w, kx):
    """Same sum as `_gather_separable`, reading only box n's own ky[n] x kx[n] window per bin.

    The (box, bin, k, j) terms are enumerated as one ragged list (box-major, sorted by bin) and
    reduced with a sorted segment sum, so memory follows the boxes' own sample counts instead
    of the largest count over all boxes (adaptive sampling ratio; dynamic shapes: TensorFlow
    outside XLA).
    """
    num = backend.static_dim(rows, 0)
    ph, pw = rows.shape[1], cols.shape[1]
    k_max_y, k_max_x = backend.static_dim(rows, 2), backend.static_dim(cols, 2)
    per_bin = ky * kx
    box = ops.repeat(ops.arange(num, dtype="int32"), ph * pw * per_bin)
    first = _exclusive_cumsum(ph * pw * per_bin)
    local = ops.arange(backend.static_dim(box, 0), dtype="int32") - ops.take(first, box)
    box_kx = ops.take(kx, box)
    box_per_bin = ops.take(per_bin, box)
    cell = local // box_per_bin  # p * pw + q
    within = local % box_per_bin  # k * kx + j
    k, j = within // box_kx, within % box_kx
    p, q = cell // pw, cell % pw
    row_at = (box * ph + p) * k_max_y + k
    col_at = (box * pw + q) * k_max_x + j
    row = ops.take(ops.reshape(rows, (-1,)), row_at)
    col = ops.take(ops.reshape(cols, (-1,)), col_at)
    weight = ops.take(ops.reshape(row_w, (-1,)), row_at) * ops.take(ops.reshape(col_w, (-1,)),
                                                                      col_at)
    pixel = ops.take(base, box) + row * ops.take(width, box) + col
    values = gather_rows(flat, pixel) * ops.cast(weight, flat.dtype)[:, None]
    pooled = _sorted_segment_sum(values, box * (ph * pw) + cell, num * (ph * pw))
    return ops.reshape(pooled, (num, ph, pw, backend.static_dim(flat, 1)))


def _sorted_segment_sum(values, segments, num_segments):
    """Sum of `values` rows per (sorted) segment id -> [num_segments, C]."""
    if backend.is_tensorflow():  # the sorted kernel, as the original TensorFlow code
        return backend.tensorflow().math.segment_sum(values, segments)
    return ops.segment_sum(values, segments, num_segments=num_segments, sorted=True)


# --------------------------------------------------------------------------- static adaptive


def _step_axis(start, extent, pooled: int, count, step, active, size):
    """(index, weight), each [N, pooled, 2], of sample `step[n]` of every bin along one axis.

    The coordinates are computed exactly as `_axis_points` computes sample `step` (same
    operations, same order); the weights include the 1 / count of the bin average and are 0
    for inactive boxes.
    """
    bin_size = (extent / float(pooled))[:, None, None]
    divisor = ops.cast(ops.maximum(count, 1), "float32")[:, None, None]
    bins = ops.arange(pooled, dtype="float32")[None, :, None]
    offsets = (ops.cast(step, "float32") + 0.5)[:, None, None]
    points = start[:, None, None] + bins * bin_size + offsets * bin_size / divisor
    used = ops.broadcast_to(active[:, None, None], ops.shape(points))
    low, high, w_low, w_high = axis_bilinear(points, used, size[:, None, None])
    index = ops.concatenate([low, high], axis=-1)
    weight = ops.concatenate([w_low, w_high], axis=-1) / divisor
    return ops.minimum(index, size[:, None, None] - 1), weight


STATIC_MIN_CHUNK = 64  # sample pairs per step at least (the step is max(N, this) entries)


def _roi_align_static(flat, base, height, width, boxes, scale, output_size, aligned,
                      max_samples: int | None = None, sampling_ratio: int = 0):
    """RoIAlign with static shapes and bounded memory (see the module docstring): the adaptive
    ratio (`sampling_ratio` 0, optionally capped by `max_samples`) or a fixed one (whose
    forward on TensorFlow is `_gather_separable`, as on the "gather" path; only the gradient
    loops).

    Box n has ``pairs[n] = S_y[n] * S_x[n]`` sample pairs per bin; all (box, pair) entries form
    one box-major list of ``sum(pairs)`` entries, which a loop walks in chunks of E = max(N,
    STATIC_MIN_CHUNK) entries: entry (n, t) reads sample (t // S_x[n], t % S_x[n]) of every
    bin of box n (an [E, ph, 2, pw, 2] gather) and is added into box n's output. The trip
    count, ceil(sum(pairs) / E), follows the MEAN sample count, not the largest. The custom
    gradient walks the same chunks and scatter-adds the incoming gradient with the same
    weights. Same arguments and result as `roi_align_flat`.
    """
    ph, pw = output_size
    if boxes.shape[0] == 0:  # statically no boxes: no loop (a gather keeps the zero gradient)
        return gather_rows(flat, ops.zeros((0, ph, pw), "int32"))
    start_y, extent_y, start_x, extent_x = _roi_extents(boxes, scale, aligned)
    count_y = _sample_counts(extent_y, ph, sampling_ratio, max_samples)[0]
    count_x = _sample_counts(extent_x, pw, sampling_ratio, max_samples)[0]
    pairs = count_y * count_x  # sample pairs per bin of each box
    ends = ops.cast(ops.cumsum(pairs), "int32")  # entries of boxes 0..n
    total = ops.cast(ops.sum(pairs), "int32")
    num = backend.static_dim(boxes, 0)
    chunk = max(num, STATIC_MIN_CHUNK) if isinstance(num, int) else ops.maximum(
        num, STATIC_MIN_CHUNK)
    steps = (total + chunk - 1) // chunk
    last = ops.maximum(num - 1, 0)
    channels = backend.static_dim(flat, 1)
    table_dtype = dtype_name(flat)
    acc_dtype = "float64" if table_dtype == "float64" else "float32"

    def step_tables(step):
        """Box [E] int32, flat-table indices [E, ph, 2, pw, 2] and weights of chunk `step`."""
        entry = step * chunk + ops.arange(chunk, dtype="int32")
        active = entry < total
        # box of each entry: the number of boxes whose entries all come before it
        box = ops.sum(ops.cast(ends[None, :] <= entry[:, None], "int32"), axis=1)
        box = ops.minimum(box, last)
        local = entry - (ops.take(ends, box) - ops.take(pairs, box))
        per_row = ops.maximum(ops.take(count_x, box), 1)
        size_y, size_x = ops.take(height, box), ops.take(width, box)
        rows, row_w = _step_axis(ops.take(start_y, box), ops.take(extent_y, box), ph,
                                 ops.take(count_y, box), local // per_row, active, size_y)
        cols, col_w = _step_axis(ops.take(start_x, box), ops.take(extent_x, box), pw,
                                 ops.take(count_x, box), local % per_row, active, size_x)
        index = (
            ops.take(base, box)[:, None, None, None, None]
            + (rows * size_x[:, None, None])[:, :, :, None, None]
            + cols[:, None, None, :, :]
        )
        weight = row_w[:, :, :, None, None] * col_w[:, None, None, :, :]
        return box, index, ops.cast(weight, acc_dtype)

    def loop(body, initial):
        start = ops.convert_to_tensor(0, "int32")
        return ops.while_loop(lambda step, _: step < steps, body, (start, initial))[1]

    @ops.custom_gradient
    def pool(table):
        def forward(step, out):
            box, index, weight = step_tables(step)
            values = ops.cast(gather_rows(table, index), acc_dtype)  # [E, ph, 2, pw, 2, C]
            pooled = ops.sum(values * weight[..., None], axis=(2, 4))
            return step + 1, scatter_add_rows(out, box, pooled)

        if sampling_ratio > 0 and backend.is_tensorflow():
            # On TensorFlow a fixed ratio keeps the one-gather forward of the other paths (same
            # rounding under XLA and outside: mask targets threshold it at 0.5); only its
            # gradient is the loop's. JAX loops forward too: XLA's one big gather (N ph pw 4 S^2
            # rows) ran 4x slower on CPU than the loop (2 x 512 RoIs, 7 x 7, S = 2, C = 256).
            rows, row_w, _ = _axis_table(start_y, extent_y, ph, sampling_ratio, height)
            cols, col_w, _ = _axis_table(start_x, extent_x, pw, sampling_ratio, width)
            out = _gather_separable(table, base, width, rows, row_w, cols, col_w)
        else:
            out = loop(forward, ops.zeros((num, ph, pw, channels), acc_dtype))

        def grad(*args, upstream=None):
            if upstream is None:  # TensorFlow and JAX pass it first, PyTorch by keyword
                upstream = args[0]
            upstream = ops.cast(upstream, acc_dtype)

            def backward(step, d_table):
                box, index, weight = step_tables(step)
                d_out = ops.take(upstream, box, axis=0)[:, :, None, :, None, :]
                updates = d_out * weight[..., None]
                return step + 1, scatter_add_rows(d_table, index, updates)

            zeros = ops.zeros(ops.shape(table), acc_dtype)
            return ops.cast(loop(backward, zeros), dtype_name(table))

        return ops.cast(out, table_dtype), grad

    return pool(flat)


# --------------------------------------------------------------------------- flat kernel


def _takes_static_path(static: bool, sampling_ratio: int) -> bool:
    """Whether `roi_align_flat` runs `_roi_align_static` (see the module docstring)."""
    if backend.name() == "jax":
        return True  # traced with static shapes: as TensorFlow under XLA
    if backend.name() == "torch":
        return sampling_ratio == 0  # eager autograd differentiates the fixed ratio's gather
    # Under XLA every ratio takes `_roi_align_static`. A fixed ratio keeps its one-gather
    # forward there, but gets the loop's gradient: the autodiff gradient of that gather (one
    # scatter of N * ph * pw * 4 S^2 rows) took 130 s to compile on CPU inside the Mask R-CNN
    # training step, vs 8 s with the loop (same run time, same numbers).
    return in_xla_context() or (static and sampling_ratio == 0)


def roi_align_flat(flat, base, height, width, boxes, scale, output_size, sampling_ratio, aligned,
                   static: bool = False, max_samples: int | None = None):
    """RoIAlign of every box on its own map inside `flat` [T, C] -> [N, ph, pw, C].

    The kernel behind `roi_align` (gather / static paths) and `ops.poolers.multilevel_roi_align`;
    takes already-checked arguments. base / height / width [N] int32 locate each box's map
    (row-major [H, W] block of `flat`, see `roi_common.flat_geometry`); scale is a scalar or [N]
    float32 spatial scale; output_size a (ph, pw) pair. Tracing for XLA (any ratio), or
    `static` with the adaptive ratio (0), selects the static loop formulation
    `_roi_align_static`, as does JAX (any ratio) and PyTorch (the adaptive ratio);
    `max_samples` caps the adaptive per-axis count (None: no cap). A fixed ratio is static on
    every path.
    """
    ph, pw = output_size
    if _takes_static_path(static, sampling_ratio):
        return _roi_align_static(flat, base, height, width, boxes, scale, output_size, aligned,
                                 max_samples, sampling_ratio)
    start_y, extent_y, start_x, extent_x = _roi_extents(boxes, scale, aligned)
    rows, row_w, ky = _axis_table(start_y, extent_y, ph, sampling_ratio, height, max_samples)
    cols, col_w, kx = _axis_table(start_x, extent_x, pw, sampling_ratio, width, max_samples)
    if sampling_ratio == 0:
        return _gather_ragged(flat, base, width, rows, row_w, ky, cols, col_w, kx)
    return _gather_separable(flat, base, width, rows, row_w, cols, col_w)


# --------------------------------------------------------------------------- RoIAlign variants


def _roi_align_crop_and_resize(
    features, boxes, box_indices, output_size, scale, sampling_ratio, aligned
):
    """RoIAlign through `tf.image.crop_and_resize` (fixed sampling ratio only; TensorFlow only).

    crop_and_resize reads 0 outside [0, H - 1] while RoIAlign clamps points in [-1, 0) and
    (H - 1, H] to the border row: padding the map with one replicated row / column on each side
    makes the two rules coincide, then the P * S uniform sample grid is averaged by S x S.
    """
    tf = backend.tensorflow()
    if sampling_ratio <= 0:
        raise ValueError(
            "implementation='crop_and_resize' needs a fixed `sampling_ratio` > 0: the adaptive "
            "ratio (0) uses a different number of samples per box; use implementation='gather'"
        )
    ph, pw = output_size
    s = sampling_ratio
    dtype = features.dtype
    padded = tf.pad(tf.cast(features, tf.float32), [[0, 0], [1, 1], [1, 1], [0, 0]], "SYMMETRIC")
    shape = tf.shape(padded)
    last_y = tf.cast(shape[1] - 1, tf.float32)
    last_x = tf.cast(shape[2] - 1, tf.float32)
    start_y, extent_y, start_x, extent_x = _roi_extents(boxes, scale, aligned)
    ny, nx = float(ph * s), float(pw * s)
    # first / last sample of the uniform grid, +1 for the padding, normalized to [0, 1] corners.
    y_a = (start_y + 0.5 * extent_y / ny + 1.0) / last_y
    y_b = (start_y + (ny - 0.5) * extent_y / ny + 1.0) / last_y
    x_a = (start_x + 0.5 * extent_x / nx + 1.0) / last_x
    x_b = (start_x + (nx - 0.5) * extent_x / nx + 1.0) / last_x
    crops = tf.image.crop_and_resize(
        padded,
        tf.stack([y_a, x_a, y_b, x_b], axis=-1),
        box_indices,
        [ph * s, pw * s],
        method="bilinear",
        extrapolation_value=0.0,
    )
    channels = features.shape[3] if features.shape[3] is not None else tf.shape(features)[3]
    crops = tf.reshape(crops, [-1, ph, s, pw, s, channels])
    return tf.cast(tf.reduce_mean(crops, axis=[2, 4]), dtype)


@no_autograph
def roi_align(
    features,
    boxes,
    box_indices,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    implementation: str = "auto",
    max_samples: int | None = None,
):
    """RoIAlign with torchvision / Detectron2 semantics (see the module docstring).

    Args:
        features: [B, H, W, C] float feature maps (NHWC); float32, bfloat16 or float16.
        boxes: [N, 4] float32 (y1, x1, y2, x2) in input pixels.
        box_indices: [N] int32, the image in `features` each box reads (crop_and_resize order).
        output_size: int or (ph, pw), the pooled size.
        spatial_scale: feature pixels per input pixel (1 / stride).
        sampling_ratio: samples per bin and axis; 0 = adaptive, ceil(roi_extent / pooled) per
            box and axis (data-dependent shapes on the "gather" path; static ones on the
            "static" path, which XLA tracing selects by itself). With sampling_ratio > 0
            every shape is static (XLA-compilable) on every path.
        aligned: True (Detectron2 ROIAlignV2) shifts by -0.5 pixel; False is torchvision's
            legacy mode (no shift, RoI extent clamped to >= 1).
        implementation: "gather" (gather + bilinear weights; the portable main path, every
            backend), "crop_and_resize" (TensorFlow only: tf.image.crop_and_resize on an
            edge-padded map, sampling_ratio > 0 only; same values up to float rounding,
            except that a sample falling exactly on the -1 / H limit may land on the other
            side of it), "custom_op" (TensorFlow
            only: the compiled CPU kernel in keras_maskrcnn.ops.custom_roi_align; raises
            RuntimeError with the build command when it is missing), "static" (the adaptive
            ratio with static shapes, see the module docstring; the same numbers as "gather";
            used by "gather" and "auto" by themselves under XLA jit_compile, on JAX and, for
            the adaptive ratio, on PyTorch) or "auto" (on TensorFlow the custom op when it is
            built and usable here: float32 / bfloat16 / float16, no visible GPU, not under XLA
            jit_compile, no `max_samples`; else, and on JAX / PyTorch, "gather"; on PyTorch
            "gather" runs torchvision's kernel when torchvision is installed). The
            TensorFlow-only choices raise ValueError on another backend.
        max_samples: None (default: no cap, torchvision's numbers for every RoI) or an int
            >= 1 capping the adaptive per-axis sample count at min(ceil(roi_extent /
            pooled), max_samples) ("gather" / "static" only, sampling_ratio=0 only): RoIs
            longer than max_samples * pooled feature pixels along an axis are then sampled
            on a max_samples grid along it (fewer samples than torchvision's).

    Returns:
        [N, ph, pw, C] pooled features in the dtype of `features`.
    """
    features = check_features(features)
    boxes = check_boxes(boxes, rank=2)
    box_indices = check_box_indices(box_indices)
    output_size = pair(output_size)
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    scale = check_scale(spatial_scale)
    aligned = bool(aligned)
    max_samples = check_max_samples(max_samples, sampling_ratio)
    implementation = check_backend(check_implementation(implementation))
    if max_samples is not None and implementation in ("custom_op", "crop_and_resize"):
        raise ValueError(
            f"`max_samples` needs implementation 'gather', 'static' or 'auto', got "
            f"{implementation!r}"
        )
    if max_samples is None:
        implementation = resolve_implementation(implementation, features.dtype)
    elif implementation == "auto":
        implementation = "gather"

    if implementation == "custom_op":
        module = custom_module(required=True)
        return module.roi_align_custom(
            features,
            boxes,
            box_indices,
            output_size=output_size,
            spatial_scale=scale,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
        )
    if implementation == "crop_and_resize":
        return _roi_align_crop_and_resize(
            features, boxes, box_indices, output_size, scale, sampling_ratio, aligned
        )
    if implementation == "gather" and max_samples is None:
        pooled = torch_fast.roi_align(features, boxes, box_indices, output_size, scale,
                                      sampling_ratio, aligned)
        if pooled is not None:  # PyTorch with torchvision
            return pooled
    flat, base, height, width = flat_geometry(features, box_indices)
    return roi_align_flat(
        flat,
        base,
        height,
        width,
        boxes,
        ops.convert_to_tensor(scale, "float32"),
        output_size,
        sampling_ratio,
        aligned,
        static=implementation == "static",
        max_samples=max_samples,
    )
