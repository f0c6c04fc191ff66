"""Mask ops: mini masks, mask-head targets, and pasting predicted masks into the image.

Mask-head targets follow one of two rules (config `mask_target_rule`): "detectron2"
(`crop_mask_targets`: the mini mask resampled half-pixel aligned, thresholded at 0.5) or
"torchvision" (`project_masks`: the full-resolution mask resampled with aligned=False, soft).

Ground-truth "mini masks" (docs/CONVENTIONS.md): instance ``g`` is stored as an ``M x M`` float
grid covering its box; cell ``i`` spans box rows ``y1 + i * h / M .. y1 + (i + 1) * h / M`` and
holds the full mask's bilinear value at the cell centre (pixel-centre convention: pixel ``r``
covers ``[r, r + 1)``). Mask targets resample the mini mask at an RoI with RoIAlign.

Pasting follows Detectron2 (``method="exact"``, a bilinear ``grid_sample`` of the mask at every
image pixel centre) or torchvision (``method="torchvision"``, resize into an integer box).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_maskrcnn.ops.roi_align_ops import roi_align
from keras_maskrcnn.ops.roi_common import no_autograph

# --------------------------------------------------------------------------- TensorFlow


def _check_rank(tensor: tf.Tensor, rank: int, name: str, shape: str) -> tf.Tensor:
    tensor = tf.convert_to_tensor(tensor)
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise ValueError(f"`{name}` must have shape {shape}, got {tensor.shape}")
    return tensor


def _check_size(size: int, name: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"`{name}` must be a positive int, got {size!r}")
    return size


@no_autograph
def masks_to_mini_masks(masks: tf.Tensor, boxes: tf.Tensor, size: int) -> tf.Tensor:
    """Crops full-image instance masks to their boxes and resizes them to ``size x size``.

    ``mini[g, i, j]`` is the bilinear value of ``masks[g]`` at ``y = y1 + (i + 0.5) * h / size
    - 0.5``, ``x = x1 + (j + 0.5) * w / size - 0.5`` (the centre of mini cell (i, j) in
    pixel-index coordinates): RoIAlign with aligned=True and one sample per bin, so that it is
    consistent with `crop_mask_targets`. No thresholding.

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
    masks = tf.cast(masks, tf.float32)
    num = tf.shape(masks)[0]
    mini = roi_align(
        masks[..., None],
        tf.cast(boxes, tf.float32),
        tf.range(num, dtype=tf.int32),
        size,
        spatial_scale=1.0,
        sampling_ratio=1,
        aligned=True,
        implementation="gather",
    )
    return mini[..., 0]


@no_autograph
def crop_mask_targets(
    gt_masks: tf.Tensor,
    gt_boxes: tf.Tensor,
    rois: tf.Tensor,
    matched_gt: tf.Tensor,
    output_size: int = 28,
) -> tf.Tensor:
    """Binary mask-head targets: each RoI's matched mini mask resampled at the RoI.

    The RoI is mapped into the matched ground truth's mini-mask frame (``u = (y - gy1) * M /
    gh``, likewise for x) and read with RoIAlign (aligned=True, sampling_ratio=2) at
    ``output_size``, then thresholded at >= 0.5. The mini mask is zero-padded by one cell
    first: outside its box an instance mask is 0, so the target fades to 0 across the box edge
    (RoIAlign alone would clamp to the edge cell up to half a cell past the box).

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
    gt_masks = tf.cast(gt_masks, tf.float32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    rois = tf.cast(rois, tf.float32)

    shape = tf.shape(gt_masks)
    batch, num_gt, mask_h, mask_w = shape[0], shape[1], shape[2], shape[3]
    matched = tf.clip_by_value(tf.cast(matched_gt, tf.int32), 0, num_gt - 1)
    gt = tf.gather(gt_boxes, matched, batch_dims=1)  # [B, R, 4]
    gy1, gx1, gy2, gx2 = tf.unstack(gt, num=4, axis=-1)
    ry1, rx1, ry2, rx2 = tf.unstack(rois, num=4, axis=-1)
    gh, gw = gy2 - gy1, gx2 - gx1
    # cells per pixel; a degenerate box maps with 1 to stay finite (its mask is empty anyway)
    sy = tf.cast(mask_h, tf.float32) / tf.where(gh > 0.0, gh, 1.0)
    sx = tf.cast(mask_w, tf.float32) / tf.where(gw > 0.0, gw, 1.0)
    # +1: the frame of the zero-padded mini mask
    mapped = tf.stack(
        [
            (ry1 - gy1) * sy + 1.0,
            (rx1 - gx1) * sx + 1.0,
            (ry2 - gy1) * sy + 1.0,
            (rx2 - gx1) * sx + 1.0,
        ],
        axis=-1,
    )
    padded = tf.pad(tf.reshape(gt_masks, [-1, mask_h, mask_w, 1]), [[0, 0], [1, 1], [1, 1], [0, 0]])
    image = tf.range(batch, dtype=tf.int32)[:, None] * num_gt + matched  # [B, R]
    pooled = roi_align(
        padded,
        tf.reshape(mapped, [-1, 4]),
        tf.reshape(image, [-1]),
        output_size,
        spatial_scale=1.0,
        sampling_ratio=2,
        aligned=True,
        implementation="gather",
    )
    targets = tf.cast(pooled[..., 0] >= 0.5, tf.float32)
    rois_shape = tf.shape(rois)
    return tf.reshape(targets, [rois_shape[0], rois_shape[1], output_size, output_size])


MASK_TARGET_RULES = ("detectron2", "torchvision")


def extend_mask_edges(masks: tf.Tensor, image_shape: tf.Tensor) -> tf.Tensor:
    """Canvas masks whose row h' and column w' repeat row h' - 1 and column w' - 1.

    RoIAlign on an image-sized map (torchvision's masks are `[h', w']`) snaps reads in
    `(h' - 1, h']` to the last row; on the zero-padded canvas the same points would blend in
    the padding. Repeating the edge row / column once makes the canvas read what the image-sized
    map reads, for every point up to h' (x likewise); rows and columns past the canvas are
    not added (the canvas then ends at the image and snaps by itself).

    Args:
        masks: [B, G, H, W] float32 canvas masks (the image top-left, zeros elsewhere).
        image_shape: [B, 2] float32 (h', w') of each image inside the canvas.

    Returns:
        [B, G, H, W] float32.
    """
    size = tf.cast(tf.round(image_shape), tf.int32)
    height, width = size[:, 0], size[:, 1]
    last_row = tf.gather(masks, tf.maximum(height - 1, 0), axis=2, batch_dims=1)  # [B, G, W]
    at_row = tf.range(tf.shape(masks)[2])[None, :] == height[:, None]  # [B, H]
    masks = tf.where(at_row[:, None, :, None], last_row[:, :, None, :], masks)
    last_col = tf.gather(masks, tf.maximum(width - 1, 0), axis=3, batch_dims=1)  # [B, G, H]
    at_col = tf.range(tf.shape(masks)[3])[None, :] == width[:, None]  # [B, W]
    return tf.where(at_col[:, None, None, :], last_col[..., None], masks)


@no_autograph
def project_masks(
    gt_masks: tf.Tensor,
    rois: tf.Tensor,
    matched_gt: tf.Tensor,
    output_size: int = 28,
    image_shape: tf.Tensor | None = None,
) -> tf.Tensor:
    """Soft mask-head targets as torchvision makes them (`project_masks_on_boxes`).

    Each RoI's matched full-resolution binary mask is read with RoIAlign at the RoI: spatial
    scale 1, aligned=False (no half-pixel shift, RoI sides clamped to >= 1 pixel), adaptive
    sampling ratio (`ceil(roi_side / output_size)` samples per bin and axis), no threshold.

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
    output_size = _check_size(output_size, "output_size")
    gt_masks = _check_rank(gt_masks, 4, "gt_masks", "[B, G, H, W]")
    rois = _check_rank(rois, 3, "rois", "[B, R, 4]")
    matched_gt = _check_rank(matched_gt, 2, "matched_gt", "[B, R]")
    masks = tf.cast(gt_masks, tf.float32)
    if image_shape is not None:
        masks = extend_mask_edges(masks, tf.cast(image_shape, tf.float32))
    shape = tf.shape(masks)
    batch, num_gt, height, width = shape[0], shape[1], shape[2], shape[3]
    matched = tf.clip_by_value(tf.cast(matched_gt, tf.int32), 0, num_gt - 1)
    image = tf.range(batch, dtype=tf.int32)[:, None] * num_gt + matched  # [B, R]
    pooled = roi_align(
        tf.reshape(masks, [-1, height, width, 1]),
        tf.reshape(tf.cast(rois, tf.float32), [-1, 4]),
        tf.reshape(image, [-1]),
        output_size,
        spatial_scale=1.0,
        sampling_ratio=0,
        aligned=False,
        implementation="gather",
    )
    rois_shape = tf.shape(rois)
    return tf.reshape(pooled[..., 0], [rois_shape[0], rois_shape[1], output_size, output_size])


def nearest_indices(in_size: tf.Tensor, out_size: tf.Tensor) -> tf.Tensor:
    """[out_size] int32 source rows of torch's legacy "nearest" resize (`F.interpolate`
    without a scale factor): `min(floor(i * float32(in / out)), in - 1)`, in float32."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    index = tf.cast(tf.floor(tf.cast(tf.range(out_size), tf.float32) * scale), tf.int32)
    return tf.minimum(index, tf.cast(in_size, tf.int32) - 1)


def resize_masks_nearest(masks: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Instance masks `[G, h, w]` resized to `size` (h', w') as torchvision's detection
    transform resizes target masks (nearest, no half-pixel offset); dtype kept."""
    masks = _check_rank(masks, 3, "masks", "[G, h, w]")
    shape = tf.shape(masks)
    size = tf.cast(size, tf.int32)
    rows = nearest_indices(shape[1], size[0])
    cols = nearest_indices(shape[2], size[1])
    return tf.gather(tf.gather(masks, rows, axis=1), cols, axis=2)


def _grid_weights_tf(start, end, length, count, size):
    """Dense weights [D, count, size] of Detectron2's grid_sample read along one axis."""
    extent = end - start
    ok = extent > 0.0
    centres = tf.range(count, dtype=tf.float32) + 0.5
    grid = (centres[None, :] - start[:, None]) / tf.where(ok, extent, 1.0)[:, None] * 2.0 - 1.0
    coord = ((grid + 1.0) * length - 1.0) / 2.0  # grid_sample, align_corners=False
    coord = tf.clip_by_value(coord, -2.0, length + 1.0)  # far points stay outside, int-safe
    low = tf.math.floor(coord)
    frac = coord - low
    low = tf.cast(low, tf.int32)
    # one_hot of an index outside [0, size) is all zeros: zero padding for free
    weights = tf.one_hot(low, size) * (1.0 - frac)[..., None]
    weights += tf.one_hot(low + 1, size) * frac[..., None]
    return tf.where(ok[:, None, None], weights, 0.0)


@no_autograph
def paste_masks_tf(
    masks: tf.Tensor,
    boxes: tf.Tensor,
    image_shape: Sequence[int] | tf.Tensor,
    threshold: float | None = 0.5,
) -> tf.Tensor:
    """Graph version of `paste_masks` with method="exact" (Detectron2 `_do_paste_mask`).

    Every image pixel centre is read from the mask with zero-padded bilinear sampling; the
    read is separable, so each mask is pasted as ``Wy [h, P] @ mask @ Wx [w, Q]^T`` (one_hot +
    batched matmul: graph, SavedModel and TFLite friendly).

    Args:
        masks: [D, P, Q] float mask probabilities.
        boxes: [D, 4] float32 (y1, x1, y2, x2) in image pixels.
        image_shape: (h, w) as ints (static output shape) or int tensors.
        threshold: None returns the float32 probabilities; otherwise uint8 ``>= threshold``.

    Returns:
        [D, h, w] uint8 (or float32 when threshold is None). Zero-size boxes paste nothing.
    """
    masks = tf.cast(_check_rank(masks, 3, "masks", "[D, P, Q]"), tf.float32)
    boxes = tf.cast(_check_rank(boxes, 2, "boxes", "[D, 4]"), tf.float32)
    height, width = _image_hw_tf(image_shape)
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=-1)
    mask_h = masks.shape[1] if masks.shape[1] is not None else tf.shape(masks)[1]
    mask_w = masks.shape[2] if masks.shape[2] is not None else tf.shape(masks)[2]
    wy = _grid_weights_tf(y1, y2, tf.cast(mask_h, tf.float32), height, mask_h)
    wx = _grid_weights_tf(x1, x2, tf.cast(mask_w, tf.float32), width, mask_w)
    pasted = tf.matmul(tf.matmul(wy, masks), wx, transpose_b=True)
    if threshold is None:
        return pasted
    return tf.cast(pasted >= float(threshold), tf.uint8)


def _image_hw_tf(image_shape):
    if isinstance(image_shape, tf.Tensor):
        image_shape = tf.cast(image_shape, tf.int32)
        return image_shape[0], image_shape[1]
    if len(image_shape) != 2:
        raise ValueError(f"`image_shape` must be (height, width), got {image_shape!r}")
    return image_shape[0], image_shape[1]


# --------------------------------------------------------------------------- numpy pasting


def _grid_weights_np(start: float, end: float, length: int, count: int) -> np.ndarray:
    """[count, length] float32 weights of grid_sample(align_corners=False, zeros padding)."""
    f32 = np.float32
    extent = f32(end) - f32(start)
    weights = np.zeros((count, length), f32)
    if not extent > 0:
        return weights
    centres = np.arange(count, dtype=f32) + f32(0.5)
    grid = (centres - f32(start)) / extent * f32(2) - f32(1)
    coord = ((grid + f32(1)) * f32(length) - f32(1)) / f32(2)
    coord = np.clip(coord, -2.0, length + 1.0).astype(f32)
    low = np.floor(coord)
    frac = (coord - low).astype(f32)
    low = low.astype(np.int64)
    rows = np.arange(count)
    for index, weight in ((low, f32(1) - frac), (low + 1, frac)):
        ok = (index >= 0) & (index < length)
        weights[rows[ok], index[ok]] += weight[ok]
    return weights


def _paste_exact(masks: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    out = np.zeros((len(masks), height, width), np.float32)
    for d, (mask, (y1, x1, y2, x2)) in enumerate(zip(masks, boxes, strict=True)):
        wy = _grid_weights_np(y1, y2, mask.shape[0], height)
        wx = _grid_weights_np(x1, x2, mask.shape[1], width)
        rows = np.flatnonzero(wy.any(axis=1))
        cols = np.flatnonzero(wx.any(axis=1))
        if rows.size and cols.size:  # only the band the mask reaches (contiguous)
            r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            out[d, r0:r1, c0:c1] = wy[r0:r1] @ mask @ wx[c0:c1].T
    return out


def _resize_weights_np(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] float32 weights of F.interpolate(mode="bilinear", align_corners=False)."""
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    src = scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5)
    src = np.maximum(src, f32(0))
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = low + (low < in_size - 1)
    frac = np.clip(src - low.astype(f32), 0, 1).astype(f32)
    weights = np.zeros((out_size, in_size), f32)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, low), f32(1) - frac)
    np.add.at(weights, (rows, high), frac)
    return weights


def _expand_boxes_int(boxes: np.ndarray, scale: np.float32) -> np.ndarray:
    """torchvision `expand_boxes` (float32) then ``.to(int64)`` (truncation toward zero)."""
    y1, x1, y2, x2 = boxes.T
    h_half = (y2 - y1) * np.float32(0.5) * scale
    w_half = (x2 - x1) * np.float32(0.5) * scale
    yc = (y2 + y1) * np.float32(0.5)
    xc = (x2 + x1) * np.float32(0.5)
    expanded = np.stack([yc - h_half, xc - w_half, yc + h_half, xc + w_half], axis=1)
    return np.trunc(expanded).astype(np.int64)


def _paste_torchvision(masks: np.ndarray, boxes: np.ndarray, height: int, width: int):
    out = np.zeros((len(masks), height, width), np.float32)
    size = masks.shape[-1]
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    expanded = _expand_boxes_int(boxes, np.float32((size + 2) / size))
    for d, (y1, x1, y2, x2) in enumerate(expanded):
        box_h = max(int(y2 - y1 + 1), 1)  # torchvision's TO_REMOVE = 1
        box_w = max(int(x2 - x1 + 1), 1)
        r0, r1 = max(y1, 0), min(y2 + 1, height)
        c0, c1 = max(x1, 0), min(x2 + 1, width)
        if r1 <= r0 or c1 <= c0:
            continue
        wy = _resize_weights_np(padded.shape[1], box_h)[r0 - y1 : r1 - y1]
        wx = _resize_weights_np(padded.shape[2], box_w)[c0 - x1 : c1 - x1]
        out[d, r0:r1, c0:c1] = wy @ padded[d] @ wx.T
    return out


def paste_masks(
    masks: np.ndarray,
    boxes: np.ndarray,
    image_shape: Sequence[int],
    threshold: float | None = 0.5,
    method: str = "exact",
) -> np.ndarray:
    """Pastes per-detection mask probabilities into the image (numpy).

    method="exact" (Detectron2 ``paste_masks_in_image``): image pixel (y, x) reads the mask at
    ``v = (y + 0.5 - y1) / (y2 - y1) * P - 0.5`` (likewise x) with bilinear sampling and zeros
    outside the mask (``grid_sample``, align_corners=False), over the whole image (Detectron2's
    CPU path crops to a band around the boxes, which only changes sub-0.5 values); binary
    output is ``>= threshold``.

    method="torchvision" (``paste_masks_in_image`` of torchvision's roi_heads): the mask is
    padded by one zero pixel per side, the box scaled by (P + 2) / P about its centre in
    float32 and truncated toward zero to int64, the padded mask resized (bilinear,
    align_corners=False) to ``(y2 - y1 + 1) x (x2 - x1 + 1)`` pixels (torchvision's legacy +1)
    and placed at rows y1..y2, columns x1..x2, clipped to the image; binary output is
    ``> threshold``, as torchvision's COCO evaluation thresholds (``masks > 0.5``). Boxes
    entirely outside the image paste nothing (torchvision does not handle that case).

    Args:
        masks: [D, P, P] float mask probabilities.
        boxes: [D, 4] (y1, x1, y2, x2) in target-image pixels.
        image_shape: (h, w) of the target image.
        threshold: None returns the float32 probabilities.
        method: "exact" or "torchvision".

    Returns:
        [D, h, w] uint8 in {0, 1} (float32 when threshold is None).
    """
    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float32)
    if masks.ndim != 3:
        raise ValueError(f"`masks` must have shape [D, P, P], got {masks.shape}")
    if boxes.shape != (len(masks), 4):
        raise ValueError(f"`boxes` must have shape [D, 4] with D = {len(masks)}, got {boxes.shape}")
    if len(image_shape) != 2:
        raise ValueError(f"`image_shape` must be (height, width), got {image_shape!r}")
    height, width = int(image_shape[0]), int(image_shape[1])
    if method == "exact":
        pasted = _paste_exact(masks, boxes, height, width)
        return pasted if threshold is None else (pasted >= threshold).astype(np.uint8)
    if method == "torchvision":
        if masks.shape[1] != masks.shape[2]:
            raise ValueError(f"method='torchvision' needs square masks, got {masks.shape[1:]}")
        pasted = _paste_torchvision(masks, boxes, height, width)
        return pasted if threshold is None else (pasted > threshold).astype(np.uint8)
    raise ValueError(f"`method` must be 'exact' or 'torchvision', got {method!r}")
