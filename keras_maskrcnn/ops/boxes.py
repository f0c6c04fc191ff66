"""Box geometry in `keras.ops`: areas, pairwise IoU / IoA, the box coder and clipping.

All boxes are ``(y1, x1, y2, x2)`` float32 in absolute pixels, with no "+1" in widths
(``h = y2 - y1``, ``w = x2 - x1``). Every function accepts any number of leading batch
dimensions ``...`` and runs on every Keras backend (TensorFlow, JAX, PyTorch): inside
``tf.function`` and XLA (``jit_compile=True``), ``jax.jit``, and on torch eager / meta tensors.
On TensorFlow the arithmetic is the one of the former ``tf.*`` code, op for op.

Box-coder deltas are in the order ``(dy, dx, dh, dw)``, matching the box order; weights are
``(wy, wx, wh, ww)``: ``(10, 10, 5, 5)`` for the box head, ``(1, 1, 1, 1)`` for the RPN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

# A tensor of the Keras backend in use (tf.Tensor, jax.Array, torch.Tensor) or array-like input.
Tensor = Any

# log(1000 / 16): the largest dh / dw applied by `decode_boxes` (torchvision, Detectron2).
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)

# Heights / widths are floored at this value in `encode_boxes`, so that degenerate rows
# (e.g. zero-padded ground truth) give large but finite deltas instead of -inf / NaN.
_MIN_SIZE = 1e-6


def is_real_dtype(dtype) -> bool:
    """True for the floating and integer dtypes (not bool, not complex), on any backend."""
    name = keras.backend.standardize_dtype(dtype)
    return name.startswith(("float", "bfloat", "int", "uint"))


def as_float32(x, name: str):
    """`x` as a float32 tensor of the backend; TypeError naming `name` if it is not real."""
    x = ops.convert_to_tensor(x)
    if not is_real_dtype(x.dtype):
        raise TypeError(f"`{name}` must be a real-valued tensor, got dtype "
                        f"{keras.backend.standardize_dtype(x.dtype)}")
    return ops.cast(x, "float32")


def _as_boxes(boxes, name: str):
    """Converts `boxes` to a float32 tensor and checks that its last axis has size 4."""
    boxes = as_float32(boxes, name)
    if len(boxes.shape) < 1 or boxes.shape[-1] not in (None, 4):
        raise ValueError(
            f"`{name}` must have shape [..., 4] (y1, x1, y2, x2), got {tuple(boxes.shape)}"
        )
    return boxes


def _check_weights(weights: Sequence[float]) -> tuple[float, float, float, float]:
    """Validates box-coder weights (wy, wx, wh, ww): four positive numbers."""
    try:
        values = tuple(float(w) for w in weights)
    except TypeError as err:
        raise TypeError(f"`weights` must be 4 numbers (wy, wx, wh, ww), got {weights!r}") from err
    if len(values) != 4 or not all(w > 0 for w in values):
        raise ValueError(f"`weights` must be 4 positive numbers (wy, wx, wh, ww), got {weights!r}")
    return values  # type: ignore[return-value]


def _unstack(x) -> tuple:
    """The four components of `x` [..., 4], each [...]."""
    return x[..., 0], x[..., 1], x[..., 2], x[..., 3]


def _size_and_centre(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (h, w, cy, cx) of `boxes` [..., 4], each [...]; centre = corner + half size."""
    y1, x1, y2, x2 = _unstack(boxes)
    h = y2 - y1
    w = x2 - x1
    return h, w, y1 + 0.5 * h, x1 + 0.5 * w


def box_area(boxes: Tensor) -> Tensor:
    """Areas of boxes.

    Args:
        boxes: `[..., 4]` float32 (y1, x1, y2, x2) in pixels.

    Returns:
        `[...]` float32, `(y2 - y1) * (x2 - x1)` (not clamped: inverted boxes give
        negative or positive garbage, as in torchvision).
    """
    boxes = _as_boxes(boxes, "boxes")
    y1, x1, y2, x2 = _unstack(boxes)
    return (y2 - y1) * (x2 - x1)


def _pairwise_intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection areas `[..., N, M]` of boxes1 `[..., N, 4]` and boxes2 `[..., M, 4]`."""
    a = boxes1[..., :, None, :]
    b = boxes2[..., None, :, :]
    top_left = ops.maximum(a[..., :2], b[..., :2])
    bottom_right = ops.minimum(a[..., 2:], b[..., 2:])
    extent = ops.maximum(bottom_right - top_left, 0.0)
    return extent[..., 0] * extent[..., 1]


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator where denominator > 0, else 0; gradients stay finite."""
    positive = denominator > 0.0
    safe = ops.where(positive, denominator, ops.ones_like(denominator))
    return ops.where(positive, numerator / safe, ops.zeros_like(numerator))


def _check_pair(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    boxes1 = _as_boxes(boxes1, "boxes1")
    boxes2 = _as_boxes(boxes2, "boxes2")
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if len(boxes.shape) < 2:
            raise ValueError(f"`{name}` must have shape [..., N, 4], got {tuple(boxes.shape)}")
    return boxes1, boxes2


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of boxes.

    Args:
        boxes1: `[..., N, 4]` float32 (y1, x1, y2, x2) in pixels.
        boxes2: `[..., M, 4]` float32, same leading dims as `boxes1` (or broadcastable).

    Returns:
        `[..., N, M]` float32 IoU in [0, 1]; 0 where the union is 0 (two empty boxes).
    """
    boxes1, boxes2 = _check_pair(boxes1, boxes2)
    inter = _pairwise_intersection(boxes1, boxes2)
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - inter
    return _safe_divide(inter, union)


def pairwise_ioa(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over the area of `boxes1` for every pair (e.g. anchor inside crowd box).

    Args:
        boxes1: `[..., N, 4]` float32 (y1, x1, y2, x2) in pixels; the denominators.
        boxes2: `[..., M, 4]` float32, same leading dims as `boxes1` (or broadcastable).

    Returns:
        `[..., N, M]` float32 in [0, 1]; 0 where `boxes1` has zero (or negative) area.
    """
    boxes1, boxes2 = _check_pair(boxes1, boxes2)
    inter = _pairwise_intersection(boxes1, boxes2)
    return _safe_divide(inter, box_area(boxes1)[..., :, None])


def encode_boxes(
    boxes: Tensor,
    anchors: Tensor,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> Tensor:
    """Regression targets that turn `anchors` into `boxes`.

    dy = wy * (cy - cya) / ha, dx = wx * (cx - cxa) / wa, dh = wh * log(h / ha),
    dw = ww * log(w / wa), with centres c = y1 + 0.5 * h (torchvision / Detectron2 coder).
    Heights and widths are floored at 1e-6 pixels so degenerate rows stay finite.

    Args:
        boxes: `[..., 4]` float32 (y1, x1, y2, x2) target boxes in pixels.
        anchors: `[..., 4]` float32 reference boxes, broadcastable against `boxes`.
        weights: (wy, wx, wh, ww), positive.

    Returns:
        `[..., 4]` float32 deltas (dy, dx, dh, dw).
    """
    wy, wx, wh, ww = _check_weights(weights)
    boxes = _as_boxes(boxes, "boxes")
    anchors = _as_boxes(anchors, "anchors")
    h, w, cy, cx = _size_and_centre(boxes)
    ha, wa, cya, cxa = _size_and_centre(anchors)
    h, w = ops.maximum(h, _MIN_SIZE), ops.maximum(w, _MIN_SIZE)
    ha, wa = ops.maximum(ha, _MIN_SIZE), ops.maximum(wa, _MIN_SIZE)
    dy = wy * (cy - cya) / ha
    dx = wx * (cx - cxa) / wa
    dh = wh * ops.log(h / ha)
    dw = ww * ops.log(w / wa)
    return ops.stack([dy, dx, dh, dw], axis=-1)


def decode_boxes(
    deltas: Tensor,
    anchors: Tensor,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> Tensor:
    """Applies deltas to anchors: the inverse of `encode_boxes`.

    dh / wh and dw / ww are clamped from above at `scale_clamp` before `exp` (as torchvision
    and Detectron2 do), so boxes grow at most 1000/16 times.

    Args:
        deltas: `[..., 4]` float32 (dy, dx, dh, dw).
        anchors: `[..., 4]` float32 (y1, x1, y2, x2) in pixels, broadcastable against `deltas`
            (e.g. `[R, 1, 4]` anchors with `[R, K, 4]` class-specific deltas).
        weights: (wy, wx, wh, ww) used when encoding, positive.
        scale_clamp: upper bound of the unweighted dh and dw.

    Returns:
        `[..., 4]` float32 boxes (y1, x1, y2, x2) in pixels, not clipped.
    """
    wy, wx, wh, ww = _check_weights(weights)
    deltas = _as_boxes(deltas, "deltas")
    anchors = _as_boxes(anchors, "anchors")
    ha, wa, cya, cxa = _size_and_centre(anchors)
    dy, dx, dh, dw = _unstack(deltas)
    dh = ops.minimum(dh / wh, scale_clamp)
    dw = ops.minimum(dw / ww, scale_clamp)
    cy = dy / wy * ha + cya
    cx = dx / wx * wa + cxa
    half_h = 0.5 * ops.exp(dh) * ha
    half_w = 0.5 * ops.exp(dw) * wa
    return ops.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)


def _image_bounds(image_shape, boxes_rank: int):
    """Turns (h, w) `[2]` or `[..., 2]` into upper bounds (h, w, h, w) broadcastable to boxes."""
    image_shape = ops.cast(ops.convert_to_tensor(image_shape), "float32")
    rank = len(image_shape.shape)
    if rank == 0 or image_shape.shape[-1] not in (None, 2):
        raise ValueError(
            f"`image_shape` must have shape [2] or [..., 2] (height, width), "
            f"got {tuple(image_shape.shape)}"
        )
    if rank == boxes_rank - 1:
        image_shape = image_shape[..., None, :]  # insert the N axis: [B, 2] -> [B, 1, 2]
    elif rank != 1 and rank != boxes_rank:
        raise ValueError(
            f"`image_shape` of rank {rank} does not match boxes of rank {boxes_rank}: expected "
            f"[2], the leading dims of boxes without the N axis plus 2 (e.g. [B, 2] for "
            f"boxes [B, N, 4]), or a shape of the same rank as boxes"
        )
    return ops.concatenate([image_shape, image_shape], axis=-1)


def clip_boxes(boxes: Tensor, image_shape: Tensor) -> Tensor:
    """Clamps y to [0, h] and x to [0, w].

    Args:
        boxes: `[..., N, 4]` float32 (y1, x1, y2, x2) in pixels.
        image_shape: (height, width) in pixels, one of:
            `[2]` for all boxes; `[..., 2]` with the leading dims of `boxes` minus the N axis
            (e.g. `[B, 2]` for boxes `[B, N, 4]`, `[2]` for boxes `[N, 4]`); or a shape of the
            same rank as `boxes` that broadcasts against it (e.g. `[B, 1, 2]`).

    Returns:
        `[..., N, 4]` float32 clipped boxes.
    """
    boxes = _as_boxes(boxes, "boxes")
    upper = _image_bounds(image_shape, len(boxes.shape))
    return ops.minimum(ops.maximum(boxes, 0.0), upper)
