"""The model-body layers and heads ported to keras.ops, on every backend, against numpy written
from their definitions: anchors, image normalization, proposals (per-level top-k, decode, clip,
per-level NMS), detections (softmax, per-class decode and NMS), mask selection, and the RPN, box,
mask and res5 box heads with their own weights. Equal references on every backend mean equal
outputs across backends."""

from __future__ import annotations

import math
from importlib import import_module

import keras
import numpy as np
import pytest

anchor_ops = import_module("keras_maskrcnn.ops.anchors")
anchor_layers = import_module("keras_maskrcnn.layers.anchors")
preprocessing = import_module("keras_maskrcnn.layers.preprocessing")
proposals_layer = import_module("keras_maskrcnn.layers.proposals")
detections_layer = import_module("keras_maskrcnn.layers.detections")
heads = import_module("keras_maskrcnn.heads")
res5_head = import_module("keras_maskrcnn.heads.res5_head")

NEG_INF = float("-inf")


def _np(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


# --------------------------------------------------------------------------- numpy references


def _np_decode(deltas, anchors, weights):
    wy, wx, wh, ww = weights
    deltas = deltas.astype(np.float64)
    anchors = anchors.astype(np.float64)
    ha, wa = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    cy = anchors[..., 0] + ha / 2 + deltas[..., 0] / wy * ha
    cx = anchors[..., 1] + wa / 2 + deltas[..., 1] / wx * wa
    h = np.exp(np.minimum(deltas[..., 2] / wh, math.log(1000 / 16))) * ha
    w = np.exp(np.minimum(deltas[..., 3] / ww, math.log(1000 / 16))) * wa
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def _np_clip(boxes, height, width):
    upper = np.array([height, width, height, width], np.float64)
    return np.minimum(np.maximum(boxes, 0.0), upper)


def _np_iou(a, b) -> float:
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    if area_a <= 0 or area_b <= 0:
        return 0.0
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    return inter / (area_a + area_b - inter)


def _np_nms(boxes, scores, max_output_size, iou_threshold, score_threshold, groups):
    keep: list[int] = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if len(keep) == max_output_size:
            break
        if scores[i] > score_threshold and not any(
                groups[j] == groups[i] and _np_iou(boxes[i], boxes[j]) > iou_threshold for j in keep):
            keep.append(i)
    return keep


def _np_conv(x, kernel, bias=None):
    """'same' 2D convolution, stride 1: x [N, H, W, C], kernel [kh, kw, C, F] (odd kh, kw)."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
    out = np.zeros(x.shape[:3] + (kernel.shape[3],))
    for dy in range(kh):
        for dx in range(kw):
            out += padded[:, dy:dy + x.shape[1], dx:dx + x.shape[2]] @ kernel[dy, dx]
    return out if bias is None else out + bias


def _relu(x):
    return np.maximum(x, 0.0)


def _randomize(layer, rng):
    layer.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in layer.get_weights()])


# --------------------------------------------------------------------------- anchors, images


def test_anchor_generators_equal_numpy_anchors(backend):
    images = np.zeros((1, 64, 96, 3), np.float32)
    layer = anchor_layers.AnchorGenerator(strides=(8, 16), sizes=(32, 64), offset=0.5)
    anchors, sizes = layer(images, with_level_sizes=True)
    expected = anchor_ops.generate_anchors((64, 96), strides=(8, 16), sizes=(32, 64), offset=0.5)
    np.testing.assert_array_equal(_np(anchors), expected)
    np.testing.assert_array_equal(_np(sizes), [8 * 12 * 3, 4 * 6 * 3])
    single = anchor_layers.SingleLevelAnchorGenerator(stride=16, sizes=(32, 64))
    out = _np(single(images))
    assert out.shape == (4 * 6 * 6, 4)
    # location-major, then size, then ratio: the 6 anchors of a cell share a centre
    np.testing.assert_allclose((out[:6, 0] + out[:6, 2]) / 2, 0.0)
    np.testing.assert_allclose(out[6:12, 1] + out[6:12, 3], 2 * 16.0)


@pytest.mark.parametrize("bgr", [False, True])
def test_image_normalization(backend, bgr):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 8, 12, 3)).astype(np.float32)
    image_shape = np.array([[8, 12], [5, 7]], np.float32)
    layer = preprocessing.ImageNormalization(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0), bgr=bgr)
    out = _np(layer(images, image_shape))
    pixels = images[..., ::-1] if bgr else images
    expected = (pixels - np.array([10.0, 20.0, 30.0])) / np.array([2.0, 4.0, 8.0])
    expected[1, 5:] = 0.0
    expected[1, :, 7:] = 0.0
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-5)


# --------------------------------------------------------------------------- proposals


def _np_proposals(logits, deltas, anchors, image_shape, level_sizes, pre, post, threshold, min_size):
    out = np.zeros((logits.shape[0], post, 4))
    counts = []
    for b in range(logits.shape[0]):
        boxes, scores, levels, start = [], [], [], 0
        for level, n in enumerate(level_sizes):
            order = np.argsort(-logits[b, start:start + n], kind="stable")[:min(pre, n)] + start
            level_boxes = _np_clip(_np_decode(deltas[b, order], anchors[order], (1, 1, 1, 1)),
                                   *image_shape[b])
            h = level_boxes[:, 2] - level_boxes[:, 0]
            w = level_boxes[:, 3] - level_boxes[:, 1]
            keep = (h >= min_size) & (w >= min_size) & (h > 0) & (w > 0)
            probs = 1.0 / (1.0 + np.exp(-logits[b, order].astype(np.float64)))
            boxes.append(level_boxes)
            scores.append(np.where(keep, probs, -1.0))
            levels += [level] * len(order)
            start += n
        boxes, scores = np.concatenate(boxes), np.concatenate(scores)
        kept = _np_nms(boxes, scores, post, threshold, -0.5, levels)
        out[b, :len(kept)] = boxes[kept]
        counts.append(len(kept))
    return out, np.array(counts)


def _proposal_case(rng):
    anchors = anchor_ops.generate_anchors((64, 64), strides=(8, 16), sizes=(24, 48))
    n = len(anchors)
    logits = rng.normal(0, 2, (2, n)).astype(np.float32)
    deltas = rng.normal(0, 0.3, (2, n, 4)).astype(np.float32)
    image_shape = np.array([[64, 64], [50, 40]], np.float32)
    return logits, deltas, anchors, image_shape, (8 * 8 * 3, 4 * 4 * 3)


def test_proposal_layer_matches_numpy(backend):
    rng = np.random.default_rng(1)
    logits, deltas, anchors, image_shape, level_sizes = _proposal_case(rng)
    layer = proposals_layer.ProposalLayer(level_sizes, pre_nms_topk=60, post_nms_topk=40,
                                          nms_threshold=0.6, min_box_size=6.0)
    proposals, num_valid = layer(logits, deltas, anchors, image_shape)
    expected, counts = _np_proposals(logits, deltas, anchors, image_shape, level_sizes, 60, 40,
                                     0.6, 6.0)
    assert counts.min() > 5
    np.testing.assert_array_equal(_np(num_valid), counts)
    np.testing.assert_allclose(_np(proposals), expected, rtol=0, atol=1e-3)


# --------------------------------------------------------------------------- detections


def _np_detections(rois, num_rois, class_logits, deltas, image_shape, score_threshold,
                   nms_threshold, max_detections, min_size):
    batch, count, num_classes = deltas.shape[:3]
    exp = np.exp(class_logits - class_logits.max(-1, keepdims=True))
    probs = (exp / exp.sum(-1, keepdims=True))[..., 1:]
    out_boxes = np.zeros((batch, max_detections, 4))
    out_scores = np.zeros((batch, max_detections))
    out_classes = np.zeros((batch, max_detections), np.int32)
    counts = []
    for b in range(batch):
        boxes = _np_clip(_np_decode(deltas[b], rois[b][:, None], (10, 10, 5, 5)), *image_shape[b])
        h, w = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        keep = (np.arange(count) < num_rois[b])[:, None] & (h >= min_size) & (w >= min_size)
        scores = np.where(keep, probs[b], -1.0).reshape(-1)
        boxes = boxes.reshape(-1, 4)
        classes = np.tile(np.arange(1, num_classes + 1), count)
        kept = _np_nms(boxes, scores, max_detections, nms_threshold, score_threshold, classes)
        out_boxes[b, :len(kept)] = boxes[kept]
        out_scores[b, :len(kept)] = scores[kept]
        out_classes[b, :len(kept)] = classes[kept]
        counts.append(len(kept))
    return out_boxes, out_scores, out_classes, np.array(counts)


def _detection_case(rng):
    y1x1 = rng.uniform(0, 40, (2, 24, 2))
    rois = np.concatenate([y1x1, y1x1 + rng.uniform(4, 24, (2, 24, 2))], -1).astype(np.float32)
    num_rois = np.array([24, 17], np.int32)
    class_logits = rng.normal(0, 1.5, (2, 24, 4)).astype(np.float32)
    deltas = rng.normal(0, 1.0, (2, 24, 3, 4)).astype(np.float32)
    image_shape = np.array([[64, 64], [48, 40]], np.float32)
    return rois, num_rois, class_logits, deltas, image_shape


def test_detection_layer_matches_numpy(backend):
    rng = np.random.default_rng(2)
    case = _detection_case(rng)
    layer = detections_layer.DetectionLayer(score_threshold=0.1, nms_threshold=0.5,
                                            max_detections=15, min_box_size=1.0)
    boxes, scores, classes, num = (_np(x) for x in layer(*case))
    ref_boxes, ref_scores, ref_classes, ref_num = _np_detections(*case, 0.1, 0.5, 15, 1.0)
    assert ref_num.min() > 3 and classes.dtype == np.int32 and num.dtype == np.int32
    np.testing.assert_array_equal(num, ref_num)
    np.testing.assert_array_equal(classes, ref_classes)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(boxes, ref_boxes, rtol=0, atol=1e-3)


def test_nms_layers_in_a_functional_model(backend):
    """Symbolic build (compute_output_spec: torch's meta tensors cannot run the NMS loop) and
    `predict` (jax.jit on JAX, tf.function on TensorFlow) give the eager outputs (to float32
    ulps: compiled arithmetic may fuse; the counts and classes are compared exactly)."""
    rng = np.random.default_rng(3)
    case = _detection_case(rng)
    inputs = [keras.Input(x.shape[1:], dtype=str(x.dtype)) for x in case]
    layer = detections_layer.DetectionLayer(score_threshold=0.1, max_detections=15)
    outputs = layer(*inputs)
    assert [tuple(o.shape) for o in outputs] == [(None, 15, 4), (None, 15), (None, 15), (None,)]
    model = keras.Model(inputs, outputs)
    for got, want in zip(model.predict(list(case), verbose=0), layer(*case), strict=True):
        np.testing.assert_allclose(got, _np(want), rtol=1e-6, atol=1e-5)  # compiled: ulps
    logits, deltas, anchors, image_shape, level_sizes = _proposal_case(rng)
    layer = proposals_layer.ProposalLayer(level_sizes, pre_nms_topk=30, post_nms_topk=20)
    ins = [keras.Input(logits.shape[1:]), keras.Input(deltas.shape[1:]), keras.Input((2,))]
    model = keras.Model(ins, layer(ins[0], ins[1], keras.ops.convert_to_tensor(anchors), ins[2]))
    got = model.predict([logits, deltas, image_shape], verbose=0)
    for x, y in zip(got, layer(logits, deltas, anchors, image_shape), strict=True):
        np.testing.assert_allclose(x, _np(y), rtol=1e-6, atol=1e-5)


def test_mask_selector(backend):
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, (2, 5, 3, 3, 4)).astype(np.float32)
    classes = np.array([[1, 4, 2, 0, 0], [3, 3, 0, 0, 0]], np.int32)
    out = _np(detections_layer.MaskSelector()(logits, classes))
    expected = np.zeros((2, 5, 3, 3))
    for b, d in np.ndindex(2, 5):
        if classes[b, d]:
            expected[b, d] = 1.0 / (1.0 + np.exp(-logits[b, d, :, :, classes[b, d] - 1]))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- heads


def test_rpn_head_matches_numpy(backend):
    rng = np.random.default_rng(5)
    features = [rng.normal(size=(2, 6, 5, 4)).astype(np.float32),
                rng.normal(size=(2, 3, 3, 4)).astype(np.float32)]
    head = heads.RPNHead(num_anchors=3, channels=6, num_convs=2)
    head(features)
    for layer in head.convs + [head.objectness, head.deltas]:
        _randomize(layer, rng)
    logits, deltas = (_np(x) for x in head(features))
    ref_logits, ref_deltas = [], []
    for x in features:
        for conv in head.convs:
            x = _relu(_np_conv(x, *conv.get_weights()))
        ref_logits.append(_np_conv(x, *head.objectness.get_weights()).reshape(2, -1))
        ref_deltas.append(_np_conv(x, *head.deltas.get_weights()).reshape(2, -1, 4))
    assert not hasattr(head, "conv")
    np.testing.assert_allclose(logits, np.concatenate(ref_logits, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(deltas, np.concatenate(ref_deltas, 1), rtol=1e-4, atol=1e-4)


def test_box_and_res5_box_heads_match_numpy(backend):
    rng = np.random.default_rng(6)
    pooled = rng.normal(size=(2, 3, 4, 4, 5)).astype(np.float32)
    head = heads.BoxHead(num_classes=2, conv_dim=6, num_convs=1, fc_dim=8, num_fcs=2)
    head(pooled)
    for layer in head.convs + head.fcs + [head.class_logits, head.box_deltas]:
        _randomize(layer, rng)
    logits, deltas = (_np(x) for x in head(pooled))
    x = _relu(_np_conv(pooled.reshape(6, 4, 4, 5), *head.convs[0].get_weights())).reshape(6, -1)
    for fc in head.fcs:
        kernel, bias = fc.get_weights()
        x = _relu(x @ kernel + bias)
    kernel, bias = head.class_logits.get_weights()
    np.testing.assert_allclose(logits, (x @ kernel + bias).reshape(2, 3, 3), rtol=1e-4, atol=1e-4)
    kernel, bias = head.box_deltas.get_weights()
    np.testing.assert_allclose(deltas, (x @ kernel + bias).reshape(2, 3, 2, 4), rtol=1e-4, atol=1e-4)
    assert not hasattr(head, "fc1")

    res5 = res5_head.Res5BoxHead(num_classes=2)
    logits, deltas = (_np(x) for x in res5(pooled))
    mean = pooled.reshape(6, 16, 5).mean(1)
    kernel, bias = res5.class_logits.get_weights()
    np.testing.assert_allclose(logits, (mean @ kernel + bias).reshape(2, 3, 3), rtol=1e-5, atol=1e-6)
    assert deltas.shape == (2, 3, 2, 4)


def test_mask_head_matches_numpy(backend):
    rng = np.random.default_rng(7)
    pooled = rng.normal(size=(1, 2, 3, 3, 4)).astype(np.float32)
    head = heads.MaskHead(num_classes=2, conv_dim=5, num_convs=1)
    head(pooled)
    for layer in head.convs + [head.upsample, head.predictor]:
        _randomize(layer, rng)
    out = _np(head(pooled))
    x = _relu(_np_conv(pooled.reshape(2, 3, 3, 4), *head.convs[0].get_weights()))
    kernel, bias = head.upsample.get_weights()  # [2, 2, out, in]
    up = np.zeros((2, 6, 6, 5))
    for a, b in np.ndindex(2, 2):
        up[:, a::2, b::2] = x @ kernel[a, b].T
    up = _relu(up + bias)
    expected = _np_conv(up, *head.predictor.get_weights()).reshape(1, 2, 6, 6, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_patch_conv_transpose_equals_keras_conv_transpose(backend):
    """The matrix-product upsampling gives Keras' own transposed convolution (same weights),
    for a non-square kernel with a bias and an activation, and refuses overlapping kernels."""
    upsample = import_module("keras_maskrcnn.layers.upsample")
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    layer = upsample.PatchConvTranspose(6, (2, 3), activation="relu")
    layer(x)
    _randomize(layer, rng)
    out = _np(layer(x))  # the native op on TensorFlow, the matrix product elsewhere
    np.testing.assert_allclose(out, _np(layer.activation(layer.patch_matmul(x))), rtol=1e-5,
                               atol=1e-5)
    assert out.shape == (2, 6, 12, 6)
    native = keras.layers.Conv2DTranspose(6, (2, 3), strides=(2, 3), activation="relu")
    native.build(x.shape)
    native.set_weights(layer.get_weights())
    np.testing.assert_allclose(out, _np(native(x)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="kernel_size"):
        upsample.PatchConvTranspose(6, 3, strides=2)
