"""Tests for keras_maskrcnn.ops.boxes against numpy references written from the definitions."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops import boxes as box_ops


def _random_boxes(rng: np.random.Generator, shape: tuple, max_size: float = 40.0) -> np.ndarray:
    y1x1 = rng.uniform(0, 60, shape + (2,))
    hw = rng.uniform(1, max_size, shape + (2,))
    return np.concatenate([y1x1, y1x1 + hw], axis=-1).astype(np.float32)


def _np_iou_ioa(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Double loop over one image: IoU and intersection / area(a), 0 for empty denominators."""
    iou = np.zeros((len(a), len(b)))
    ioa = np.zeros((len(a), len(b)))
    for i, (ay1, ax1, ay2, ax2) in enumerate(a.astype(np.float64)):
        for j, (by1, bx1, by2, bx2) in enumerate(b.astype(np.float64)):
            ih = max(min(ay2, by2) - max(ay1, by1), 0.0)
            iw = max(min(ax2, bx2) - max(ax1, bx1), 0.0)
            inter = ih * iw
            area_a = (ay2 - ay1) * (ax2 - ax1)
            area_b = (by2 - by1) * (bx2 - bx1)
            union = area_a + area_b - inter
            iou[i, j] = inter / union if union > 0 else 0.0
            ioa[i, j] = inter / area_a if area_a > 0 else 0.0
    return iou, ioa


def _np_encode(boxes: np.ndarray, anchors: np.ndarray, weights) -> np.ndarray:
    wy, wx, wh, ww = weights
    b = boxes.astype(np.float64)
    a = anchors.astype(np.float64)
    h, w = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    ha, wa = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    cy, cx = b[..., 0] + 0.5 * h, b[..., 1] + 0.5 * w
    cya, cxa = a[..., 0] + 0.5 * ha, a[..., 1] + 0.5 * wa
    return np.stack(
        [
            wy * (cy - cya) / ha,
            wx * (cx - cxa) / wa,
            wh * np.log(h / ha),
            ww * np.log(w / wa),
        ],
        axis=-1,
    )


def test_box_area():
    boxes = np.array([[0, 0, 2, 3], [1, 1, 1, 5], [10, 20, 14, 21]], np.float32)
    expected = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    np.testing.assert_allclose(box_ops.box_area(boxes).numpy(), expected)
    assert box_ops.box_area(boxes[None]).shape == (1, 3)


def test_pairwise_iou_and_ioa_match_double_loop():
    rng = np.random.default_rng(0)
    a = _random_boxes(rng, (7,))
    b = _random_boxes(rng, (5,))
    # Special rows: zero-area boxes (a point, a line), an exact duplicate, a disjoint box.
    a[0] = [5, 5, 5, 5]
    a[1] = [0, 0, 0, 10]
    b[0] = [5, 5, 5, 5]
    b[1] = a[2]
    b[2] = [500, 500, 510, 520]
    iou, ioa = _np_iou_ioa(a, b)
    got_iou = box_ops.pairwise_iou(a, b).numpy()
    got_ioa = box_ops.pairwise_ioa(a, b).numpy()
    assert got_iou.shape == (7, 5) and got_ioa.shape == (7, 5)
    assert np.all(np.isfinite(got_iou)) and np.all(np.isfinite(got_ioa))
    np.testing.assert_allclose(got_iou, iou, atol=1e-6)
    np.testing.assert_allclose(got_ioa, ioa, atol=1e-6)
    assert got_iou[0, 0] == 0.0  # two empty boxes: union 0 -> 0, not NaN
    assert got_iou[2, 1] == pytest.approx(1.0)
    assert np.all(got_iou[:, 2] == 0.0)


def test_pairwise_iou_batched_dims():
    rng = np.random.default_rng(1)
    a = _random_boxes(rng, (2, 3, 6))
    b = _random_boxes(rng, (2, 3, 4))
    got_iou = box_ops.pairwise_iou(a, b).numpy()
    got_ioa = box_ops.pairwise_ioa(a, b).numpy()
    assert got_iou.shape == (2, 3, 6, 4)
    for i in range(2):
        for j in range(3):
            iou, ioa = _np_iou_ioa(a[i, j], b[i, j])
            np.testing.assert_allclose(got_iou[i, j], iou, atol=1e-6)
            np.testing.assert_allclose(got_ioa[i, j], ioa, atol=1e-6)


def test_pairwise_iou_gradient_is_finite_for_empty_boxes():
    a = tf.constant([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0]])
    b = tf.constant([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 3.0, 3.0]])
    with tf.GradientTape() as tape:
        tape.watch(a)
        iou = box_ops.pairwise_iou(a, b)
    grad = tape.gradient(iou, a)
    assert np.all(np.isfinite(grad.numpy()))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_matches_definition_and_round_trips(weights):
    rng = np.random.default_rng(2)
    anchors = _random_boxes(rng, (3, 50), max_size=100)
    boxes = _random_boxes(rng, (3, 50), max_size=100)
    deltas = box_ops.encode_boxes(boxes, anchors, weights).numpy()
    np.testing.assert_allclose(deltas, _np_encode(boxes, anchors, weights), rtol=1e-4, atol=1e-4)
    decoded = box_ops.decode_boxes(deltas, anchors, weights).numpy()
    np.testing.assert_allclose(decoded, boxes, rtol=1e-5, atol=1e-3)


def test_encode_order_is_dy_dx_dh_dw():
    anchor = np.array([[0.0, 0.0, 10.0, 20.0]], np.float32)  # h 10, w 20, centre (5, 10)
    box = np.array([[2.0, 0.0, 22.0, 20.0]], np.float32)  # h 20, w 20, centre (12, 10)
    deltas = box_ops.encode_boxes(box, anchor, (10.0, 10.0, 5.0, 5.0)).numpy()[0]
    np.testing.assert_allclose(deltas, [10 * 7 / 10, 0.0, 5 * math.log(2.0), 0.0], atol=1e-5)


def test_encode_degenerate_box_is_finite():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    boxes = np.array([[0, 0, 0, 0], [3, 3, 3, 9]], np.float32)
    assert np.all(np.isfinite(box_ops.encode_boxes(boxes, anchors).numpy()))


def test_decode_broadcasts_class_specific_deltas():
    rng = np.random.default_rng(3)
    anchors = _random_boxes(rng, (4,))
    deltas = rng.normal(size=(4, 3, 4)).astype(np.float32)
    got = box_ops.decode_boxes(deltas, anchors[:, None, :], (10, 10, 5, 5)).numpy()
    for k in range(3):
        expected = box_ops.decode_boxes(deltas[:, k], anchors, (10, 10, 5, 5)).numpy()
        np.testing.assert_allclose(got[:, k], expected, rtol=1e-6)


def test_decode_clamps_scale():
    anchors = np.array([[0.0, 0.0, 16.0, 8.0]], np.float32)
    big = 50.0
    deltas = np.array([[0.0, 0.0, big, -3.0]], np.float32)
    clamp = math.log(1000.0 / 16)
    got = box_ops.decode_boxes(deltas, anchors).numpy()[0]
    height = got[2] - got[0]
    width = got[3] - got[1]
    assert np.all(np.isfinite(got))
    assert height == pytest.approx(16 * math.exp(clamp), rel=1e-5)  # = 1000
    assert width == pytest.approx(8 * math.exp(-3.0), rel=1e-5)  # lower side not clamped
    assert (got[0] + got[2]) / 2 == pytest.approx(8.0, abs=1e-3)
    # The clamp applies to dh / wh (after dividing by the weight).
    for factor, expected_dh in ((0.9, 0.9 * clamp), (1.5, clamp)):
        weighted = box_ops.decode_boxes(
            np.array([[0.0, 0.0, 5 * clamp * factor, 0.0]], np.float32), anchors, (10, 10, 5, 5)
        ).numpy()[0]
        assert weighted[2] - weighted[0] == pytest.approx(16 * math.exp(expected_dh), rel=1e-5)
    custom = box_ops.decode_boxes(deltas, anchors, scale_clamp=1.0).numpy()[0]
    assert custom[2] - custom[0] == pytest.approx(16 * math.e, rel=1e-5)


def test_clip_boxes_per_image_shapes():
    boxes = np.array(
        [
            [[-5, -5, 50, 70], [10, 10, 20, 20]],
            [[-1, 3, 120, 200], [90, 90, 95, 300]],
        ],
        np.float32,
    )
    image_shape = np.array([[40, 60], [100, 150]], np.float32)
    got = box_ops.clip_boxes(boxes, image_shape).numpy()
    h = image_shape[:, 0][:, None]
    w = image_shape[:, 1][:, None]
    expected = np.stack(
        [
            np.clip(boxes[..., 0], 0, h),
            np.clip(boxes[..., 1], 0, w),
            np.clip(boxes[..., 2], 0, h),
            np.clip(boxes[..., 3], 0, w),
        ],
        axis=-1,
    )
    np.testing.assert_array_equal(got, expected)
    # A single [2] shape for every image, and [N, 4] boxes with a [2] shape.
    np.testing.assert_array_equal(box_ops.clip_boxes(boxes, [40.0, 60.0]).numpy()[0], expected[0])
    np.testing.assert_array_equal(box_ops.clip_boxes(boxes[1], image_shape[1]).numpy(), expected[1])


def test_clip_boxes_in_tf_function_with_dynamic_batch():
    fn = tf.function(
        box_ops.clip_boxes,
        input_signature=[tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, 2])],
    )
    boxes = np.array([[[-1, -1, 500, 500]]], np.float32)
    np.testing.assert_array_equal(fn(boxes, [[30.0, 40.0]]).numpy(), [[[0, 0, 30, 40]]])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="boxes"):
        box_ops.box_area(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="weights"):
        box_ops.encode_boxes(np.zeros((1, 4)), np.ones((1, 4)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="image_shape"):
        box_ops.clip_boxes(np.zeros((2, 3, 4), np.float32), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="image_shape"):
        box_ops.clip_boxes(np.zeros((2, 3, 5, 4), np.float32), np.ones((2, 2), np.float32))
