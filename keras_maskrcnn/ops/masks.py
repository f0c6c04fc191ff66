"""Mask ops: mini masks, mask-head targets and the nearest resize of the input pipeline (pasting
predicted masks into the image: `ops.paste`).

Mask-head targets follow one of two rules (config `mask_target_rule`): "detectron2"
(`crop_mask_targets`: the mini mask resampled half-pixel aligned, thresholded at 0.5) or
"torchvision" (`project_masks`: the full-resolution mask resampled with aligned=False, soft).

Ground-truth "mini masks" (docs/CONVENTIONS.md): instance ``g`` is stored as an ``M x M`` float
grid covering its box; cell ``i`` spans box rows ``y1 + i * h / M .. y1 + (i + 1) * h / M`` and
holds the full mask's bilinear value at the cell centre (pixel-centre convention: pixel ``r``
covers ``[r, r + 1)``). Mask targets resample the mini mask at an RoI with RoIAlign.

Backends. The mask targets (`crop_mask_targets`, `project_masks`, `extend_mask_edges`) and
`masks_to_mini_masks` are `keras.ops` (TensorFlow, JAX, PyTorch). Their fixed-ratio RoIAlign
(`roi_align_fixed`: one gather of the four bilinear corners of every sample + separable
weights) does the operations of `ops.roi_align`'s "gather" path in the same order, so
TensorFlow's numbers are unchanged. `project_masks` (adaptive sampling ratio) keeps
`ops.roi_align` as its TensorFlow path and uses `project_masks_portable` (a loop over sample
steps, static shapes) elsewhere; the two agree to float rounding (~1e-7). TensorFlow only, by
purpose: `resize_masks_nearest` / `nearest_indices` (the tf.data input pipeline, on every
backend).
"""

from __future__ import annotations

from keras import ops

from keras_maskrcnn import backend
from keras_maskrcnn.ops.roi_common import axis_bilinear, no_autograph

# --------------------------------------------------------------------------- keras.ops


def _check_rank(tensor, rank: int, name: str, shape: str):
    tensor = ops.convert_to_tensor(tensor)
    try:
        actual = len(tensor.shape)
    except (TypeError, ValueError):  # TensorFlow: unknown rank
        return tensor
    if actual != rank:
        raise ValueError(f"`{name}` must have shape {shape}, got {tuple(tensor.shape)}")
    return tensor


def _check_size(size: int, name: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"`{name}` must be a positive int, got {size!r}")
    return size


def _take_rows(values, indices):
    """`values [B, K, ...]` at `indices [B, R]` int32 along axis 1 -> `[B, R, ...]`."""
    num = backend.static_dim(values, 1)
    batch = backend.static_dim(indices, 0)
    offsets = ops.arange(batch, dtype="int32")[:, None] * num
    flat = ops.reshape(values, (-1, *values.shape[2:]))
    return ops.take(flat, indices + offsets, axis=0)


def _roi_extents(boxes, aligned: bool):
    """RoI start and extent per axis (spatial scale 1), each [N] float32 (torchvision rules)."""
    offset = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    start_y, start_x = y1 - offset, x1 - offset
    extent_y = (y2 - offset) - start_y
    extent_x = (x2 - offset) - start_x
    if not aligned:  # legacy: malformed RoIs are forced to be at least 1x1
        extent_y = ops.maximum(extent_y, 1.0)
        extent_x = ops.maximum(extent_x, 1.0)
    return start_y, extent_y, start_x, extent_x


def _fixed_axis_table(start, extent, pooled: int, ratio: int, size):
    """Rows [N, pooled, 2 ratio] int32 and weights (1 / ratio included) of one axis."""
    bin_size = (extent / float(pooled))[:, None, None]
    bins = ops.arange(pooled, dtype="float32")[None, :, None]
    offsets = (ops.arange(ratio, dtype="float32") + 0.5)[None, None, :]
    # the reference kernel's operation order: start + p * bin + (i + .5) * bin / count
    points = start[:, None, None] + bins * bin_size + offsets * bin_size / float(ratio)
    low, high, w_low, w_high = axis_bilinear(points, ops.ones_like(points, dtype="bool"), size)
    index = ops.concatenate([low, high], axis=-1)
    weight = ops.concatenate([w_low, w_high], axis=-1) / float(ratio)
    return ops.minimum(index, size - 1), weight


def roi_align_fixed(images, boxes, image_index, output_size: int, sampling_ratio: int,
                    aligned: bool):
    """Single-channel RoIAlign with a fixed sampling ratio, in `keras.ops` (every backend).

    Args:
        images: [I, H, W] float32 maps.
        boxes: [N, 4] float32 (y1, x1, y2, x2) in map pixels (spatial scale 1).
        image_index: [N] int32, the map each box reads.
        output_size: P; sampling_ratio: S >= 1 samples per bin and axis.
        aligned: the -0.5 pixel shift (True) or torchvision's legacy rule (False).

    Returns:
        [N, P, P] float32: torchvision's RoIAlign, the operations of `ops.roi_align`'s
        "gather" path in its order (one gather of [N, P, 2S, P, 2S] corners, then the row and
        the column weights), hence its numbers on TensorFlow.
    """
    height, width = backend.static_dim(images, 1), backend.static_dim(images, 2)
    num = backend.static_dim(boxes, 0)
    if any(isinstance(n, int) and n == 0 for n in (num, backend.static_dim(images, 0))):
        # statically empty (JAX's take of no rows keeps their shape)
        return ops.zeros((num, output_size, output_size), "float32")
    start_y, extent_y, start_x, extent_x = _roi_extents(boxes, aligned)
    rows, row_w = _fixed_axis_table(start_y, extent_y, output_size, sampling_ratio, height)
    cols, col_w = _fixed_axis_table(start_x, extent_x, output_size, sampling_ratio, width)
    base = ops.cast(image_index, "int32") * (height * width)
    index = (base[:, None, None, None, None] + (rows * width)[:, :, :, None, None]
             + cols[:, None, None, :, :])
    values = ops.take(ops.reshape(images, (-1, 1)), index, axis=0)  # [N, P, 2S, P, 2S, 1]
    values = ops.sum(values * row_w[:, :, :, None, None, None], axis=2)  # [N, P, P, 2S, 1]
    return ops.sum(values * col_w[:, None, :, :, None], axis=3)[..., 0]


@no_autograph
def masks_to_mini_masks(masks, boxes, size: int):
    """Crops full-image instance masks to their boxes and resizes them to ``size x size``.

    ``mini[g, i, j]`` is the bilinear value of ``masks[g]`` at ``y = y1 + (i + 0.5) * h / size
    - 0.5``, ``x = x1 + (j + 0.5) * w / size - 0.5`` (the centre of mini cell (i, j) in
    pixel-index coordinates): RoIAlign with aligned=True and one sample per bin, so that it is
    consistent with `crop_mask_targets`. No thresholding. Every backend.

    Args:
        masks: [G, h, w] uint8 / bool / float instance masks (0 / 1).
        boxes: [G, 4] float32 (y1, x1, y2, x2) in the masks' pixels.
        size: M, the mini-mask size.

    Returns:
        [G, M, M] float32 in [0, 1]; G may be 0.
    """
    size = _check_size(size, "size")
    masks = _check_rank(masks, 3, "masks", "[G, h, w]")
    boxes = _check_rank(boxes, 2, "boxes", "[G, 4]")
    masks = ops.cast(masks, "float32")
    num = backend.static_dim(masks, 0)
    return roi_align_fixed(masks, ops.cast(boxes, "float32"), ops.arange(num, dtype="int32"),
                           size, sampling_ratio=1, aligned=True)


@no_autograph
def crop_mask_targets(gt_masks, gt_boxes, rois, matched_gt, output_size: int = 28):
    """Binary mask-head targets: each RoI's matched mini mask resampled at the RoI.

    The RoI is mapped into the matched ground truth's mini-mask frame (``u = (y - gy1) * M /
    gh``, likewise for x) and read with RoIAlign (aligned=True, sampling_ratio=2) at
    ``output_size``, then thresholded at >= 0.5. The mini mask is zero-padded by one cell
    first: outside its box an instance mask is 0, so the target fades to 0 across the box edge
    (RoIAlign alone would clamp to the edge cell up to half a cell past the box). Every
    backend (`roi_align_fixed`: TensorFlow's numbers of `ops.roi_align`, bit for bit).

    Args:
        gt_masks: [B, G, M, M] float32 mini masks.
        gt_boxes: [B, G, 4] float32 (y1, x1, y2, x2) in input pixels.
        rois: [B, R, 4] float32 (y1, x1, y2, x2) in input pixels.
        matched_gt: [B, R] int32 index of the ground truth matched to each RoI; clipped to
            [0, G - 1] (targets of unmatched RoIs are meaningless: mask them in the loss).
            G must be >= 1.
        output_size: the target size (28).

    Returns:
        [B, R, output_size, output_size] float32 in {0, 1}. A zero-size ground-truth box
        (padding) gives finite values (no NaN).
    """
    output_size = _check_size(output_size, "output_size")
    gt_masks = _check_rank(gt_masks, 4, "gt_masks", "[B, G, M, M]")
    gt_boxes = _check_rank(gt_boxes, 3, "gt_boxes", "[B, G, 4]")
    rois = _check_rank(rois, 3, "rois", "[B, R, 4]")
    matched_gt = _check_rank(matched_gt, 2, "matched_gt", "[B, R]")
    gt_masks = ops.cast(gt_masks, "float32")
    gt_boxes = ops.cast(gt_boxes, "float32")
    rois = ops.cast(rois, "float32")

    batch, num_gt = backend.static_dim(gt_masks, 0), backend.static_dim(gt_masks, 1)
    mask_h, mask_w = backend.static_dim(gt_masks, 2), backend.static_dim(gt_masks, 3)
    matched = ops.clip(ops.cast(matched_gt, "int32"), 0, num_gt - 1)
    gt = _take_rows(gt_boxes, matched)  # [B, R, 4]
    gy1, gx1, gy2, gx2 = gt[..., 0], gt[..., 1], gt[..., 2], gt[..., 3]
    ry1, rx1, ry2, rx2 = rois[..., 0], rois[..., 1], rois[..., 2], rois[..., 3]
    gh, gw = gy2 - gy1, gx2 - gx1
    # cells per pixel; a degenerate box maps with 1 to stay finite (its mask is empty anyway)
    sy = ops.cast(mask_h, "float32") / ops.where(gh > 0.0, gh, 1.0)
    sx = ops.cast(mask_w, "float32") / ops.where(gw > 0.0, gw, 1.0)
    # +1: the frame of the zero-padded mini mask
    mapped = ops.stack(
        [
            (ry1 - gy1) * sy + 1.0,
            (rx1 - gx1) * sx + 1.0,
            (ry2 - gy1) * sy + 1.0,
            (rx2 - gx1) * sx + 1.0,
        ],
        axis=-1,
    )
    padded = ops.pad(ops.reshape(gt_masks, (-1, mask_h, mask_w)), [[0, 0], [1, 1], [1, 1]])
    image = ops.arange(batch, dtype="int32")[:, None] * num_gt + matched  # [B, R]
    pooled = roi_align_fixed(padded, ops.reshape(mapped, (-1, 4)), ops.reshape(image, (-1,)),
                             output_size, sampling_ratio=2, aligned=True)
    targets = ops.cast(pooled >= 0.5, "float32")
    num_rois = backend.static_dim(rois, 1)
    return ops.reshape(targets, (backend.static_dim(rois, 0), num_rois, output_size, output_size))


MASK_TARGET_RULES = ("detectron2", "torchvision")


def extend_mask_edges(masks, image_shape):
    """Canvas masks whose row h' and column w' repeat row h' - 1 and column w' - 1.

    RoIAlign on an image-sized map (torchvision's masks are `[h', w']`) snaps reads in
    `(h' - 1, h']` to the last row; on the zero-padded canvas the same points would blend in
    the padding. Repeating the edge row / column once makes the canvas read what the image-sized
    map reads, for every point up to h' (x likewise); rows and columns past the canvas are
    not added (the canvas then ends at the image and snaps by itself). Every backend.

    Args:
        masks: [B, G, H, W] float32 canvas masks (the image top-left, zeros elsewhere).
        image_shape: [B, 2] float32 (h', w') of each image inside the canvas.

    Returns:
        [B, G, H, W] float32.
    """
    size = ops.cast(ops.round(ops.cast(image_shape, "float32")), "int32")
    height, width = size[:, 0], size[:, 1]
    shape = tuple(backend.static_dim(masks, axis) for axis in range(4))
    rows = ops.broadcast_to(ops.maximum(height - 1, 0)[:, None, None, None],
                            (shape[0], shape[1], 1, shape[3]))
    last_row = ops.take_along_axis(masks, rows, axis=2)  # [B, G, 1, W]
    at_row = ops.arange(shape[2], dtype="int32")[None, :] == height[:, None]  # [B, H]
    masks = ops.where(at_row[:, None, :, None], last_row, masks)
    cols = ops.broadcast_to(ops.maximum(width - 1, 0)[:, None, None, None],
                            (shape[0], shape[1], shape[2], 1))
    last_col = ops.take_along_axis(masks, cols, axis=3)  # [B, G, H, 1]
    at_col = ops.arange(shape[3], dtype="int32")[None, :] == width[:, None]  # [B, W]
    return ops.where(at_col[:, None, None, :], last_col, masks)


def _check_project_args(gt_masks, rois, matched_gt, output_size, image_shape):
    output_size = _check_size(output_size, "output_size")
    gt_masks = _check_rank(gt_masks, 4, "gt_masks", "[B, G, H, W]")
    rois = _check_rank(rois, 3, "rois", "[B, R, 4]")
    matched_gt = _check_rank(matched_gt, 2, "matched_gt", "[B, R]")
    masks = ops.cast(gt_masks, "float32")
    if image_shape is not None:
        masks = extend_mask_edges(masks, image_shape)
    num_gt = backend.static_dim(masks, 1)
    matched = ops.clip(ops.cast(matched_gt, "int32"), 0, num_gt - 1)
    batch = backend.static_dim(masks, 0)
    image = ops.arange(batch, dtype="int32")[:, None] * num_gt + matched  # [B, R]
    return masks, ops.cast(rois, "float32"), ops.reshape(image, (-1,)), output_size


@no_autograph
def project_masks(gt_masks, rois, matched_gt, output_size: int = 28, image_shape=None):
    """Soft mask-head targets as torchvision makes them (`project_masks_on_boxes`).

    Each RoI's matched full-resolution binary mask is read with RoIAlign at the RoI: spatial
    scale 1, aligned=False (no half-pixel shift, RoI sides clamped to >= 1 pixel), adaptive
    sampling ratio (`ceil(roi_side / output_size)` samples per bin and axis), no threshold.
    TensorFlow: `ops.roi_align` (the "gather" path, its static formulation under XLA); other
    backends: `project_masks_portable` (the same values to float rounding).

    Args:
        gt_masks: [B, G, H, W] canvas masks (uint8 / bool / float, 0 / 1) in input pixels: each
            image's resized masks top-left, zeros elsewhere.
        rois: [B, R, 4] float32 (y1, x1, y2, x2) in input pixels.
        matched_gt: [B, R] int32 ground truth of each RoI, clipped to [0, G - 1]. G >= 1.
        output_size: the target size (28).
        image_shape: optional [B, 2] float32 (h', w'): torchvision's masks end at the image,
            where RoIAlign snaps to the edge instead of reading the canvas padding
            (`extend_mask_edges`). None: the canvas is the image. One case stays apart: an
            RoI less than one pixel tall (wide) within a pixel of the image's bottom (right)
            edge, whose clamped side reaches past h' (w'), where torchvision reads 0.

    Returns:
        [B, R, output_size, output_size] float32 in [0, 1].
    """
    if not backend.is_tensorflow():
        return project_masks_portable(gt_masks, rois, matched_gt, output_size, image_shape)
    from keras_maskrcnn.ops.roi_align_ops import roi_align

    tf = backend.tensorflow()
    masks, boxes, image, output_size = _check_project_args(gt_masks, rois, matched_gt,
                                                           output_size, image_shape)
    shape = tf.shape(masks)
    pooled = roi_align(
        tf.reshape(masks, [-1, shape[2], shape[3], 1]),
        tf.reshape(boxes, [-1, 4]),
        image,
        output_size,
        spatial_scale=1.0,
        sampling_ratio=0,
        aligned=False,
        implementation="gather",
    )
    rois_shape = tf.shape(boxes)
    return tf.reshape(pooled[..., 0], [rois_shape[0], rois_shape[1], output_size, output_size])


def _adaptive_counts(extent, pooled: int):
    """Samples per bin along one axis, ceil(extent / pooled), [N] int32 (0 for non-positive or
    non-finite extents, which sample nothing)."""
    count = ops.ceil(extent / float(pooled))
    finite = ops.logical_and(count > 0.0, ops.isfinite(count))
    return ops.cast(ops.where(finite, count, 0.0), "int32")


def _step_axis(start, extent, pooled: int, count, step, size):
    """Rows (low, high) [N, pooled] int32 and their weights (1 / count included) of sample
    `step` of every bin along one axis (0 weights where step >= count)."""
    bin_size = (extent / float(pooled))[:, None]
    divisor = ops.cast(ops.maximum(count, 1), "float32")[:, None]
    bins = ops.arange(pooled, dtype="float32")[None, :]
    offset = ops.cast(step, "float32") + 0.5
    points = start[:, None] + bins * bin_size + offset * bin_size / divisor
    used = ops.broadcast_to((step < count)[:, None], ops.shape(points))
    low, high, w_low, w_high = axis_bilinear(points, used, size)
    return ops.minimum(low, size - 1), ops.minimum(high, size - 1), w_low / divisor, \
        w_high / divisor


@no_autograph
def project_masks_portable(gt_masks, rois, matched_gt, output_size: int = 28, image_shape=None):
    """`project_masks` in `keras.ops` with static shapes (every backend; JAX and PyTorch use it).

    Separable RoIAlign with the adaptive ratio: a loop over the sample steps t < max S (S per
    box and axis, ``ceil(side / output_size)``) adds, for every bin, the two bilinear rows of
    row sample t (gathered from the RoI's own mask, [N, P, W]) and the two column weights of
    column sample t (a dense [N, P, W] table); the result is their product summed over columns.
    Memory: a few [N, P, W] tensors, whatever the sample counts. Same arguments and result as
    `project_masks`, equal to its TensorFlow path to float rounding (the sums run in another
    order).
    """
    masks, boxes, image, output_size = _check_project_args(gt_masks, rois, matched_gt,
                                                           output_size, image_shape)
    height, width = backend.static_dim(masks, 2), backend.static_dim(masks, 3)
    rows_table = ops.reshape(masks, (-1, width))  # [B * G * H, W]
    flat_boxes = ops.reshape(boxes, (-1, 4))
    num = backend.static_dim(flat_boxes, 0)
    start_y, extent_y, start_x, extent_x = _roi_extents(flat_boxes, aligned=False)
    count_y = _adaptive_counts(extent_y, output_size)
    count_x = _adaptive_counts(extent_x, output_size)
    steps = ops.maximum(ops.maximum(ops.max(count_y, initial=0), ops.max(count_x, initial=0)), 1)
    first_row = (image * height)[:, None]  # [N, 1]

    def body(step, carry):
        rows_sum, col_weights = carry
        low, high, w_low, w_high = _step_axis(start_y, extent_y, output_size, count_y, step,
                                              height)
        rows_sum = (rows_sum + ops.take(rows_table, first_row + low, axis=0) * w_low[..., None]
                    + ops.take(rows_table, first_row + high, axis=0) * w_high[..., None])
        low, high, w_low, w_high = _step_axis(start_x, extent_x, output_size, count_x, step,
                                              width)
        col_weights = (col_weights + ops.one_hot(low, width, dtype="float32") * w_low[..., None]
                       + ops.one_hot(high, width, dtype="float32") * w_high[..., None])
        return rows_sum, col_weights

    zeros = ops.zeros((num, output_size, width), "float32")
    rows_sum, col_weights = ops.fori_loop(0, steps, body, (zeros, zeros))
    pooled = ops.einsum("npw,nqw->npq", rows_sum, col_weights)
    return ops.reshape(pooled, (backend.static_dim(boxes, 0), backend.static_dim(boxes, 1),
                                output_size, output_size))


# --------------------------------------------------------------------------- TensorFlow only


def nearest_indices(in_size, out_size):
    """TensorFlow only (the tf.data pipeline): [out_size] int32 source rows of torch's legacy
    "nearest" resize (`F.interpolate` without a scale factor): `min(floor(i * float32(in /
    out)), in - 1)`, in float32."""
    tf = backend.tensorflow()
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    index = tf.cast(tf.floor(tf.cast(tf.range(out_size), tf.float32) * scale), tf.int32)
    return tf.minimum(index, tf.cast(in_size, tf.int32) - 1)


def resize_masks_nearest(masks, size):
    """TensorFlow only (the tf.data pipeline, whatever the Keras backend): instance masks
    `[G, h, w]` resized to `size` (h', w') as torchvision's detection transform resizes target
    masks (nearest, no half-pixel offset); dtype kept."""
    tf = backend.tensorflow()
    masks = tf.convert_to_tensor(masks)
    if masks.shape.rank is not None and masks.shape.rank != 3:
        raise ValueError(f"`masks` must have shape [G, h, w], got {masks.shape}")
    shape = tf.shape(masks)
    size = tf.cast(size, tf.int32)
    rows = nearest_indices(shape[1], size[0])
    cols = nearest_indices(shape[2], size[1])
    return tf.gather(tf.gather(masks, rows, axis=1), cols, axis=2)
