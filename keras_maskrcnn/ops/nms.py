"""Greedy non-maximum suppression with fixed-size (padded) outputs, on every Keras backend.

Two implementations with the same results (`implementation=`):

- "tensorflow" (the default on TensorFlow): the ``NonMaxSuppressionV4`` op. It has CPU, GPU and
  XLA kernels and converts to the TFLite builtin ``NON_MAX_SUPPRESSION_V4``, so exported models
  keep their NMS op; TensorFlow is imported inside the function. (``tf.image.
  non_max_suppression_padded`` is not used: in TF 2.21 it runs a tiled pure-TF algorithm that
  suppresses at IoU >= threshold and drops boxes whose coordinates are all <= 0.)
- "auto" on PyTorch with torchvision installed: ``torchvision.ops.nms`` image by image
  (`ops.torch_fast.batched_nms`; candidates pre-sorted by descending score, lower index first,
  and the corners ordered, so that it selects exactly what "portable" selects, in the same
  order; tests/portable/test_torch_fast_paths.py). Without torchvision, "portable".
- "portable" (the default on JAX, and on PyTorch without torchvision): `keras.ops` only, static shapes. One
  `ops.while_loop` step per kept box and all images of the batch at once: the best remaining
  candidate (lowest index among equal scores) is kept and every candidate whose IoU with it is
  above the threshold is removed; the loop ends when `max_output_size` boxes are kept or no
  candidate is left. That is exactly greedy NMS, in O(max_output_size * N) time and O(B * N)
  memory (no N x N matrix), jit-compiled as one XLA loop on JAX. Its IoU is the TF kernel's
  float32 formula (corners ordered with min / max, 0 when either area is <= 0), so on
  TensorFlow both implementations select the same boxes (tests/portable/test_boxes_nms.py).

Semantics (the same as ``torchvision.ops.nms``):

- candidates are the boxes with ``score > score_threshold`` (strictly), visited by
  descending score; ties go to the lower index (unspecified under TensorFlow's XLA kernel);
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

import functools
import numbers

import keras
import numpy as np
from keras import ops

from keras_maskrcnn import backend
from keras_maskrcnn.ops import torch_fast
from keras_maskrcnn.ops.boxes import Tensor, as_float32

_NEG_INF = float("-inf")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
IMPLEMENTATIONS = ("auto", "tensorflow", "portable")


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


def resolve_implementation(implementation: str) -> str:
    """"auto" -> "tensorflow" on TensorFlow, else "portable"; checks explicit choices."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"`implementation` must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        return "tensorflow" if backend.is_tensorflow() else "portable"
    if implementation == "tensorflow" and not backend.is_tensorflow():
        raise ValueError(f"implementation='tensorflow' needs KERAS_BACKEND=tensorflow, the backend is "
                         f"{backend.name()!r}: use 'portable' or 'auto'")
    return implementation


def _as_float(x: Tensor, name: str, expected: str) -> Tensor:
    """Casts `x` to float32 and checks its static shape against `expected`, e.g. "[B, N, 4]"."""
    dims = expected.strip("[]").split(", ")
    rank, last_dim = len(dims), int(dims[-1]) if dims[-1].isdigit() else None
    x = as_float32(x, name)
    shape = tuple(x.shape)
    if len(shape) != rank or (last_dim is not None and shape[-1] not in (None, last_dim)):
        raise ValueError(f"`{name}` must have shape {expected}, got {shape}")
    return x


# --------------------------------------------------------------------------- portable


def _corners(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(ymin, xmin, ymax, xmax, area) of boxes [B, N, 4], each [B, N]: corners ordered as the
    TF kernel orders them, area as it computes it."""
    y1, x1, y2, x2 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    ymin, ymax = ops.minimum(y1, y2), ops.maximum(y1, y2)
    xmin, xmax = ops.minimum(x1, x2), ops.maximum(x1, x2)
    return ymin, xmin, ymax, xmax, (ymax - ymin) * (xmax - xmin)


def _iou_with(corners: tuple, best: Tensor) -> Tensor:
    """IoU [B, N] of box `best[b]` of each image with all its boxes (the TF kernel's formula:
    0 when either area is <= 0, else inter / (area_i + area_j - inter))."""
    ymin, xmin, ymax, xmax, area = corners
    picked = [ops.take_along_axis(c, best[:, None], axis=1) for c in corners]  # each [B, 1]
    inter_h = ops.maximum(ops.minimum(ymax, picked[2]) - ops.maximum(ymin, picked[0]), 0.0)
    inter_w = ops.maximum(ops.minimum(xmax, picked[3]) - ops.maximum(xmin, picked[1]), 0.0)
    inter = inter_h * inter_w
    union = picked[4] + area - inter
    empty = (area <= 0.0) | (picked[4] <= 0.0)
    return ops.where(empty, 0.0, inter / ops.where(empty, 1.0, union))


def _portable_nms(
    boxes: Tensor, scores: Tensor, max_output_size: int, iou_threshold: float,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    """Greedy NMS of every image of boxes [B, N, 4] / scores [B, N] at once (keras.ops)."""
    if boxes.shape[1] == 0:  # one row that is never a candidate (reductions need N >= 1)
        boxes = ops.zeros((ops.shape(boxes)[0], 1, 4), "float32")
        scores = ops.full((ops.shape(scores)[0], 1), _NEG_INF, "float32")
    num = backend.static_dim(scores, 1)
    batch = backend.static_dim(scores, 0)
    corners = _corners(boxes)
    positions = ops.arange(num, dtype="int32")[None, :]
    slots = ops.arange(max_output_size, dtype="int32")[None, :]
    live = ops.where(scores > score_threshold, scores, _NEG_INF)  # NaN is never a candidate

    def cond(step, live, indices, count, going):
        return ops.logical_and(step < max_output_size, going)

    def body(step, live, indices, count, going):
        top = ops.max(live, axis=1, keepdims=True)  # [B, 1]
        active = top[:, 0] > _NEG_INF
        # The lowest index among the best scores (torchvision's and the TF kernel's tie order).
        best = ops.cast(ops.min(ops.where(live == top, positions, num), axis=1), "int32")
        best = ops.minimum(best, num - 1)
        suppress = (_iou_with(corners, best) > iou_threshold) | (positions == best[:, None])
        live = ops.where(suppress & active[:, None], _NEG_INF, live)
        write = (slots == step) & active[:, None]
        indices = ops.where(write, best[:, None], indices)
        count = count + ops.cast(active, "int32")
        return step + 1, live, indices, count, ops.any(active)

    init = (ops.convert_to_tensor(0, "int32"), live,
            ops.zeros((batch, max_output_size), "int32"), ops.zeros((batch,), "int32"),
            ops.convert_to_tensor(True))
    _, _, indices, count, _ = ops.while_loop(cond, body, init, maximum_iterations=max_output_size)
    return indices, count


@functools.cache
def _jax_compiled_nms():
    """`_portable_nms` under one `jax.jit` (cached per shape and arguments): eager JAX calls then
    run one compiled loop instead of compiling the loop body per call; inside an outer jit it is
    inlined."""
    import jax

    return jax.jit(_portable_nms, static_argnums=(2, 3, 4))


def _run_portable(boxes, scores, max_output_size, iou_threshold, score_threshold):
    if backend.name() == "jax":
        return _jax_compiled_nms()(boxes, scores, max_output_size, iou_threshold, score_threshold)
    return _portable_nms(boxes, scores, max_output_size, iou_threshold, score_threshold)


# --------------------------------------------------------------------------- TensorFlow


def _pad_candidates(boxes, scores, min_boxes: int):
    """Pads boxes [N, 4] / scores [N] to at least `min_boxes` rows with zero boxes scored -inf.

    The XLA kernel fails when N < max_output_size and crashes when N == 0; padded rows are
    never candidates (-inf is not > any threshold).
    """
    tf = backend.tensorflow()
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


def _tf_nms_single(boxes, scores, max_output_size: int, iou_threshold: float,
                   score_threshold: float):
    """NMS on validated float32 boxes [N, 4] and scores [N] with the TF kernel."""
    tf = backend.tensorflow()
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


def _tf_map_nms(boxes, scores, max_output_size: int, iou_threshold: float,
                score_threshold: float):
    """Runs `_tf_nms_single` on every image of boxes [B, N, 4] / scores [B, N] (`tf.map_fn`;
    B may be dynamic)."""
    tf = backend.tensorflow()

    def per_image(args):
        return _tf_nms_single(args[0], args[1], max_output_size, iou_threshold, score_threshold)

    return tf.map_fn(
        per_image,
        (boxes, scores),
        fn_output_signature=(
            tf.TensorSpec([max_output_size], tf.int32),
            tf.TensorSpec([], tf.int32),
        ),
    )


# --------------------------------------------------------------------------- public


def _batched(boxes, scores, max_output_size, iou_threshold, score_threshold, implementation):
    if resolve_implementation(implementation) == "tensorflow":
        return _tf_map_nms(boxes, scores, max_output_size, iou_threshold, score_threshold)
    if implementation == "auto":  # PyTorch with torchvision: its kernel, image by image
        result = torch_fast.batched_nms(boxes, scores, max_output_size, iou_threshold,
                                        score_threshold)
        if result is not None:
            return result
    return _run_portable(boxes, scores, max_output_size, iou_threshold, score_threshold)


def nms_padded(
    boxes: Tensor,
    scores: Tensor,
    max_output_size: int,
    iou_threshold: float,
    score_threshold: float = _NEG_INF,
    implementation: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Greedy NMS of one set of boxes (see the module docstring for the exact semantics).

    Args:
        boxes: `[N, 4]` float32 (y1, x1, y2, x2); N may be 0 or smaller than
            `max_output_size`.
        scores: `[N]` float32; entries `<= score_threshold` are never selected.
        max_output_size: Python int >= 1, the (static) output length.
        iou_threshold: in [0, 1]; a box is suppressed by a kept box when IoU > threshold.
        score_threshold: boxes need a score strictly greater than this.
        implementation: "auto" (the TF kernel on TensorFlow, torchvision's on PyTorch when
            it is installed, else "portable"), "tensorflow" or "portable" (see the module
            docstring).

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
    if resolve_implementation(implementation) == "tensorflow":
        return _tf_nms_single(boxes, scores, max_output_size, iou_threshold, score_threshold)
    indices, num_valid = _batched(boxes[None], scores[None], max_output_size, iou_threshold,
                                  score_threshold, implementation)
    return indices[0], num_valid[0]


def _check_batched(boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    boxes = _as_float(boxes, "boxes", "[B, N, 4]")
    scores = _as_float(scores, "scores", "[B, N]")
    if not all(a is None or b is None or a == b
               for a, b in zip(boxes.shape[:2], scores.shape, strict=True)):
        raise ValueError(
            f"`boxes` [B, N, 4] and `scores` [B, N] disagree: {tuple(boxes.shape)} vs "
            f"{tuple(scores.shape)}"
        )
    return boxes, scores


def batched_nms_padded(
    boxes: Tensor,
    scores: Tensor,
    max_output_size: int,
    iou_threshold: float,
    score_threshold: float = _NEG_INF,
    implementation: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Greedy NMS of each image of a batch independently (TensorFlow: `tf.map_fn`, B may be
    dynamic; portable: all images in one loop).

    Args:
        boxes: `[B, N, 4]` float32 (y1, x1, y2, x2).
        scores: `[B, N]` float32; entries `<= score_threshold` are never selected.
        max_output_size: Python int >= 1, kept boxes per image at most.
        iou_threshold: in [0, 1]; suppression when IoU > threshold.
        score_threshold: boxes need a score strictly greater than this.
        implementation: "auto", "tensorflow" or "portable" (as `nms_padded`).

    Returns:
        indices: `[B, max_output_size]` int32 into the N axis, 0 from `num_valid[b]` on.
        num_valid: `[B]` int32.
    """
    max_output_size, iou_threshold, score_threshold = _check_params(
        max_output_size, iou_threshold, score_threshold
    )
    boxes, scores = _check_batched(boxes, scores)
    return _batched(boxes, scores, max_output_size, iou_threshold, score_threshold,
                    implementation)


def _offset_by_group(
    boxes: Tensor, scores: Tensor, groups: Tensor, score_threshold: float
) -> Tensor:
    """Moves each group of boxes [B, N, 4] to its own disjoint region of the plane.

    Box + group * span with span = max coordinate - min(min coordinate, 0) + 1 over the
    image's candidates (torchvision's batched_nms trick, which uses max + 1 for boxes >= 0;
    this span also separates boxes with negative coordinates). Non-candidates become zeros
    so that padded or garbage rows cannot inflate the span.
    """
    candidate = (scores > score_threshold)[..., None]
    boxes = ops.where(candidate, boxes, ops.zeros_like(boxes))
    any_candidate = ops.any(candidate, axis=(1, 2))
    high = ops.max(ops.where(candidate, boxes, -_FLOAT32_MAX), axis=(1, 2))
    low = ops.min(ops.where(candidate, boxes, _FLOAT32_MAX), axis=(1, 2))
    span = ops.where(any_candidate, high - ops.minimum(low, 0.0) + 1.0, ops.ones_like(high))
    offsets = ops.cast(groups, "float32") * span[:, None]
    return boxes + offsets[..., None]


def grouped_nms_padded(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    max_output_size: int,
    iou_threshold: float,
    score_threshold: float = _NEG_INF,
    implementation: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Greedy NMS within each group (class or pyramid level) of each image, in one NMS call.

    Boxes of different groups never suppress each other; the kept boxes of all groups are
    ranked together by score and capped at `max_output_size` per image. Boxes are offset by
    group id (see `_offset_by_group`; both implementations, so that they agree), which costs
    float32 precision for large offsets (IoU error around 1e-4 for ~100 groups on 1333-pixel
    images, as in torchvision).

    Args:
        boxes: `[B, N, 4]` float32 (y1, x1, y2, x2).
        scores: `[B, N]` float32; entries `<= score_threshold` are never selected.
        groups: `[B, N]` integer group ids (any integers, e.g. class labels or level ids).
        max_output_size: Python int >= 1, kept boxes per image at most.
        iou_threshold: in [0, 1]; suppression when IoU > threshold within a group.
        score_threshold: boxes need a score strictly greater than this.
        implementation: "auto", "tensorflow" or "portable" (as `nms_padded`).

    Returns:
        indices: `[B, max_output_size]` int32 into the N axis, 0 from `num_valid[b]` on.
        num_valid: `[B]` int32.
    """
    max_output_size, iou_threshold, score_threshold = _check_params(
        max_output_size, iou_threshold, score_threshold
    )
    boxes, scores = _check_batched(boxes, scores)
    groups = ops.convert_to_tensor(groups)
    dtype = keras.backend.standardize_dtype(groups.dtype)
    if not dtype.startswith(("int", "uint")):
        raise TypeError(f"`groups` must be an integer tensor, got dtype {dtype}")
    if len(groups.shape) != 2 or not all(
            a is None or b is None or a == b for a, b in zip(groups.shape, scores.shape, strict=True)):
        raise ValueError(
            f"`groups` must have shape [B, N] like `scores` {tuple(scores.shape)}, got "
            f"{tuple(groups.shape)}"
        )
    shifted = _offset_by_group(boxes, scores, groups, score_threshold)
    return _batched(shifted, scores, max_output_size, iou_threshold, score_threshold,
                    implementation)
