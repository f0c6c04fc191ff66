"""ops.boxes and ops.nms on every backend, against numpy written from the definitions.

NMS: the portable implementation (and on TensorFlow also the NonMaxSuppressionV4 kernel, which
must agree with it) against a numpy greedy NMS, on random boxes with tied scores, invalid
(padded) rows, zero-area boxes, IoU exactly at the threshold, N = 0 and N < max_output_size.
"""

from __future__ import annotations

import math
from importlib import import_module

import keras
import numpy as np
import pytest
from keras import ops

box_ops = import_module("keras_maskrcnn.ops.boxes")
nms_ops = import_module("keras_maskrcnn.ops.nms")

NEG_INF = float("-inf")


def _np(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def _implementations(backend: str) -> list[str]:
    return ["portable", "tensorflow"] if backend == "tensorflow" else ["portable"]


# --------------------------------------------------------------------------- boxes


def _random_boxes(rng: np.random.Generator, shape: tuple, max_size: float = 40.0) -> np.ndarray:
    y1x1 = rng.uniform(0, 60, shape + (2,))
    hw = rng.uniform(1, max_size, shape + (2,))
    return np.concatenate([y1x1, y1x1 + hw], axis=-1).astype(np.float32)


def _np_iou_ioa(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    iou = np.zeros((len(a), len(b)))
    ioa = np.zeros((len(a), len(b)))
    for i, (ay1, ax1, ay2, ax2) in enumerate(a.astype(np.float64)):
        for j, (by1, bx1, by2, bx2) in enumerate(b.astype(np.float64)):
            inter = max(min(ay2, by2) - max(ay1, by1), 0.0) * max(min(ax2, bx2) - max(ax1, bx1), 0.0)
            area_a = (ay2 - ay1) * (ax2 - ax1)
            union = area_a + (by2 - by1) * (bx2 - bx1) - inter
            iou[i, j] = inter / union if union > 0 else 0.0
            ioa[i, j] = inter / area_a if area_a > 0 else 0.0
    return iou, ioa


def test_area_iou_ioa_match_definition(backend):
    rng = np.random.default_rng(0)
    a = _random_boxes(rng, (2, 7))
    b = _random_boxes(rng, (2, 5))
    a[0, 0] = [5, 5, 5, 9]  # empty
    b[1, 1] = a[1, 2]  # identical
    iou = _np(box_ops.pairwise_iou(a, b))
    ioa = _np(box_ops.pairwise_ioa(a, b))
    assert iou.shape == (2, 7, 5) and iou.dtype == np.float32
    for i in range(2):
        ref_iou, ref_ioa = _np_iou_ioa(a[i], b[i])
        np.testing.assert_allclose(iou[i], ref_iou, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ioa[i], ref_ioa, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(box_ops.box_area(a)),
                               (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]), rtol=1e-6)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_match_definition(backend, weights):
    rng = np.random.default_rng(1)
    anchors = _random_boxes(rng, (3, 20), max_size=100).astype(np.float64)
    boxes = _random_boxes(rng, (3, 20), max_size=100).astype(np.float64)
    wy, wx, wh, ww = weights
    ha, wa = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    h, w = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    expected = np.stack([wy * (boxes[..., 0] + h / 2 - anchors[..., 0] - ha / 2) / ha,
                         wx * (boxes[..., 1] + w / 2 - anchors[..., 1] - wa / 2) / wa,
                         wh * np.log(h / ha), ww * np.log(w / wa)], axis=-1)
    deltas = _np(box_ops.encode_boxes(boxes.astype(np.float32), anchors.astype(np.float32), weights))
    np.testing.assert_allclose(deltas, expected, rtol=1e-4, atol=1e-4)
    decoded = _np(box_ops.decode_boxes(deltas, anchors.astype(np.float32), weights))
    np.testing.assert_allclose(decoded, boxes, rtol=1e-5, atol=1e-3)
    # The clamp: dh / wh above log(1000 / 16) is cut there.
    big = np.array([[0.0, 0.0, 50.0 * wh, 0.0]], np.float32)
    one = np.array([[0.0, 0.0, 16.0, 8.0]], np.float32)
    out = _np(box_ops.decode_boxes(big, one, weights))[0]
    assert out[2] - out[0] == pytest.approx(16 * math.exp(math.log(1000 / 16)), rel=1e-5)


def test_clip_boxes_per_image(backend):
    boxes = np.array([[[-5, -5, 50, 70], [10, 10, 20, 20]],
                      [[-1, 3, 120, 200], [90, 90, 95, 300]]], np.float32)
    image_shape = np.array([[40, 60], [100, 150]], np.float32)
    h, w = image_shape[:, :1], image_shape[:, 1:]
    expected = np.stack([np.clip(boxes[..., 0], 0, h), np.clip(boxes[..., 1], 0, w),
                         np.clip(boxes[..., 2], 0, h), np.clip(boxes[..., 3], 0, w)], axis=-1)
    np.testing.assert_array_equal(_np(box_ops.clip_boxes(boxes, image_shape)), expected)
    np.testing.assert_array_equal(_np(box_ops.clip_boxes(boxes[1], image_shape[1])), expected[1])
    with pytest.raises(ValueError, match="image_shape"):
        box_ops.clip_boxes(boxes, np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="boxes"):
        box_ops.box_area(np.zeros((3, 5), np.float32))


# --------------------------------------------------------------------------- NMS


def _np_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU from the definition; 0 when either box has no area."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    if area_a <= 0 or area_b <= 0:
        return 0.0
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    return inter / (area_a + area_b - inter)


def _np_nms(boxes, scores, max_output_size, iou_threshold, score_threshold=NEG_INF, groups=None):
    """Greedy NMS: descending score, ties to the lower index; a box is dropped when its IoU with a
    kept box of its group is > iou_threshold; only scores > score_threshold; at most
    max_output_size kept."""
    boxes = np.asarray(boxes, np.float64)
    groups = np.zeros(len(scores), int) if groups is None else np.asarray(groups)
    keep: list[int] = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if len(keep) == max_output_size:
            break
        if scores[i] > score_threshold and not any(
                groups[j] == groups[i] and _np_iou(boxes[i], boxes[j]) > iou_threshold for j in keep):
            keep.append(i)
    return keep


def _grid_case(rng: np.random.Generator, n: int, extent: int = 24):
    """Boxes with integer corners (so IoU comparisons are exact in float32 and float64), many
    duplicates, a few zero-area boxes; scores from a few values (ties)."""
    y1x1 = rng.integers(-4, extent, (n, 2))
    hw = rng.integers(1, 12, (n, 2))
    boxes = np.concatenate([y1x1, y1x1 + hw], axis=1).astype(np.float32)
    boxes[: n // 8, 2] = boxes[: n // 8, 0]  # zero area
    dup = rng.integers(0, n, n // 4)
    boxes[rng.integers(0, n, n // 4)] = boxes[dup]
    scores = rng.integers(1, 8, n).astype(np.float32) / 8.0
    return boxes, scores


def _check(indices, num_valid, expected, max_output_size):
    indices = _np(indices)
    assert indices.shape == (max_output_size,) and indices.dtype == np.int32
    assert int(_np(num_valid)) == len(expected)
    np.testing.assert_array_equal(indices[: len(expected)], expected)
    assert np.all(indices[len(expected):] == 0)


@pytest.mark.parametrize("iou_threshold", [0.0, 0.3, 0.5, 1.0])
def test_nms_matches_numpy_greedy_with_ties(backend, iou_threshold):
    rng = np.random.default_rng(int(iou_threshold * 10) + 1)
    boxes, scores = _grid_case(rng, 60)
    for implementation in _implementations(backend):
        for max_output_size in (1, 7, 80):
            expected = _np_nms(boxes, scores, max_output_size, iou_threshold)
            _check(*nms_ops.nms_padded(boxes, scores, max_output_size, iou_threshold,
                                       implementation=implementation),
                   expected, max_output_size)


def test_nms_padding_thresholds_and_edge_cases(backend):
    rng = np.random.default_rng(3)
    boxes, scores = _grid_case(rng, 40)
    scores[::5] = NEG_INF  # invalid (padded) rows with garbage coordinates
    boxes[::5] = 1e30
    exact = np.array([[0, 0, 4, 4], [0, 0, 2, 4], [10, 10, 14, 14]], np.float32)  # IoU 0.5
    exact_scores = np.array([0.9, 0.8, 0.7], np.float32)
    for implementation in _implementations(backend):
        for score_threshold in (NEG_INF, 0.4):
            expected = _np_nms(boxes, scores, 30, 0.5, score_threshold)
            assert not set(expected) & set(range(0, 40, 5))
            _check(*nms_ops.nms_padded(boxes, scores, 30, 0.5, score_threshold,
                                       implementation=implementation), expected, 30)
        for threshold, expected in ((0.5, [0, 1, 2]), (0.49, [0, 2])):
            assert _np_nms(exact, exact_scores, 4, threshold) == expected
            _check(*nms_ops.nms_padded(exact, exact_scores, 4, threshold,
                                       implementation=implementation), expected, 4)
        # A score equal to the threshold is not a candidate; N = 0; N < max_output_size.
        _check(*nms_ops.nms_padded(exact[:1], np.array([0.4], np.float32), 2, 0.5, 0.4,
                                   implementation=implementation), [], 2)
        _check(*nms_ops.nms_padded(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 5,
                                   0.5, implementation=implementation), [], 5)
        _check(*nms_ops.nms_padded(exact, exact_scores, 8, 0.3, implementation=implementation),
               _np_nms(exact, exact_scores, 8, 0.3), 8)


def test_batched_and_grouped_match_numpy(backend):
    rng = np.random.default_rng(5)
    cases = [_grid_case(rng, 50) for _ in range(3)]
    boxes = np.stack([c[0] for c in cases])
    scores = np.stack([c[1] for c in cases])
    scores[1, 10:] = NEG_INF  # image 1 has 10 valid rows
    scores[2] = NEG_INF  # image 2 has none
    groups = rng.integers(0, 4, (3, 50)).astype(np.int32)
    for implementation in _implementations(backend):
        indices, num_valid = nms_ops.batched_nms_padded(boxes, scores, 12, 0.5,
                                                        implementation=implementation)
        assert tuple(indices.shape) == (3, 12) and tuple(num_valid.shape) == (3,)
        for b in range(3):
            _check(_np(indices)[b], _np(num_valid)[b], _np_nms(boxes[b], scores[b], 12, 0.5), 12)
        for max_output_size in (5, 60):
            indices, num_valid = nms_ops.grouped_nms_padded(
                boxes, scores, groups, max_output_size, 0.5, 0.2, implementation=implementation)
            for b in range(3):
                expected = _np_nms(boxes[b], scores[b], max_output_size, 0.5, 0.2, groups[b])
                _check(_np(indices)[b], _np(num_valid)[b], expected, max_output_size)


def test_random_float_boxes_portable_equals_tensorflow_kernel(backend):
    """Continuous coordinates (the model's case): the portable loop selects what the numpy
    reference does, and on TensorFlow exactly what the NonMaxSuppressionV4 kernel does."""
    rng = np.random.default_rng(6)
    y1x1 = rng.uniform(-10, 200, (2, 300, 2))
    boxes = np.concatenate([y1x1, y1x1 + rng.uniform(2, 60, (2, 300, 2))], -1).astype(np.float32)
    scores = rng.random((2, 300)).astype(np.float32)
    scores[:, ::7] = scores[:, 1::7]  # ties
    groups = rng.integers(0, 5, (2, 300)).astype(np.int32)
    results = {}
    for implementation in _implementations(backend):
        out = nms_ops.grouped_nms_padded(boxes, scores, groups, 100, 0.6, 0.05,
                                         implementation=implementation)
        results[implementation] = [_np(x) for x in out]
        for b in range(2):
            expected = _np_nms(boxes[b], scores[b], 100, 0.6, 0.05, groups[b])
            _check(results[implementation][0][b], results[implementation][1][b], expected, 100)
    if backend == "tensorflow":
        for x, y in zip(results["portable"], results["tensorflow"], strict=True):
            np.testing.assert_array_equal(x, y)


def test_portable_nms_compiles(backend):
    """Inside the backend's compiler (jax.jit / tf.function with XLA); eager on torch."""
    rng = np.random.default_rng(7)
    boxes, scores = _grid_case(rng, 30)
    expected = _np_nms(boxes, scores, 10, 0.5)

    def fn(b, s):
        return nms_ops.nms_padded(b, s, 10, 0.5, implementation="portable")

    if backend == "jax":
        import jax

        fn = jax.jit(fn)
    elif backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(fn, jit_compile=True)
    _check(*fn(ops.convert_to_tensor(boxes), ops.convert_to_tensor(scores)), expected, 10)


def test_bad_arguments_raise(backend):
    boxes = np.zeros((3, 4), np.float32)
    scores = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="max_output_size"):
        nms_ops.nms_padded(boxes, scores, 0, 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        nms_ops.nms_padded(boxes, scores, 2, 1.5)
    with pytest.raises(ValueError, match="boxes"):
        nms_ops.batched_nms_padded(boxes, scores, 2, 0.5)
    with pytest.raises(TypeError, match="groups"):
        nms_ops.grouped_nms_padded(boxes[None], scores[None], scores[None], 2, 0.5)
    with pytest.raises(ValueError, match="implementation"):
        nms_ops.nms_padded(boxes, scores, 2, 0.5, implementation="fast")
    if backend != "tensorflow":
        with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow"):
            nms_ops.nms_padded(boxes, scores, 2, 0.5, implementation="tensorflow")
