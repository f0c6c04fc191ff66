"""Sampling (Philox), mask targets and losses on every backend, against numpy from the definition.

The Philox-4x32-10 stream must be BIT-identical on TensorFlow, JAX and PyTorch (and equal to
`tf.random.stateless_uniform` on TensorFlow): the sample of an image, hence the losses of a
training step, are then the same on every backend.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops
from reference_roi_align import roi_align_np

from keras_maskrcnn.layers import losses, targets
from keras_maskrcnn.ops import masks, sampling

F32 = np.float32


def _np(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def _compiled(fn):
    """`fn` under `jax.jit` on JAX (as the training step runs: static shapes, traced values),
    as is elsewhere."""
    if keras.backend.backend() != "jax":
        return fn
    import jax

    return jax.jit(fn)


# --------------------------------------------------------------------------- numpy Philox

MASK32 = np.uint64(0xFFFFFFFF)


def np_philox(counter, key):
    """Philox-4x32-10 from its definition (Salmon et al. 2011), uint32 values in uint64."""
    c = [np.asarray(v, np.uint64) for v in counter]
    k = [np.asarray(v, np.uint64) for v in key]
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k[0], p1 & MASK32,
             (p0 >> np.uint64(32)) ^ c[3] ^ k[1], p0 & MASK32]
        k = [(k[0] + np.uint64(0x9E3779B9)) & MASK32, (k[1] + np.uint64(0xBB67AE85)) & MASK32]
    return c


def np_seed_key_counter(seed):
    """TF's stateless seed scrambling: each int32 half sign-extended to 64 bits, Philox with
    the fixed key (0x3EC8F720, 0x02461E29); key words (c0, c1), counter words (c2, c3)."""
    words = np.asarray(seed, np.int32).astype(np.int64).view(np.uint64)
    counter = [words[0] & MASK32, words[0] >> np.uint64(32), words[1] & MASK32,
               words[1] >> np.uint64(32)]
    c = np_philox(counter, [np.uint64(0x3EC8F720), np.uint64(0x02461E29)])
    return c[:2], c[2:]


def np_uniform(num: int, seed) -> np.ndarray:
    """`tf.random.stateless_uniform([num], seed)`: element i is word i % 4 of the block at
    counter (i // 4, 0, c2, c3); its low 23 bits are the mantissa of a float in [1, 2), - 1."""
    key, (c2, c3) = np_seed_key_counter(seed)
    block = np.arange((num + 3) // 4, dtype=np.uint64)
    zero = np.zeros_like(block)
    words = np.stack(np_philox([block, zero, c2 + zero, c3 + zero], key), axis=-1).reshape(-1)
    return ((words[:num] & np.uint64(0x7FFFFF)).astype(np.float64) * 2.0**-23).astype(F32)


def np_fold_in(seed, data: int) -> np.ndarray:
    key, (c2, c3) = np_seed_key_counter(seed)
    first = np_philox([np.uint64(0), np.uint64(0), c2, c3], key)[0]
    return np.array([np.uint32(first).view(np.int32), data], np.int32)


SEEDS = np.array([[1, 2], [-5, 123456789], [0, 0], [-1, -1], [2**31 - 1, -(2**31)], [7, -3]],
                 np.int32)

# Random123's known-answer vectors for philox4x32-10: (counter, key, output)
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _word(value: int):
    return (ops.convert_to_tensor(np.array([value & 0xFFFF], np.int32)),
            ops.convert_to_tensor(np.array([value >> 16], np.int32)))


def test_philox_known_answers_numpy_and_portable():
    for counter, key, want in PHILOX_KAT:
        got = np_philox([np.uint64(c) for c in counter], [np.uint64(k) for k in key])
        assert [int(g) for g in got] == list(want)
        words = sampling.philox_4x32_10([_word(c) for c in counter], [_word(k) for k in key])
        assert [int(_np(lo)[0]) + (int(_np(hi)[0]) << 16) for lo, hi in words] == list(want)


def test_philox_uniform_rows_bit_identical_to_numpy(backend):
    rng = np.random.default_rng(0)
    seeds = np.concatenate([SEEDS, rng.integers(-(2**31), 2**31, (10, 2)).astype(np.int32)])
    for num in (7, 1003):
        got = _np(_compiled(lambda s, n=num: sampling.philox_uniform_rows(n, s))(seeds))
        want = np.stack([np_uniform(num, s) for s in seeds])
        assert got.dtype == np.float32 and got.shape == (len(seeds), num)
        np.testing.assert_array_equal(got, want)
    keys = _np(sampling.random_keys((len(SEEDS), 50), SEEDS))  # the dispatching entry
    np.testing.assert_array_equal(keys, np.stack([np_uniform(50, s) for s in SEEDS]))
    assert 0.0 <= keys.min() and keys.max() < 1.0


def test_fold_in_bit_identical_to_numpy(backend):
    want = np.stack([np_fold_in(s, 3) for s in SEEDS])
    np.testing.assert_array_equal(_np(sampling.philox_fold_in_rows(SEEDS, 3)), want)
    np.testing.assert_array_equal(_np(sampling.fold_in_rows(SEEDS, 3)), want)


def test_philox_equals_tensorflow_stateless_uniform(backend):
    if backend != "tensorflow":
        pytest.skip("TensorFlow's own kernels: compared on the TensorFlow backend")
    import tensorflow as tf

    want = np.stack([tf.random.stateless_uniform([1003], seed=s).numpy() for s in SEEDS])
    np.testing.assert_array_equal(_np(sampling.philox_uniform_rows(1003, SEEDS)), want)
    fast = sampling.stateless_uniform_rows([1003], tf.constant(SEEDS))
    np.testing.assert_array_equal(fast.numpy(), want)
    folded = np.stack([tf.random.experimental.stateless_fold_in(s, 3).numpy() for s in SEEDS])
    np.testing.assert_array_equal(_np(sampling.philox_fold_in_rows(SEEDS, 3)), folded)


# --------------------------------------------------------------------------- sampling


def np_quota(num_samples, fraction, rounding, n):
    clipped = min(num_samples, n)
    return int(round(clipped * fraction)) if rounding == "round" else min(int(num_samples * fraction),
                                                                           clipped)


def np_subsample(positive, negative, num_samples, fraction, seeds, rounding="round"):
    """Per row: the positives with the `min(#pos, quota)` largest keys, then the negatives with
    the `min(#neg, budget - sampled positives)` largest keys (keys: numpy Philox)."""
    n = positive.shape[1]
    quota = np_quota(num_samples, fraction, rounding, n)
    budget = min(num_samples, n)
    out_pos, out_neg = np.zeros_like(positive), np.zeros_like(negative)
    for b in range(len(positive)):
        keys = np_uniform(n, seeds[b])
        num_pos = min(positive[b].sum(), quota)
        order = [i for i in np.argsort(-keys, kind="stable") if positive[b, i]][:num_pos]
        out_pos[b, order] = True
        num_neg = min(negative[b].sum(), budget - num_pos)
        order = [i for i in np.argsort(-keys, kind="stable") if negative[b, i]][:num_neg]
        out_neg[b, order] = True
    return out_pos, out_neg


@pytest.mark.parametrize("rounding", ["round", "floor"])
def test_subsample_labels_is_the_numpy_sample(backend, rounding):
    rng = np.random.default_rng(1)
    positive = rng.uniform(size=(4, 300)) < 0.1
    positive[3] = False  # no positives: negatives fill the budget
    negative = ~positive & (rng.uniform(size=positive.shape) < 0.6)
    seeds = SEEDS[:4]
    got_pos, got_neg = _compiled(lambda p, n, s: sampling.subsample_labels(p, n, 70, 0.3, s, rounding))(
        positive, negative, seeds)
    got_pos, got_neg = _np(got_pos), _np(got_neg)
    want_pos, want_neg = np_subsample(positive, negative, 70, 0.3, seeds, rounding)
    np.testing.assert_array_equal(got_pos, want_pos)
    np.testing.assert_array_equal(got_neg, want_neg)
    quota = np_quota(70, 0.3, rounding, 300)
    assert np.all(got_pos.sum(1) == np.minimum(positive.sum(1), quota))
    assert np.all(got_pos.sum(1) + got_neg.sum(1) == 70)
    assert not np.any(got_pos & ~positive) and not np.any(got_neg & ~negative)


def test_sampled_indices_positives_first(backend):
    pos = np.zeros((2, 9), bool)
    neg = np.zeros((2, 9), bool)
    pos[0, [4, 7]] = True
    neg[0, [1, 2, 8]] = True
    neg[1, [5]] = True
    indices, valid, is_positive = (_np(t) for t in sampling.sampled_indices(pos, neg, 6))
    np.testing.assert_array_equal(indices, [[4, 7, 1, 2, 8, 0], [5, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(valid, [[1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(is_positive, [[1, 1, 0, 0, 0, 0], [0] * 6])
    assert indices.dtype == np.int32


# --------------------------------------------------------------------------- masks


def _gt(seed: int, size: int = 14):
    rng = np.random.default_rng(seed)
    gt_masks = rng.uniform(size=(2, 3, size, size)).astype(F32)
    lo = rng.uniform(0, 40, size=(2, 3, 2))
    gt_boxes = np.concatenate([lo, lo + rng.uniform(5, 30, size=(2, 3, 2))], -1).astype(F32)
    return gt_masks, gt_boxes


def np_mask_targets(gt_masks, gt_boxes, rois, matched, size):
    """Each RoI mapped into its gt's zero-padded mini-mask frame, RoIAligned (aligned, 2x2
    samples), >= 0.5."""
    batch, num = matched.shape
    mask_size = gt_masks.shape[-1]
    out = np.zeros((batch, num, size, size), F32)
    for b in range(batch):
        for r in range(num):
            g = min(max(matched[b, r], 0), gt_masks.shape[1] - 1)
            gy1, gx1, gy2, gx2 = gt_boxes[b, g]
            sy = F32(mask_size) / (gy2 - gy1 if gy2 > gy1 else F32(1))
            sx = F32(mask_size) / (gx2 - gx1 if gx2 > gx1 else F32(1))
            ry1, rx1, ry2, rx2 = rois[b, r]
            mapped = [(ry1 - gy1) * sy + 1, (rx1 - gx1) * sx + 1, (ry2 - gy1) * sy + 1,
                      (rx2 - gx1) * sx + 1]
            padded = np.pad(gt_masks[b, g], 1)
            pooled = roi_align_np(padded[None, :, :, None], [mapped], [0], (size, size), 1.0, 2,
                                  True)
            out[b, r] = pooled[0, :, :, 0] >= 0.5
    return out


def test_crop_mask_targets_match_numpy_bilinear(backend):
    gt_masks, gt_boxes = _gt(seed=1)
    rng = np.random.default_rng(2)
    matched = rng.integers(-1, 3, size=(2, 5)).astype(np.int32)  # -1 is clipped to 0
    base = np.take_along_axis(gt_boxes, np.maximum(matched, 0)[..., None], axis=1)
    size = base[..., 2:] - base[..., :2]
    shift = rng.uniform(-0.5, 0.5, size=(2, 5, 2)) * size
    scale = rng.uniform(0.6, 1.5, size=(2, 5, 2))
    rois = np.concatenate([base[..., :2] + shift, base[..., :2] + shift + size * scale], -1)
    rois = rois.astype(F32)
    gt_boxes[1, 2] = 0.0  # a padding row: zero box, finite targets
    got = _np(_compiled(lambda *a: masks.crop_mask_targets(*a, 7))(gt_masks, gt_boxes, rois, matched))
    assert got.shape == (2, 5, 7, 7) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np_mask_targets(gt_masks, gt_boxes, rois, matched, 7))
    assert 0 < got.mean() < 1


def test_masks_to_mini_masks_match_numpy_bilinear(backend):
    rng = np.random.default_rng(4)
    full = (rng.uniform(size=(3, 20, 30)) < 0.5).astype(np.uint8)
    lo = rng.uniform(0, 10, size=(3, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(3, 12, size=(3, 2))], -1).astype(F32)
    got = _np(_compiled(lambda m, b: masks.masks_to_mini_masks(m, b, 6))(full, boxes))
    want = roi_align_np(full[..., None].astype(np.float64), boxes, np.arange(3), (6, 6), 1.0, 1,
                        True)[..., 0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert _np(masks.masks_to_mini_masks(np.zeros((0, 8, 8)), np.zeros((0, 4), F32), 5)).shape \
        == (0, 5, 5)


def np_extend_edges(canvas, image_shape):
    out = canvas.astype(F32).copy()
    for b, (h, w) in enumerate(np.round(image_shape).astype(int)):
        if h < out.shape[2]:
            out[b, :, h] = out[b, :, max(h - 1, 0)]
        if w < out.shape[3]:
            out[b, :, :, w] = out[b, :, :, max(w - 1, 0)]
    return out


def _canvas_case():
    rng = np.random.default_rng(5)
    canvas = (rng.uniform(size=(2, 3, 40, 48)) < 0.5).astype(np.uint8)
    image_shape = np.array([[36.0, 48.0], [40.0, 31.0]], F32)
    lo = rng.uniform(-2, 38, size=(2, 6, 2))
    rois = np.concatenate([lo, lo + rng.uniform(0.3, 45, size=(2, 6, 2))], -1).astype(F32)
    matched = rng.integers(0, 3, size=(2, 6)).astype(np.int32)
    return canvas, image_shape, rois, matched


def test_extend_mask_edges_from_definition(backend):
    canvas, image_shape, _, _ = _canvas_case()
    got = _np(masks.extend_mask_edges(ops.cast(canvas, "float32"), image_shape))
    np.testing.assert_array_equal(got, np_extend_edges(canvas, image_shape))


@pytest.mark.parametrize("portable", [False, True])
def test_project_masks_match_numpy_roi_align(backend, portable):
    """torchvision's rule: RoIAlign (aligned=False, adaptive ratio) of the edge-extended canvas
    mask, soft; the backend's own path and the portable one."""
    canvas, image_shape, rois, matched = _canvas_case()
    fn = masks.project_masks_portable if portable else masks.project_masks
    got = _np(_compiled(lambda c, r, m, s: fn(c, r, m, 7, s))(canvas, rois, matched, image_shape))
    extended = np_extend_edges(canvas, image_shape).astype(np.float64).reshape(6, 40, 48, 1)
    want = np.stack([roi_align_np(extended, rois[b], b * 3 + matched[b], (7, 7), 1.0, 0, False)
                     for b in range(2)])[..., 0]
    assert got.shape == (2, 6, 7, 7)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.any((got > 0.01) & (got < 0.99))


def test_project_masks_portable_equals_tensorflow_path(backend):
    if backend != "tensorflow":
        pytest.skip("the TensorFlow path (ops.roi_align) exists on TensorFlow only")
    canvas, image_shape, rois, matched = _canvas_case()
    tf_path = _np(masks.project_masks(canvas, rois, matched, 28, image_shape))
    portable = _np(masks.project_masks_portable(canvas, rois, matched, 28, image_shape))
    np.testing.assert_allclose(portable, tf_path, atol=2e-5)


# --------------------------------------------------------------------------- losses


def np_bce(logits, labels):
    return np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))


def np_smooth_l1(x, beta):
    return np.abs(x) if beta <= 0 else np.where(np.abs(x) < beta, 0.5 * x**2 / beta,
                                                np.abs(x) - 0.5 * beta)


@pytest.mark.parametrize("normalizer,beta", [("batch", 0.0), ("sampled", 0.2)])
def test_rpn_loss_from_definition(backend, normalizer, beta):
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(2, 30)) * 3).astype(F32)
    deltas = rng.normal(size=(2, 30, 4)).astype(F32)
    targets = rng.normal(size=(2, 30, 4)).astype(F32)
    labels = rng.integers(-1, 2, size=(2, 30)).astype(np.int32)
    obj, box = losses.RPNLoss(batch_per_image=16, beta=beta, normalizer=normalizer)(
        logits, deltas, labels, targets)
    y = (labels == 1).astype(np.float64)
    norm = (labels >= 0).sum() if normalizer == "sampled" else 16 * 2
    np.testing.assert_allclose(_np(obj), (np_bce(logits, y) * (labels >= 0)).sum() / norm,
                               rtol=1e-5)
    want_box = (np_smooth_l1(deltas - targets, beta) * y[..., None]).sum() / norm
    np.testing.assert_allclose(_np(box), want_box, rtol=1e-5)


def test_box_head_loss_from_definition(backend):
    rng = np.random.default_rng(4)
    logits = (rng.normal(size=(2, 6, 4)) * 3).astype(F32)
    deltas = rng.normal(size=(2, 6, 3, 4)).astype(F32)
    classes = rng.integers(0, 4, size=(2, 6)).astype(np.int32)
    targets = rng.normal(size=(2, 6, 4)).astype(F32)
    weights = (rng.uniform(size=(2, 6)) > 0.3).astype(F32)
    cls, box = losses.BoxHeadLoss(beta=0.3)(logits, deltas, classes, targets, weights)
    x = logits.astype(np.float64)
    lse = np.log(np.exp(x).sum(-1))
    ce = lse - np.take_along_axis(x, classes[..., None], -1)[..., 0]
    count = max(weights.sum(), 1.0)
    np.testing.assert_allclose(_np(cls), (ce * weights).sum() / count, rtol=1e-5)
    picked = np.take_along_axis(deltas, np.maximum(classes - 1, 0)[..., None, None], 2)[:, :, 0]
    fg = (classes > 0) * weights
    want = (np_smooth_l1(picked - targets, 0.3) * fg[..., None]).sum() / count
    np.testing.assert_allclose(_np(box), want, rtol=1e-5)


def test_softmax_cross_entropy_portable_equals_backend_path(backend):
    rng = np.random.default_rng(8)
    logits = (rng.normal(size=(5, 7)) * 10).astype(F32)
    labels = rng.integers(0, 7, size=5).astype(np.int32)
    np.testing.assert_allclose(_np(losses.sparse_softmax_cross_entropy_portable(labels, logits)),
                               _np(losses.sparse_softmax_cross_entropy(labels, logits)),
                               rtol=1e-6, atol=1e-6)


def test_mask_loss_from_definition(backend):
    rng = np.random.default_rng(5)
    logits = (rng.normal(size=(2, 3, 6, 6, 4)) * 3).astype(F32)
    classes = np.array([[1, 4, 2], [3, 0, 0]], np.int32)
    targets = rng.uniform(size=(2, 3, 6, 6)).astype(F32)  # soft targets (torchvision rule)
    weights = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], F32)
    got = _np(losses.MaskLoss()(logits, classes, targets, weights))
    picked = np.take_along_axis(logits, np.maximum(classes - 1, 0)[:, :, None, None, None], 4)
    per_roi = np_bce(picked[..., 0].astype(np.float64), targets).mean(axis=(2, 3))
    np.testing.assert_allclose(got, (per_roi * weights).sum() / weights.sum(), rtol=1e-5)


# --------------------------------------------------------------------------- target layers


def np_iou(a, b):
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), -1)
    area_a = np.prod(a[:, 2:] - a[:, :2], -1)
    area_b = np.prod(b[:, 2:] - b[:, :2], -1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)


def test_anchor_targets_sample_the_numpy_labels(backend):
    rng = np.random.default_rng(6)
    lo = rng.uniform(0, 50, size=(200, 2))
    anchors = np.concatenate([lo, lo + rng.uniform(4, 20, size=(200, 2))], -1).astype(F32)
    gt_boxes = np.stack([anchors[[3, 50, 120]] + 1.0, anchors[[7, 8, 9]] * 0.0]).astype(F32)
    gt_classes = np.array([[1, 2, 3], [0, 0, 0]], np.int32)
    gt_boxes[1, 0], gt_classes[1, 0] = anchors[11] + 0.5, 2
    seeds = SEEDS[:2]
    labels, box_targets = targets.AnchorTargetLayer(batch_per_image=32)(anchors, gt_boxes,
                                                                        gt_classes, seeds)
    labels = _np(labels)
    positive = np.zeros((2, 200), bool)
    negative = np.zeros((2, 200), bool)
    for b in range(2):
        iou = np.where(gt_classes[b] > 0, np_iou(anchors, gt_boxes[b]), -1.0)
        best = iou.max(0, keepdims=True)
        is_best = ((iou == best) & (best > 0)).any(1)
        positive[b] = (iou.max(1) >= 0.7) | is_best
        negative[b] = (iou.max(1) < 0.3) & ~positive[b]
    folded = np.stack([np_fold_in(s, 1) for s in seeds])
    want_pos, want_neg = np_subsample(positive, negative, 32, 0.5, folded)
    np.testing.assert_array_equal(labels, np.where(want_pos, 1, np.where(want_neg, 0, -1)))
    assert labels.dtype == np.int32 and np.all(_np(box_targets)[labels != 1] == 0)


def test_detection_targets_masks_and_slots(backend):
    gt_masks, gt_boxes = _gt(seed=7, size=8)
    gt_classes = np.array([[1, 2, 0], [3, 1, 2]], np.int32)
    gt_boxes[0, 2] = 0.0
    rng = np.random.default_rng(7)
    proposals = np.concatenate([gt_boxes + rng.uniform(-2, 2, gt_boxes.shape),
                                gt_boxes[:, ::-1] * 0.5 + 20], 1).astype(F32)
    layer = targets.DetectionTargetLayer(batch_per_image=8, positive_fraction=0.5, mask_size=7)
    out = layer(proposals, np.array([6, 5], np.int32), gt_boxes, gt_classes, gt_masks,
                SEEDS[:2])
    out = {k: _np(v) for k, v in out.items()}
    assert out["rois"].shape == (2, 8, 4) and out["mask_targets"].shape == (2, 4, 7, 7)
    fg = out["mask_weights"] > 0
    np.testing.assert_array_equal(fg, out["class_targets"][:, :4] > 0)
    assert fg[:, 0].all()  # the ground-truth boxes are candidates: foreground exists
    matched = np.zeros((2, 4), np.int32)
    for b in range(2):
        iou = np.where(gt_classes[b] > 0, np_iou(out["mask_rois"][b], gt_boxes[b]), -1.0)
        matched[b] = iou.argmax(1)
    want = np_mask_targets(gt_masks, gt_boxes, out["mask_rois"], matched, 7) * fg[..., None, None]
    np.testing.assert_array_equal(out["mask_targets"], want)


def test_target_layers_symbolic_shapes(backend):
    """Called on `keras.Input`s (functional models; meta tensors on PyTorch): the shapes and
    dtypes of the eager call."""
    anchors = keras.Input((4,), batch_size=30)
    gt_boxes, gt_classes = keras.Input((3, 4)), keras.Input((3,), dtype="int32")
    labels, box_targets = targets.AnchorTargetLayer(batch_per_image=8)(anchors, gt_boxes,
                                                                        gt_classes)
    assert tuple(labels.shape) == (None, 30) and labels.dtype == "int32"
    assert tuple(box_targets.shape) == (None, 30, 4)
    layer = targets.DetectionTargetLayer(batch_per_image=8, positive_fraction=0.5, mask_size=7,
                                         mask_target_rule="torchvision")
    out = layer(keras.Input((10, 4)), keras.Input((), dtype="int32"), gt_boxes, gt_classes,
                keras.Input((3, 32, 32), dtype="uint8"), keras.Input((2,), dtype="int32"),
                keras.Input((2,)))
    assert tuple(out["rois"].shape) == (None, 8, 4)
    assert out["class_targets"].dtype == "int32"
    assert tuple(out["mask_targets"].shape) == (None, 4, 7, 7)


def test_backend_is_the_one_asked_for(backend):
    assert keras.backend.backend() == backend
