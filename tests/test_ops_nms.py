"""Tests for keras_maskrcnn.ops.nms against a numpy greedy NMS written from the definition."""

import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops import nms as nms_ops

NEG_INF = float("-inf")


def _np_iou(a: np.ndarray, b: np.ndarray) -> float:
    ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _np_nms(boxes, scores, max_output_size, iou_threshold, score_threshold=NEG_INF, groups=None):
    """Greedy NMS as torchvision.ops.nms: descending score (ties: lower index first), a box
    is dropped when its IoU with a kept box of the same group is > iou_threshold, only
    scores > score_threshold are candidates, at most max_output_size kept."""
    boxes = np.asarray(boxes, np.float64)
    groups = np.zeros(len(scores), int) if groups is None else np.asarray(groups)
    keep = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if not scores[i] > score_threshold:
            continue
        if any(
            groups[j] == groups[i] and _np_iou(boxes[i], boxes[j]) > iou_threshold for j in keep
        ):
            continue
        keep.append(i)
        if len(keep) == max_output_size:
            break
    return keep


def _random_case(rng: np.random.Generator, n: int, extent: float = 60.0, low: float = 0.0):
    y1x1 = rng.uniform(low, extent, (n, 2))
    hw = rng.uniform(4, 30, (n, 2))
    boxes = np.concatenate([y1x1, y1x1 + hw], axis=1).astype(np.float32)
    scores = (rng.permutation(n) / max(n, 1)).astype(np.float32) + 0.01  # distinct, no ties
    return boxes, scores


def _check(indices, num_valid, expected, max_output_size):
    indices = np.asarray(indices)
    assert indices.shape == (max_output_size,) and indices.dtype == np.int32
    assert int(num_valid) == len(expected)
    np.testing.assert_array_equal(indices[: len(expected)], expected)
    assert np.all(indices[len(expected) :] == 0)


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_nms_matches_numpy_greedy(iou_threshold):
    rng = np.random.default_rng(int(iou_threshold * 10))
    boxes, scores = _random_case(rng, 80)
    boxes[3] = [10, 10, 10, 30]  # zero area: never suppresses nor is suppressed
    for max_output_size in (5, 40):
        expected = _np_nms(boxes, scores, max_output_size, iou_threshold)
        indices, num_valid = nms_ops.nms_padded(boxes, scores, max_output_size, iou_threshold)
        _check(indices, num_valid, expected, max_output_size)
    assert 3 in _np_nms(boxes, scores, 80, iou_threshold)


def test_nms_score_threshold_and_invalid_entries():
    rng = np.random.default_rng(3)
    boxes, scores = _random_case(rng, 50)
    scores[::7] = NEG_INF  # invalid rows
    boxes[::7] = 1e30  # with garbage coordinates
    for score_threshold in (NEG_INF, 0.4):
        expected = _np_nms(boxes, scores, 30, 0.5, score_threshold)
        indices, num_valid = nms_ops.nms_padded(boxes, scores, 30, 0.5, score_threshold)
        _check(indices, num_valid, expected, 30)
        assert not set(expected) & set(range(0, 50, 7))
    # A score equal to the threshold is not a candidate (strictly greater).
    indices, num_valid = nms_ops.nms_padded(boxes[:1], np.array([0.4], np.float32), 2, 0.5, 0.4)
    assert int(num_valid) == 0


def test_iou_exactly_at_threshold_does_not_suppress():
    boxes = np.array([[0, 0, 4, 4], [0, 0, 2, 4], [10, 10, 14, 14]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert _np_iou(boxes[0], boxes[1]) == 0.5
    for threshold, expected in ((0.5, [0, 1, 2]), (0.49, [0, 2])):
        assert _np_nms(boxes, scores, 4, threshold) == expected
        indices, num_valid = nms_ops.nms_padded(boxes, scores, 4, threshold)
        _check(indices, num_valid, expected, 4)


def test_empty_and_fewer_boxes_than_outputs():
    indices, num_valid = nms_ops.nms_padded(
        np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 5, 0.5
    )
    _check(indices, num_valid, [], 5)
    rng = np.random.default_rng(4)
    boxes, scores = _random_case(rng, 3)
    _check(*nms_ops.nms_padded(boxes, scores, 8, 0.5), _np_nms(boxes, scores, 8, 0.5), 8)


def test_batched_matches_per_image_with_dynamic_batch():
    rng = np.random.default_rng(5)
    cases = [_random_case(rng, 40) for _ in range(3)]
    boxes = np.stack([c[0] for c in cases])
    scores = np.stack([c[1] for c in cases])
    scores[1, 10:] = NEG_INF  # image 1 has only 10 valid rows
    fn = tf.function(
        lambda b, s: nms_ops.batched_nms_padded(b, s, 15, 0.5),
        input_signature=[tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None])],
    )
    indices, num_valid = fn(boxes, scores)
    assert indices.shape == (3, 15) and num_valid.shape == (3,)
    for b in range(3):
        _check(indices[b], num_valid[b], _np_nms(boxes[b], scores[b], 15, 0.5), 15)


def test_grouped_matches_per_group_numpy():
    rng = np.random.default_rng(6)
    cases = [_random_case(rng, 60, extent=40.0, low=-20.0) for _ in range(2)]  # negative coords
    boxes = np.stack([c[0] for c in cases])
    scores = np.stack([c[1] for c in cases])
    groups = rng.integers(0, 4, (2, 60)).astype(np.int32)
    boxes[0, 1] = boxes[0, 0]  # a duplicate in another group survives
    groups[0, :2] = [0, 1]
    scores[1, -5:] = NEG_INF
    boxes[1, -5:] = [[-1e6, -1e6, 1e6, 1e6]] * 5  # garbage rows must not affect the offsets
    for max_output_size in (10, 50):
        indices, num_valid = nms_ops.grouped_nms_padded(boxes, scores, groups, max_output_size, 0.5)
        for b in range(2):
            expected = _np_nms(boxes[b], scores[b], max_output_size, 0.5, groups=groups[b])
            _check(indices[b], num_valid[b], expected, max_output_size)
    all_kept = _np_nms(boxes[0], scores[0], 60, 0.5, groups=groups[0])
    assert {0, 1} <= set(all_kept)
    assert len(all_kept) > len(_np_nms(boxes[0], scores[0], 60, 0.5))


def test_grouped_separates_groups_with_negative_coordinates():
    # torchvision's offset (max coordinate + 1 = 2) would leave these two boxes overlapping.
    boxes = np.array([[[-50, -50, 0, 0], [-49, -49, 1, 1], [-50, -50, 0, 1]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7]], np.float32)
    groups = np.array([[0, 1, 0]], np.int32)
    indices, num_valid = nms_ops.grouped_nms_padded(boxes, scores, groups, 3, 0.5)
    expected = _np_nms(boxes[0], scores[0], 3, 0.5, groups=groups[0])
    assert expected == [0, 1]
    _check(indices[0], num_valid[0], expected, 3)


def test_xla_jit_compile_matches_eager():
    rng = np.random.default_rng(7)
    boxes, scores = _random_case(rng, 50)
    batch_boxes = np.stack([boxes, boxes[::-1].copy()])
    batch_scores = np.stack([scores, scores])
    batch_scores[1, :20] = NEG_INF
    groups = rng.integers(0, 3, (2, 50)).astype(np.int32)
    calls = [
        (lambda b, s: nms_ops.nms_padded(b, s, 4, 0.5), (boxes[:0], scores[:0])),  # N = 0
        # N = 50 < 60 outputs: the XLA kernel needs the padding done in `nms_padded`.
        (lambda b, s: nms_ops.batched_nms_padded(b, s, 60, 0.5, 0.3), (batch_boxes, batch_scores)),
        (
            lambda b, s, g: nms_ops.grouped_nms_padded(b, s, g, 20, 0.5),
            (batch_boxes, batch_scores, groups),
        ),
    ]
    for fn, args in calls:
        eager = fn(*args)
        compiled = tf.function(fn, jit_compile=True)(*args)
        for x, y in zip(eager, compiled, strict=True):
            np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_bad_arguments_raise():
    boxes = np.zeros((3, 4), np.float32)
    scores = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="max_output_size"):
        nms_ops.nms_padded(boxes, scores, 0, 0.5)
    with pytest.raises(TypeError, match="max_output_size"):
        nms_ops.nms_padded(boxes, scores, 2.0, 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        nms_ops.nms_padded(boxes, scores, 2, 1.5)
    with pytest.raises(ValueError, match="boxes"):
        nms_ops.nms_padded(np.zeros((3, 5), np.float32), scores, 2, 0.5)
    with pytest.raises(ValueError, match="boxes"):
        nms_ops.batched_nms_padded(boxes, scores, 2, 0.5)
    with pytest.raises(TypeError, match="groups"):
        nms_ops.grouped_nms_padded(boxes[None], scores[None], scores[None], 2, 0.5)
