"""Pasting predicted masks into the image: `paste_masks` (numpy, inference post-processing) and
`paste_masks_tf` (TensorFlow, the SavedModel export's full-image masks).

Pasting follows Detectron2 (``method="exact"``, a bilinear ``grid_sample`` of the mask at every
image pixel centre) or torchvision (``method="torchvision"``, resize into an integer box).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_maskrcnn import backend
from keras_maskrcnn.ops.roi_common import no_autograph


def _grid_weights_tf(start, end, length, count, size):
    """Dense weights [D, count, size] of Detectron2's grid_sample read along one axis."""
    tf = backend.tensorflow()
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
def paste_masks_tf(masks, boxes, image_shape: Sequence[int], threshold: float | None = 0.5):
    """TensorFlow only (SavedModel export): graph version of `paste_masks` with method="exact"
    (Detectron2 `_do_paste_mask`).

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
    tf = backend.tensorflow()
    masks = tf.cast(_check_rank_tf(masks, 3, "masks", "[D, P, Q]"), tf.float32)
    boxes = tf.cast(_check_rank_tf(boxes, 2, "boxes", "[D, 4]"), tf.float32)
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


def _check_rank_tf(tensor, rank: int, name: str, shape: str):
    tf = backend.tensorflow()
    tensor = tf.convert_to_tensor(tensor)
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise ValueError(f"`{name}` must have shape {shape}, got {tensor.shape}")
    return tensor


def _image_hw_tf(image_shape):
    tf = backend.tensorflow()
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
