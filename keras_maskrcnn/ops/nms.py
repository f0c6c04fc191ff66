"""Greedy non-maximum suppression with fixed-size (padded) outputs.

Built on the ``NonMaxSuppressionV4`` op: it has CPU, GPU and XLA kernels and converts to the
TFLite builtin ``NON_MAX_SUPPRESSION_V4``. (``tf.image.non_max_suppression_padded`` is not
used: in TF 2.21 it runs a tiled pure-TF algorithm that suppresses at IoU >= threshold and
drops boxes whose coordinates are all <= 0.)

Semantics (the same as ``torchvision.ops.nms``):

- candidates are the boxes with ``score > score_threshold`` (strictly), visited by
  descending score; ties go to the lower index on CPU / GPU (unspecified under XLA);
- a candidate is dropped when its IoU with an already kept box is ``> iou_threshold``
  (strictly: IoU exactly at the threshold does not suppress);
- boxes are ``(y1, x1, y2, x2)``; a box with zero area neither suppresses nor is suppressed.

Outputs are ``max_output_size`` indices, the first ``num_valid`` of them valid in order of
descending score; the rest are 0 (callers must use ``num_valid``, not the padding).

Marking invalid entries: give them a score ``<= score_threshold``; with the default
``score_threshold=-inf`` use a score of ``-inf`` (never selected on any backend). Keep valid
scores finite (the kernels differ on NaN).
"""

from __future__ import annotations

import numbers

import tensorflow as tf

_NEG_INF = float("-inf")


def _check_params(
    max_output_size: int, iou_threshold: float, score_threshold: float
) -> tuple[int, float, float]:
    if not isinstance(max_output_size, numbers.Integral) or isinstance(max_output_size, bool):
        raise TypeError(f"`max_output_size` must be a Python int, got {max_output_size!r}")
    if max_output_size < 1:
        raise ValueError(f"`max_output_size` must be >= 1, got {max_output_size}")
    if not isinstance(iou_threshold, numbers.Real) or not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"`iou_threshold` must be a number in [0, 1], got {iou_threshold!r}")
    if not isinstance(score_threshold, numbers.Real) or score_threshold != score_threshold:
        raise ValueError(f"`score_threshold` must be a number (not NaN), got {score_threshold!r}")
    return int(max_output_size), float(iou_threshold), float(score_threshold)


def _as_float(x: tf.Tensor, name: str, expected: str) -> tf.Tensor:
    """Casts `x` to float32 and checks its static shape against `expected`, e.g. "[B, N, 4]"."""
    dims = expected.strip("[]").split(", ")
    rank, last_dim = len(dims), int(dims[-1]) if dims[-1].isdigit() else None
    x = tf.convert_to_tensor(x)
    if not (x.dtype.is_floating or x.dtype.is_integer):
        raise TypeError(f"`{name}` must be real-valued, got dtype {x.dtype.name}")
    x = tf.cast(x, tf.float32)
    shape = x.shape
    if shape.rank is not None and (
        shape.rank != rank or (last_dim is not None and shape[-1] not in (None, last_dim))
    ):
        raise ValueError(f"`{name}` must have shape {expected}, got {shape}")
    return x


def _pad_candidates(
    boxes: tf.Tensor, scores: tf.Tensor, min_boxes: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pads boxes [N, 4] / scores [N] to at least `min_boxes` rows with zero boxes scored -inf.

    The XLA kernel fails when N < max_output_size and crashes when N == 0; padded rows are
    never candidates (-inf is not > any threshold).
    """
    num = boxes.shape[0]
    if num is not None:
        pad = max(min_boxes - num, 0)
        if pad == 0:
            return boxes, scores
    else:
        pad = tf.maximum(min_boxes - tf.shape(boxes)[0], 0)
    boxes = tf.pad(boxes, [[0, pad], [0, 0]])
    scores = tf.pad(scores, [[0, pad]], constant_values=_NEG_INF)
    return boxes, scores


def _nms_single(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    max_output_size: int,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[tf.Tensor, tf.Tensor]:
    """NMS on validated float32 boxes [N, 4] and scores [N]."""
    boxes, scores = _pad_candidates(boxes, scores, max_output_size)
    indices, num_valid = tf.raw_ops.NonMaxSuppressionV4(
        boxes=boxes,
        scores=scores,
        max_output_size=tf.constant(max_output_size, tf.int32),
        iou_threshold=tf.constant(iou_threshold, tf.float32),
        score_threshold=tf.constant(score_threshold, tf.float32),
        pad_to_max_output_size=True,
    )
    indices = tf.ensure_shape(indices, [max_output_size])
    # Kernels differ in what they pad with (CPU: 0, XLA: leftover indices); make it 0.
    indices = tf.where(tf.range(max_output_size) < num_valid, indices, tf.zeros_like(indices))
    return indices, tf.ensure_shape(num_valid, [])


def nms_padded(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    max_output_size: int,
    iou_threshold: float,
    score_threshold: float = _NEG_INF,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Greedy NMS of one set of boxes (see the module docstring for the exact semantics).

    Args:
        boxes: `[N, 4]` float32 (y1, x1, y2, x2); N may be 0 or smaller than
            `max_output_size`.
        scores: `[N]` float32; entries `<= score_threshold` are never selected.
        max_output_size: Python int >= 1, the (static) output length.
        iou_threshold: in [0, 1]; a box is suppressed by a kept box when IoU > threshold.
        score_threshold: boxes need a score strictly greater than this.

    Returns:
        indices: `[max_output_size]` int32 into `boxes`, by descending score; entries at and
            after `num_valid` are 0.
        num_valid: scalar int32, the number of kept boxes.
    """
    max_output_size, iou_threshold, score_threshold = _check_params(
        max_output_size, iou_threshold, score_threshold
    )
    boxes = _as_float(boxes, "boxes", "[N, 4]")
    scores = _as_float(scores, "scores", "[N]")
    return _nms_single(boxes, scores, max_output_size, iou_threshold, score_threshold)


def _check_batched(boxes: tf.Tensor, scores: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    boxes = _as_float(boxes, "boxes", "[B, N, 4]")
    scores = _as_float(scores, "scores", "[B, N]")
    if not boxes.shape[:2].is_compatible_with(scores.shape):
        raise ValueError(
            f"`boxes` [B, N, 4] and `scores` [B, N] disagree: {boxes.shape} vs {scores.shape}"
        )
    return boxes, scores


def _map_nms(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    max_output_size: int,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Runs `_nms_single` on every image of validated boxes [B, N, 4] / scores [B, N]."""

    def per_image(args: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        return _nms_single(args[0], args[1], max_output_size, iou_threshold, score_threshold)

    return tf.map_fn(
        per_image,
        (boxes, scores),
        fn_output_signature=(
            tf.TensorSpec([max_output_size], tf.int32),
            tf.TensorSpec([], tf.int32),
        ),
    )


def batched_nms_padded(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    max_output_size: int,
    iou_threshold: float,
    score_threshold: float = _NEG_INF,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Greedy NMS of each image of a batch independently (`tf.map_fn`; B may be dynamic).

    Args:
        boxes: `[B, N, 4]` float32 (y1, x1, y2, x2).
        scores: `[B, N]` float32; entries `<= score_threshold` are never selected.
        max_output_size: Python int >= 1, kept boxes per image at most.
        iou_threshold: in [0, 1]; suppression when IoU > threshold.
        score_threshold: boxes need a score strictly greater than this.

    Returns:
        indices: `[B, max_output_size]` int32 into the N axis, 0 from `num_valid[b]` on.
        num_valid: `[B]` int32.
    """
    max_output_size, iou_threshold, score_threshold = _check_params(
        max_output_size, iou_threshold, score_threshold
    )
    boxes, scores = _check_batched(boxes, scores)
    return _map_nms(boxes, scores, max_output_size, iou_threshold, score_threshold)


def _offset_by_group(
    boxes: tf.Tensor, scores: tf.Tensor, groups: tf.Tensor, score_threshold: float
) -> tf.Tensor:
    """Moves each group of boxes [B, N, 4] to its own disjoint region of the plane.

    Box + group * span with span = max coordinate - min(min coordinate, 0) + 1 over the
    image's candidates (torchvision's batched_nms trick, which uses max + 1 for boxes >= 0;
    this span also separates boxes with negative coordinates). Non-candidates become zeros
    so that padded or garbage rows cannot inflate the span.
    """
    candidate = (scores > score_threshold)[..., None]
    boxes = tf.where(candidate, boxes, tf.zeros_like(boxes))
    any_candidate = tf.reduce_any(candidate, axis=[1, 2])
    big = tf.float32.max
    high = tf.reduce_max(tf.where(candidate, boxes, -big), axis=[1, 2])
    low = tf.reduce_min(tf.where(candidate, boxes, big), axis=[1, 2])
    span = tf.where(any_candidate, high - tf.minimum(low, 0.0) + 1.0, tf.ones_like(high))
    offsets = tf.cast(groups, tf.float32) * span[:, None]
    return boxes + offsets[..., None]


def grouped_nms_padded(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    groups: tf.Tensor,
    max_output_size: int,
    iou_threshold: float,
    score_threshold: float = _NEG_INF,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Greedy NMS within each group (class or pyramid level) of each image, in one NMS call.

    Boxes of different groups never suppress each other; the kept boxes of all groups are
    ranked together by score and capped at `max_output_size` per image. Boxes are offset by
    group id (see `_offset_by_group`), which costs float32 precision for large offsets
    (IoU error around 1e-4 for ~100 groups on 1333-pixel images, as in torchvision).

    Args:
        boxes: `[B, N, 4]` float32 (y1, x1, y2, x2).
        scores: `[B, N]` float32; entries `<= score_threshold` are never selected.
        groups: `[B, N]` integer group ids (any integers, e.g. class labels or level ids).
        max_output_size: Python int >= 1, kept boxes per image at most.
        iou_threshold: in [0, 1]; suppression when IoU > threshold within a group.
        score_threshold: boxes need a score strictly greater than this.

    Returns:
        indices: `[B, max_output_size]` int32 into the N axis, 0 from `num_valid[b]` on.
        num_valid: `[B]` int32.
    """
    max_output_size, iou_threshold, score_threshold = _check_params(
        max_output_size, iou_threshold, score_threshold
    )
    boxes, scores = _check_batched(boxes, scores)
    groups = tf.convert_to_tensor(groups)
    if not groups.dtype.is_integer:
        raise TypeError(f"`groups` must be an integer tensor, got dtype {groups.dtype.name}")
    if groups.shape.rank is not None and not groups.shape.is_compatible_with(scores.shape):
        raise ValueError(
            f"`groups` must have shape [B, N] like `scores` {scores.shape}, got {groups.shape}"
        )
    shifted = _offset_by_group(boxes, scores, groups, score_threshold)
    return _map_nms(shifted, scores, max_output_size, iou_threshold, score_threshold)
