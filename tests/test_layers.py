"""Every layer: config round trip through Keras serialization, plus numeric checks of the layers
whose logic lives outside ops/ (sampling, targets, losses, detections)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.heads import BoxHead, MaskHead, RPNHead
from keras_maskrcnn.layers.anchors import AnchorGenerator
from keras_maskrcnn.layers.detections import DetectionLayer, MaskSelector
from keras_maskrcnn.layers.losses import BoxHeadLoss, MaskLoss, RPNLoss, smooth_l1
from keras_maskrcnn.layers.pooler import MultiLevelRoIAlign
from keras_maskrcnn.layers.preprocessing import ImageNormalization
from keras_maskrcnn.layers.proposals import ProposalLayer
from keras_maskrcnn.layers.targets import AnchorTargetLayer, DetectionTargetLayer
from keras_maskrcnn.ops import sampling

LAYERS = [
    ImageNormalization(bgr=True),
    AnchorGenerator(sizes=(16, 32, 64, 128, 256), round_base=True),
    RPNHead(num_anchors=3, channels=8),
    ProposalLayer(level_sizes=(48, 12), pre_nms_topk=10, post_nms_topk=5),
    MultiLevelRoIAlign(output_size=7, sampling_ratio=2, aligned=False, method="pool"),
    BoxHead(num_classes=3, fc_dim=16),
    MaskHead(num_classes=3, conv_dim=8, num_convs=2),
    DetectionLayer(score_threshold=0.1, max_detections=7),
    MaskSelector(),
    AnchorTargetLayer(batch_per_image=64),
    DetectionTargetLayer(batch_per_image=32, mask_size=14),
    RPNLoss(batch_per_image=64, beta=1 / 9),
    BoxHeadLoss(beta=0.5),
    MaskLoss(),
]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: type(layer).__name__)
def test_layer_serialization_round_trip(layer):
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"].startswith("keras_maskrcnn>")
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()


def test_image_normalization_zeroes_padding():
    layer = ImageNormalization(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
    images = np.full((1, 4, 6, 3), 50.0, np.float32)
    out = layer(images, np.array([[2.0, 3.0]], np.float32)).numpy()
    np.testing.assert_allclose(out[0, :2, :3], np.broadcast_to([20.0, 7.5, 4.0], (2, 3, 3)))
    assert np.all(out[0, 2:] == 0) and np.all(out[0, :, 3:] == 0)


def test_subsample_labels_respects_budget_and_fraction():
    rng = np.random.default_rng(0)
    pos = rng.uniform(size=(3, 500)) < 0.3
    neg = ~pos & (rng.uniform(size=(3, 500)) < 0.8)
    sp, sn = sampling.subsample_labels(tf.constant(pos), tf.constant(neg), 64, 0.25)
    sp, sn = sp.numpy(), sn.numpy()
    assert np.all(sp.sum(1) == 16) and np.all(sn.sum(1) == 48)
    assert not np.any(sp & ~pos) and not np.any(sn & ~neg)
    # Few positives: negatives fill the budget.
    few = np.zeros((1, 500), bool)
    few[0, :3] = True
    sp, sn = sampling.subsample_labels(tf.constant(few), tf.constant(~few), 64, 0.25)
    assert sp.numpy().sum() == 3 and sn.numpy().sum() == 61


def test_anchor_targets_match_definition():
    anchors = tf.constant([[0, 0, 10, 10], [0, 0, 10, 12], [20, 20, 30, 30], [50, 50, 60, 60],
                           [0, 0, 5, 5]], tf.float32)
    gt_boxes = tf.constant([[[0, 0, 10, 10], [21, 21, 29, 29], [0, 0, 0, 0]]], tf.float32)
    gt_classes = tf.constant([[1, 2, 0]], tf.int32)
    layer = AnchorTargetLayer(positive_iou=0.7, negative_iou=0.3, batch_per_image=5,
                              positive_fraction=1.0)
    labels, targets = layer(anchors, gt_boxes, gt_classes)
    # IoUs: a0-g0 1.0, a1-g0 0.833, a2-g1 0.64 (best for g1 -> positive), a3 0, a4-g0 0.25.
    np.testing.assert_array_equal(labels.numpy()[0], [1, 1, 1, 0, 0])
    np.testing.assert_allclose(targets.numpy()[0, 0], 0.0, atol=1e-6)
    assert np.all(targets.numpy()[0, 3:] == 0)


def test_anchor_targets_ignore_crowd_and_empty_images():
    anchors = tf.constant([[0, 0, 10, 10], [40, 40, 50, 50]], tf.float32)
    gt_boxes = tf.constant([[[35, 35, 60, 60]], [[0, 0, 0, 0]]], tf.float32)
    gt_classes = tf.constant([[-1], [0]], tf.int32)
    labels, _ = AnchorTargetLayer(batch_per_image=4)(anchors, gt_boxes, gt_classes)
    np.testing.assert_array_equal(labels.numpy(), [[0, -1], [0, 0]])


def test_detection_targets_put_foreground_first_with_targets():
    proposals = tf.constant([[[0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 40, 40], [0, 0, 0, 0]]],
                            tf.float32)
    gt_boxes = tf.constant([[[0, 0, 10, 10], [0, 0, 0, 0]]], tf.float32)
    gt_classes = tf.constant([[2, 0]], tf.int32)
    gt_masks = tf.ones((1, 2, 8, 8), tf.float32)
    layer = DetectionTargetLayer(batch_per_image=4, positive_fraction=0.5, mask_size=4)
    t = layer(proposals, tf.constant([3]), gt_boxes, gt_classes, gt_masks)
    # Candidates: 3 valid proposals + 1 gt. Foreground: p0, p1 (IoU 0.68), gt -> 2 sampled of 3.
    cls = t["class_targets"].numpy()[0]
    np.testing.assert_array_equal(cls[:2], [2, 2])
    assert t["weights"].numpy()[0].sum() == 3  # 2 fg + the only background (p2)
    assert cls[2] == 0
    np.testing.assert_array_equal(t["mask_weights"].numpy()[0], [1, 1])
    assert t["mask_targets"].shape == (1, 2, 4, 4)


def test_losses_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 6)).astype(np.float32)
    deltas = rng.normal(size=(2, 6, 4)).astype(np.float32)
    labels = np.array([[1, 0, -1, 0, 1, -1], [0, 0, 0, -1, -1, -1]], np.int32)
    targets = rng.normal(size=(2, 6, 4)).astype(np.float32)
    obj, box = RPNLoss(batch_per_image=4, beta=0.0)(logits, deltas, labels, targets)
    y = (labels == 1).astype(np.float32)
    bce = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
    np.testing.assert_allclose(obj, (bce * (labels >= 0)).sum() / 8, rtol=1e-5)
    np.testing.assert_allclose(box, (np.abs(deltas - targets) * y[..., None]).sum() / 8, rtol=1e-5)

    x = np.linspace(-2, 2, 9).astype(np.float32)
    expected = np.where(np.abs(x) < 0.5, 0.5 * x**2 / 0.5, np.abs(x) - 0.25)
    np.testing.assert_allclose(smooth_l1(tf.constant(x), 0.5), expected, rtol=1e-6)


def test_mask_loss_uses_only_gt_class_channel_of_foreground():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 2, 4, 4, 3)).astype(np.float32)
    targets = (rng.uniform(size=(1, 2, 4, 4)) > 0.5).astype(np.float32)
    loss = MaskLoss()(logits, np.array([[3, 1]]), targets, np.array([[1.0, 0.0]], np.float32))
    z = logits[0, 0, :, :, 2]
    t = targets[0, 0]
    expected = np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_detection_layer_per_class_nms_and_padding():
    rois = tf.constant([[[10, 10, 50, 50], [12, 12, 52, 52], [100, 100, 140, 140], [0, 0, 0, 0]]],
                       tf.float32)
    # Class logits: rois 0 and 1 both class 1 (overlap -> NMS keeps roi 0), roi 2 class 2.
    logits = tf.constant([[[0, 5, 0], [0, 4, 0], [0, 0, 6], [9, 0, 0]]], tf.float32)
    deltas = tf.zeros((1, 4, 2, 4))
    boxes, scores, classes, num = DetectionLayer(score_threshold=0.3, nms_threshold=0.5,
                                                 max_detections=5)(
        rois, tf.constant([3]), logits, deltas, tf.constant([[200.0, 200.0]]))
    assert int(num[0]) == 2
    np.testing.assert_array_equal(classes.numpy()[0], [2, 1, 0, 0, 0])
    np.testing.assert_allclose(boxes.numpy()[0, :2], [[100, 100, 140, 140], [10, 10, 50, 50]])
    assert np.all(boxes.numpy()[0, 2:] == 0) and np.all(scores.numpy()[0, 2:] == 0)
