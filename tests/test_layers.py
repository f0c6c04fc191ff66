"""Every layer: rebuilt from its config it computes the same outputs (every constructor argument
in `get_config`), plus numeric checks of the layers whose logic lives outside ops/ (sampling,
targets, losses, detections)."""

import importlib
import inspect
import pkgutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_maskrcnn.heads
import keras_maskrcnn.layers
from keras_maskrcnn.backbones import tiny_spec
from keras_maskrcnn.heads import BoxHead, MaskHead, RPNHead
from keras_maskrcnn.heads.res5_head import Res5BoxHead, Res5Head
from keras_maskrcnn.layers import targets
from keras_maskrcnn.layers.anchors import AnchorGenerator, SingleLevelAnchorGenerator
from keras_maskrcnn.layers.detections import DetectionLayer, MaskSelector
from keras_maskrcnn.layers.losses import BoxHeadLoss, MaskLoss, RPNLoss, smooth_l1
from keras_maskrcnn.layers.pooler import MultiLevelRoIAlign
from keras_maskrcnn.layers.preprocessing import ImageNormalization
from keras_maskrcnn.layers.proposals import ProposalLayer
from keras_maskrcnn.layers.targets import AnchorTargetLayer, DetectionTargetLayer
from keras_maskrcnn.layers.upsample import PatchConvTranspose
from keras_maskrcnn.ops import sampling

CANVAS = 64


def _normal(rng, *shape, scale=1.0):
    return tf.constant(rng.normal(0.0, scale, shape), tf.float32)


def _boxes(rng, *shape, size=CANVAS, min_side=4.0):
    """`[*shape, 4]` float32 (y1, x1, y2, x2) boxes inside a `size` square."""
    corner = rng.uniform(0, size - 2 * min_side, shape + (2,))
    side = rng.uniform(min_side, size / 2, shape + (2,))
    return tf.constant(np.concatenate([corner, np.minimum(corner + side, size)], -1), tf.float32)


def _int(values):
    return tf.constant(values, tf.int32)


# Each case sets every constructor argument to a non-default value where it has one, so that a
# field missing from get_config changes the rebuilt layer.
CASES = {
    "ImageNormalization": (
        lambda: ImageNormalization(mean=(10.0, 20.0, 30.0), std=(2.0, 3.0, 4.0), bgr=True),
        lambda rng: (tf.constant(rng.uniform(0, 255, (2, 16, 16, 3)), tf.float32),
                     tf.constant([[10.0, 12.0], [16.0, 8.0]]))),
    "AnchorGenerator": (
        lambda: AnchorGenerator(strides=(8, 16, 32, 64, 128), sizes=(16, 40, 80, 160, 320),
                                aspect_ratios=(0.5, 2.0), offset=0.5, round_base=True,
                                stride_from_grid=True),
        lambda rng: (tf.zeros((1, 96, 160, 3)),)),
    "ProposalLayer": (
        lambda: ProposalLayer(level_sizes=(48, 12), pre_nms_topk=10, post_nms_topk=5,
                              nms_threshold=0.6, min_box_size=2.0),
        lambda rng: (_normal(rng, 2, 60), _normal(rng, 2, 60, 4, scale=0.2), _boxes(rng, 60),
                     tf.constant([[64.0, 64.0], [50.0, 60.0]]))),
    "MultiLevelRoIAlign": (
        lambda: MultiLevelRoIAlign(output_size=5, sampling_ratio=2, aligned=False,
                                   method="align", min_level=3, canonical_size=112.0,
                                   canonical_level=3, implementation="gather"),
        lambda rng: ([_normal(rng, 2, 8, 8, 3), _normal(rng, 2, 4, 4, 3),
                      _normal(rng, 2, 2, 2, 3)], _boxes(rng, 2, 4))),
    "MultiLevelRoIAlign-pool": (
        lambda: MultiLevelRoIAlign(output_size=3, method="pool", canonical_size=64.0),
        lambda rng: ([_normal(rng, 2, 16, 16, 3), _normal(rng, 2, 8, 8, 3),
                      _normal(rng, 2, 4, 4, 3), _normal(rng, 2, 2, 2, 3)], _boxes(rng, 2, 4))),
    "DetectionLayer": (
        lambda: DetectionLayer(score_threshold=0.2, nms_threshold=0.4, max_detections=6,
                               min_box_size=1.0, box_coder_weights=(5.0, 5.0, 2.0, 2.0)),
        lambda rng: (_boxes(rng, 2, 8), _int([8, 5]), _normal(rng, 2, 8, 4, scale=3.0),
                     _normal(rng, 2, 8, 3, 4, scale=0.5), tf.constant([[64.0, 64.0],
                                                                       [40.0, 64.0]]))),
    "MaskSelector": (
        MaskSelector,
        lambda rng: (_normal(rng, 2, 3, 6, 6, 4), _int([[1, 4, 0], [2, 3, 3]]))),
    "AnchorTargetLayer": (
        lambda: AnchorTargetLayer(positive_iou=0.6, negative_iou=0.4, batch_per_image=16,
                                  positive_fraction=0.25, quota_rounding="floor"),
        lambda rng: (_boxes(rng, 40), _boxes(rng, 2, 3), _int([[1, 2, 0], [3, -1, 1]]),
                     _int([[1, 2], [3, 4]]))),
    "DetectionTargetLayer": (
        lambda: DetectionTargetLayer(batch_per_image=7, positive_fraction=0.5,
                                     foreground_iou=0.4, box_coder_weights=(5.0, 5.0, 2.0, 2.0),
                                     mask_size=6, trim_masks=True, quota_rounding="floor",
                                     mask_target_rule="torchvision"),
        lambda rng: (_boxes(rng, 2, 10), _int([10, 7]), _boxes(rng, 2, 3),
                     _int([[1, 2, 0], [3, 3, 1]]),
                     tf.constant(rng.uniform(size=(2, 3, CANVAS, CANVAS)) > 0.5, tf.uint8),
                     _int([[5, 6], [7, 8]]), tf.constant([[64.0, 64.0], [50.0, 60.0]]))),
    "DetectionTargetLayer-detectron2": (
        lambda: DetectionTargetLayer(batch_per_image=8, positive_fraction=0.5,
                                     foreground_iou=0.4, box_coder_weights=(5.0, 5.0, 2.0, 2.0),
                                     mask_size=6, trim_masks=True),
        lambda rng: (_boxes(rng, 2, 10), _int([10, 7]), _boxes(rng, 2, 3),
                     _int([[1, 2, 0], [3, 3, 1]]),
                     tf.constant(rng.uniform(size=(2, 3, 12, 12)) > 0.5, tf.float32),
                     _int([[5, 6], [7, 8]]))),
    "RPNLoss": (
        lambda: RPNLoss(batch_per_image=32, beta=0.2, normalizer="sampled"),
        lambda rng: (_normal(rng, 2, 20), _normal(rng, 2, 20, 4), _int(rng.integers(-1, 2, (2, 20))),
                     _normal(rng, 2, 20, 4))),
    "BoxHeadLoss": (
        lambda: BoxHeadLoss(beta=0.3),
        lambda rng: (_normal(rng, 2, 6, 4), _normal(rng, 2, 6, 3, 4), _int(rng.integers(0, 4, (2, 6))),
                     _normal(rng, 2, 6, 4), tf.constant(rng.uniform(size=(2, 6)) > 0.3, tf.float32))),
    "MaskLoss": (
        MaskLoss,
        lambda rng: (_normal(rng, 2, 3, 6, 6, 4), _int([[1, 4, 2], [3, 0, 0]]),
                     tf.constant(rng.uniform(size=(2, 3, 6, 6)) > 0.5, tf.float32),
                     tf.constant([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))),
    "RPNHead": (
        lambda: RPNHead(num_anchors=3, channels=8),
        lambda rng: ([_normal(rng, 2, 8, 8, 6), _normal(rng, 2, 4, 4, 6)],)),
    "RPNHead-v2": (
        lambda: RPNHead(num_anchors=2, channels=8, num_convs=2),
        lambda rng: ([_normal(rng, 2, 8, 8, 6), _normal(rng, 2, 4, 4, 6)],)),
    "BoxHead": (
        lambda: BoxHead(num_classes=3, fc_dim=16, conv_dim=4, num_fcs=3),
        lambda rng: (_normal(rng, 2, 3, 5, 5, 6),)),
    "BoxHead-v2": (
        lambda: BoxHead(num_classes=3, conv_dim=8, num_convs=2, fc_dim=16, num_fcs=1, norm="bn"),
        lambda rng: (_normal(rng, 2, 3, 5, 5, 6),)),
    "MaskHead": (
        lambda: MaskHead(num_classes=3, conv_dim=8, num_convs=2),
        lambda rng: (_normal(rng, 2, 3, 6, 6, 6),)),
    "MaskHead-v2": (
        lambda: MaskHead(num_classes=2, conv_dim=8, num_convs=3, norm="bn"),
        lambda rng: (_normal(rng, 2, 3, 6, 6, 6),)),
    "PatchConvTranspose": (
        lambda: PatchConvTranspose(4, (2, 3), activation="relu", use_bias=False),
        lambda rng: (_normal(rng, 2, 3, 4, 5),)),
    "SingleLevelAnchorGenerator": (
        lambda: SingleLevelAnchorGenerator(stride=8, sizes=(16, 32), aspect_ratios=(0.5, 2.0),
                                           offset=0.5, round_base=True, stride_from_grid=True),
        lambda rng: (tf.zeros((1, 40, 56, 3)),)),
    "Res5Head": (
        lambda: Res5Head(tiny_spec((4, 4, 8, 8)), norm="bn", stride_in_1x1=True),
        lambda rng: (_normal(rng, 2, 3, 6, 6, 8 * 4),)),
    "Res5BoxHead": (
        lambda: Res5BoxHead(num_classes=3),
        lambda rng: (_normal(rng, 2, 3, 3, 3, 6),)),
}


def _randomize(layer, rng):
    """Random weights (BatchNorm scales and variances positive), so that a wrongly rebuilt layer
    cannot match by the symmetry of its initialization."""
    for w in layer.weights:
        if w.path.endswith(("gamma", "moving_variance")):
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype(w.dtype))
        else:
            w.assign(rng.normal(0.0, 0.3, w.shape).astype(w.dtype))


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_rebuilt_from_config_gives_same_outputs(case):
    make, make_inputs = CASES[case]
    inputs = make_inputs(np.random.default_rng(0))
    layer = make()
    layer(*inputs)
    _randomize(layer, np.random.default_rng(1))
    expected = tf.nest.flatten(layer(*inputs))

    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"keras_maskrcnn>{type(layer).__name__}"
    config = layer.get_config()
    init = type(layer).__dict__.get("__init__")
    if init is not None:
        arguments = [n for n, p in inspect.signature(init).parameters.items()
                     if n != "self" and p.kind is not p.VAR_KEYWORD]
        assert not set(arguments) - set(config), "get_config misses constructor arguments"
    clone = type(layer).from_config(config)
    clone(*inputs)
    assert len(clone.weights) == len(layer.weights)
    clone.set_weights(layer.get_weights())
    got = tf.nest.flatten(clone(*inputs))
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-6, atol=1e-6)


def test_every_registered_layer_has_a_round_trip_case():
    packages = (keras_maskrcnn.layers.__name__, keras_maskrcnn.heads.__name__)
    for package in (keras_maskrcnn.layers, keras_maskrcnn.heads):
        for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
    registered = {name.split(">", 1)[1] for name, obj in keras.saving.get_custom_objects().items()
                  if name.startswith("keras_maskrcnn>") and obj.__module__.startswith(packages)}
    assert registered == {case.split("-")[0] for case in CASES}


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


def test_used_length_from_definition():
    in_use = np.zeros((3, 9), bool)
    in_use[0, [0, 2]] = True
    in_use[2, 6] = True  # a gap before it: the length still reaches it
    assert int(targets.used_length(tf.constant(in_use))) == 7
    assert int(targets.used_length(tf.constant(np.zeros((2, 5), bool)))) == 1


def _padded_ground_truth(rng, counts, padded):
    """gt_boxes [B, padded, 4], gt_classes (objects, one crowd in image 0, then zeros),
    gt_masks [B, padded, 8, 8]."""
    boxes = _boxes(rng, len(counts), padded).numpy()
    classes = np.zeros((len(counts), padded), np.int32)
    for b, n in enumerate(counts):
        classes[b, :n] = rng.integers(1, 4, n)
        boxes[b, n:] = 0.0
    classes[0, 1] = -1
    masks = (rng.uniform(size=(len(counts), padded, 8, 8)) > 0.5).astype(np.float32)
    return tf.constant(boxes), tf.constant(classes), tf.constant(masks)


def test_trimmed_padding_gives_the_static_targets(monkeypatch):
    """Outside XLA the matching uses only the ground-truth columns in use and the mask outputs
    only the foreground slots in use; the targets equal the static (XLA) formulation's."""
    rng = np.random.default_rng(3)
    gt_boxes, gt_classes, gt_masks = _padded_ground_truth(rng, [3, 5], padded=12)
    anchors = _boxes(rng, 300)
    proposals = tf.concat([gt_boxes[:, :5] + rng.uniform(-3, 3, (2, 5, 4)).astype(np.float32),
                           _boxes(rng, 2, 40)], axis=1)
    seeds = _int([[1, 2], [3, 4]])
    anchor_layer = AnchorTargetLayer(batch_per_image=64)
    roi_layer = DetectionTargetLayer(batch_per_image=32, positive_fraction=0.5, mask_size=6,
                                     trim_masks=True)
    anchor_trimmed = anchor_layer(anchors, gt_boxes, gt_classes, seeds)
    trimmed = roi_layer(proposals, _int([45, 30]), gt_boxes, gt_classes, gt_masks, seeds)
    monkeypatch.setattr(targets, "in_xla_context", lambda: True)  # the static formulation
    anchor_static = anchor_layer(anchors, gt_boxes, gt_classes, seeds)
    static = roi_layer(proposals, _int([45, 30]), gt_boxes, gt_classes, gt_masks, seeds)
    for a, b in zip(anchor_trimmed, anchor_static, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int((anchor_static[0].numpy() == 1).sum()) > 0
    used = int(static["mask_weights"].numpy().sum(1).max())
    assert 0 < used < static["mask_weights"].shape[1]  # something to trim
    for name, value in static.items():
        got = trimmed[name].numpy()
        if name.startswith("mask_"):
            assert got.shape[1] == used, name
            rest = value.numpy()[:, used:]
            assert not rest.any() if name != "mask_rois" else True
            value = value[:, :used]
        np.testing.assert_array_equal(got, value.numpy(), err_msg=name)


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


def test_positive_quota_round_and_floor():
    assert sampling.positive_quota(7, 0.25) == 2  # 1.75 rounds
    assert sampling.positive_quota(7, 0.25, "floor") == 1  # torchvision: int(1.75)
    assert sampling.positive_quota(10, 0.25) == 2 and sampling.positive_quota(14, 0.25) == 4
    assert sampling.positive_quota(512, 0.25, "floor") == 128
    # The candidates clip: "round" rounds the clipped count, "floor" clips the quota.
    assert sampling.positive_quota(1000, 0.5, "round", 9) == 4
    assert sampling.positive_quota(1000, 0.5, "floor", 9) == 9
    with pytest.raises(ValueError, match="quota rounding"):
        sampling.positive_quota(8, 0.5, "ceil")


def test_subsample_labels_floor_quota_like_torchvision():
    pos = np.zeros((1, 100), bool)
    pos[0, :40] = True
    for rounding, expected in (("round", 2), ("floor", 1)):
        sp, sn = sampling.subsample_labels(tf.constant(pos), tf.constant(~pos), 7, 0.25,
                                           rounding=rounding)
        assert sp.numpy().sum() == expected and sn.numpy().sum() == 7 - expected


def test_rpn_loss_sampled_normalizer_is_the_sampled_count():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 30)).astype(np.float32)
    deltas = rng.normal(size=(2, 30, 4)).astype(np.float32)
    targets = rng.normal(size=(2, 30, 4)).astype(np.float32)
    labels = rng.integers(-1, 2, size=(2, 30)).astype(np.int32)
    obj, box = RPNLoss(batch_per_image=256, beta=0.0, normalizer="sampled")(
        logits, deltas, labels, targets)
    y = (labels == 1).astype(np.float32)
    bce = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
    count = (labels >= 0).sum()  # torchvision: mean over sampled anchors, sum / their count
    np.testing.assert_allclose(obj, (bce * (labels >= 0)).sum() / count, rtol=1e-5)
    np.testing.assert_allclose(box, (np.abs(deltas - targets) * y[..., None]).sum() / count,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="normalizer"):
        RPNLoss(normalizer="mean")


def test_torchvision_mask_targets_are_roi_align_of_the_canvas_masks():
    """The "torchvision" rule: soft targets = RoIAlign (aligned=False, adaptive ratio) of the
    matched full-resolution mask, from the definition (tests/reference_roi_align.py)."""
    from reference_roi_align import roi_align_np

    rng = np.random.default_rng(5)
    masks = np.zeros((1, 2, CANVAS, CANVAS), np.uint8)
    masks[0, 0, 10:30, 12:40] = 1
    masks[0, 1, 35:60, 5:25] = rng.uniform(size=(25, 20)) < 0.7
    gt_boxes = tf.constant([[[10, 12, 30, 40], [35, 5, 60, 25]]], tf.float32)
    proposals = tf.constant([[[9, 11, 31, 38], [36, 4, 58, 27], [11.5, 13.2, 28.7, 41.0],
                              [0, 40, 20, 60]]], tf.float32)
    layer = DetectionTargetLayer(batch_per_image=16, positive_fraction=1.0, mask_size=7,
                                 mask_target_rule="torchvision")
    t = layer(proposals, _int([4]), gt_boxes, _int([[1, 2]]), tf.constant(masks),
              image_shape=tf.constant([[64.0, 64.0]]))
    fg = t["mask_weights"].numpy()[0] > 0
    assert fg.sum() == 5  # 3 proposals + 2 ground-truth boxes
    rois = t["mask_rois"].numpy()[0][fg]
    matched = t["mask_classes"].numpy()[0][fg] - 1  # class k is ground truth k - 1 here
    expected = roi_align_np(masks[0][:, :, :, None].astype(np.float64), rois, matched, (7, 7),
                            1.0, 0, False)[..., 0]
    got = t["mask_targets"].numpy()[0][fg]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.any((got > 0.01) & (got < 0.99))  # soft, not thresholded
