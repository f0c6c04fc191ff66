"""Mini masks, mask targets and mask pasting vs numpy references written from the definitions."""

import math

import numpy as np
import pytest
import tensorflow as tf
from reference_roi_align import bilinear, roi_align_np

from keras_maskrcnn.ops.masks import crop_mask_targets, masks_to_mini_masks
from keras_maskrcnn.ops.paste import paste_masks, paste_masks_tf

F32 = np.float32


# --------------------------------------------------------------------------- numpy references


def np_mask_targets(gt_masks, gt_boxes, rois, matched, size):
    """Each RoI mapped into its gt's zero-padded mini-mask frame, RoIAligned, >= 0.5."""
    batch, num = matched.shape
    mask_size = gt_masks.shape[-1]
    out = np.zeros((batch, num, size, size), F32)
    for b in range(batch):
        for r in range(num):
            g = min(max(matched[b, r], 0), gt_masks.shape[1] - 1)
            gy1, gx1, gy2, gx2 = gt_boxes[b, g]
            gh = gy2 - gy1 if gy2 > gy1 else F32(1)
            gw = gx2 - gx1 if gx2 > gx1 else F32(1)
            ry1, rx1, ry2, rx2 = rois[b, r]
            mapped = [
                (ry1 - gy1) * (F32(mask_size) / gh) + 1,
                (rx1 - gx1) * (F32(mask_size) / gw) + 1,
                (ry2 - gy1) * (F32(mask_size) / gh) + 1,
                (rx2 - gx1) * (F32(mask_size) / gw) + 1,
            ]
            padded = np.pad(gt_masks[b, g], 1)
            pooled = roi_align_np(padded[None, :, :, None], [mapped], [0], (size, size), 1.0, 2, True)
            out[b, r] = pooled[0, :, :, 0] >= 0.5
    return out


def np_grid_sample_paste(mask, box, height, width):
    """Detectron2 paste: grid_sample(align_corners=False, zeros) at each pixel centre."""
    y1, x1, y2, x2 = (float(v) for v in box)
    size_y, size_x = mask.shape
    padded = np.pad(mask.astype(np.float64), 1)  # zeros outside; index + 1
    out = np.zeros((height, width))
    for y in range(height):
        v = ((y + 0.5 - y1) / (y2 - y1) * 2 - 1 + 1) * size_y / 2 - 0.5
        for x in range(width):
            u = ((x + 0.5 - x1) / (x2 - x1) * 2 - 1 + 1) * size_x / 2 - 0.5
            if not (-1 < v < size_y and -1 < u < size_x):
                continue
            v0, u0 = math.floor(v), math.floor(u)
            dv, du = v - v0, u - u0
            out[y, x] = (
                (1 - dv) * (1 - du) * padded[v0 + 1, u0 + 1]
                + (1 - dv) * du * padded[v0 + 1, u0 + 2]
                + dv * (1 - du) * padded[v0 + 2, u0 + 1]
                + dv * du * padded[v0 + 2, u0 + 2]
            )
    return out


def np_interpolate_bilinear(image, out_h, out_w):
    """torch F.interpolate(mode='bilinear', align_corners=False) of image [H, W], per pixel."""
    in_h, in_w = image.shape
    out = np.zeros((out_h, out_w))

    def source(i, in_size, out_size):
        s = max(F32(in_size) / F32(out_size) * F32(i + 0.5) - F32(0.5), F32(0))
        lo = min(int(math.floor(s)), in_size - 1)
        hi = lo + 1 if lo < in_size - 1 else lo
        return lo, hi, min(max(float(s) - lo, 0.0), 1.0)

    for i in range(out_h):
        y0, y1, ly = source(i, in_h, out_h)
        for j in range(out_w):
            x0, x1, lx = source(j, in_w, out_w)
            out[i, j] = (1 - ly) * ((1 - lx) * image[y0, x0] + lx * image[y0, x1]) + ly * (
                (1 - lx) * image[y1, x0] + lx * image[y1, x1]
            )
    return out


def np_torchvision_paste(mask, box, height, width):
    """torchvision paste_masks_in_image for one mask: pad 1, expand box, int, resize, place."""
    size = mask.shape[0]
    padded = np.pad(mask, 1)
    scale = F32((size + 2) / size)
    y1, x1, y2, x2 = (F32(v) for v in box)
    h_half, w_half = (y2 - y1) * F32(0.5) * scale, (x2 - x1) * F32(0.5) * scale
    yc, xc = (y2 + y1) * F32(0.5), (x2 + x1) * F32(0.5)
    # tensor.to(torch.int64) truncates toward zero
    by1, bx1, by2, bx2 = (int(v) for v in (yc - h_half, xc - w_half, yc + h_half, xc + w_half))
    box_h, box_w = max(by2 - by1 + 1, 1), max(bx2 - bx1 + 1, 1)
    resized = np_interpolate_bilinear(padded, box_h, box_w)
    out = np.zeros((height, width))
    for y in range(max(by1, 0), min(by2 + 1, height)):
        for x in range(max(bx1, 0), min(bx2 + 1, width)):
            out[y, x] = resized[y - by1, x - bx1]
    return out


# --------------------------------------------------------------------------- mask targets


def _gt(seed=0, batch=2, num_gt=3, size=14, binary=False):
    rng = np.random.default_rng(seed)
    masks = rng.uniform(size=(batch, num_gt, size, size))
    masks = (masks > 0.5) if binary else masks
    y1x1 = rng.uniform(0, 40, size=(batch, num_gt, 2))
    hw = rng.uniform(8, 50, size=(batch, num_gt, 2))
    boxes = np.concatenate([y1x1, y1x1 + hw], -1)
    return masks.astype(F32), boxes.astype(F32)


def test_crop_mask_targets_identity_roi_gives_back_mini_mask():
    gt_masks, gt_boxes = _gt(binary=True, size=28)
    matched = np.array([[2, 0, 1], [1, 2, 0]], np.int32)
    rois = np.take_along_axis(gt_boxes, matched[..., None], axis=1)
    got = crop_mask_targets(gt_masks, gt_boxes, rois, matched, 28).numpy()
    want = np.take_along_axis(gt_masks, matched[..., None, None], axis=1)
    np.testing.assert_array_equal(got, want)


def test_crop_mask_targets_matches_reference():
    gt_masks, gt_boxes = _gt(seed=1)
    rng = np.random.default_rng(2)
    matched = rng.integers(-1, 3, size=(2, 5)).astype(np.int32)  # -1 is clipped to 0
    base = np.take_along_axis(gt_boxes, np.maximum(matched, 0)[..., None], axis=1)
    size = base[..., 2:] - base[..., :2]
    shift = rng.uniform(-0.5, 0.5, size=(2, 5, 2)) * size
    scale = rng.uniform(0.6, 1.5, size=(2, 5, 2))
    rois = np.concatenate([base[..., :2] + shift, base[..., :2] + shift + size * scale], -1)
    rois = rois.astype(F32)
    rois[0, 0] = [
        base[0, 0, 0],
        base[0, 0, 1] + size[0, 0, 1] / 2,
        base[0, 0, 2],
        base[0, 0, 3] + size[0, 0, 1] / 2,
    ]  # shifted right by half the box
    got = crop_mask_targets(gt_masks, gt_boxes, rois, matched, 7).numpy()
    assert got.shape == (2, 5, 7, 7) and got.dtype == np.float32
    want = np_mask_targets(gt_masks, gt_boxes, rois, matched, 7)
    np.testing.assert_array_equal(got, want)
    assert 0 < got.mean() < 1


def test_crop_mask_targets_degenerate_gt_and_dynamic_shapes():
    gt_masks, gt_boxes = _gt(seed=3)
    gt_boxes[0, 1] = 0.0  # padding row: zero box
    gt_masks[0, 1] = 0.0
    rois = np.array([[[0, 0, 10, 10], [5, 5, 30, 40]], [[1, 2, 3, 4], [10, 10, 60, 60]]], F32)
    matched = np.array([[1, 1], [0, 2]], np.int32)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, None]),
            tf.TensorSpec([None, None, 4]),
            tf.TensorSpec([None, None, 4]),
            tf.TensorSpec([None, None], tf.int32),
        ]
    )
    def targets(*args):
        return crop_mask_targets(*args, output_size=5)

    got = targets(gt_masks, gt_boxes, rois, matched).numpy()
    assert got.shape == (2, 2, 5, 5) and np.all(np.isfinite(got))
    np.testing.assert_array_equal(got[0], 0.0)
    np.testing.assert_array_equal(got, np_mask_targets(gt_masks, gt_boxes, rois, matched, 5))


# --------------------------------------------------------------------------- mini masks


def test_masks_to_mini_masks_rectangle():
    mask = np.zeros((1, 20, 30), np.uint8)
    mask[0, 4:12, 6:18] = 1  # pixel rows 4..11, columns 6..17: the box (4, 6, 12, 18)
    tight = np.array([[4, 6, 12, 18]], F32)
    for size in (8, 4):
        np.testing.assert_array_equal(masks_to_mini_masks(mask, tight, size).numpy(), 1.0)
    # a larger box: cell centres at rows 2.5 + 2 i, columns 4 + 3 j
    loose = np.array([[2, 3, 14, 21]], F32)
    got = masks_to_mini_masks(mask.astype(bool), loose, 6).numpy()[0]
    want = np.zeros((6, 6))
    want[1:5, 1:5] = 1.0
    np.testing.assert_array_equal(got, want)
    # against the definition at a fractional box and size
    odd = np.array([[3.3, 5.1, 13.7, 19.4]], F32)
    got = masks_to_mini_masks(mask.astype(F32), odd, 5).numpy()[0]
    h, w = 13.7 - 3.3, 19.4 - 5.1
    want = [
        [
            bilinear(mask[0, :, :, None], 3.3 + (i + 0.5) * h / 5 - 0.5, 5.1 + (j + 0.5) * w / 5 - 0.5)[0]
            for j in range(5)
        ]
        for i in range(5)
    ]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_masks_to_mini_masks_empty():
    out = masks_to_mini_masks(np.zeros((0, 20, 30), np.uint8), np.zeros((0, 4), F32), 7)
    assert out.shape == (0, 7, 7) and out.dtype == tf.float32


# --------------------------------------------------------------------------- pasting


def _detections(seed=4, num=4, size=6, height=23, width=31):
    rng = np.random.default_rng(seed)
    masks = rng.uniform(size=(num, size, size)).astype(F32)
    y1x1 = rng.uniform(-6, 18, size=(num, 2))
    hw = rng.uniform(2, 16, size=(num, 2))
    boxes = np.concatenate([y1x1, y1x1 + hw], -1).astype(F32)
    return masks, boxes, (height, width)


def test_paste_exact_full_box_of_ones_is_the_box():
    boxes = np.array([[3, 5, 10, 12], [2.3, 7.6, 9.2, 8.9], [-3.5, 14.2, 4.4, 40]], F32)
    height, width = 16, 20
    for size in (28, 5):
        got = paste_masks(np.ones((3, size, size), F32), boxes, (height, width))
        assert got.dtype == np.uint8 and got.shape == (3, height, width)
        centre_y = np.arange(height)[:, None] + 0.5
        centre_x = np.arange(width)[None, :] + 0.5
        for d, (y1, x1, y2, x2) in enumerate(boxes):
            inside = (centre_y >= y1) & (centre_y <= y2) & (centre_x >= x1) & (centre_x <= x2)
            np.testing.assert_array_equal(got[d], inside.astype(np.uint8))


def test_paste_exact_matches_grid_sample_reference():
    masks, boxes, shape = _detections()
    got = paste_masks(masks, boxes, shape, threshold=None)
    assert got.dtype == np.float32
    want = np.stack([np_grid_sample_paste(m, b, *shape) for m, b in zip(masks, boxes, strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    binary = paste_masks(masks, boxes, shape, threshold=0.4)
    np.testing.assert_array_equal(binary, (got >= 0.4).astype(np.uint8))
    degenerate = paste_masks(masks[:1], np.array([[5, 5, 5, 9]], F32), shape)
    np.testing.assert_array_equal(degenerate, 0)


def test_paste_torchvision_matches_reference():
    masks, boxes, shape = _detections(seed=5, size=7)
    boxes[0] = [-2.0, 25.5, 6.0, 40.0]  # expanded box starting left of 0 and past the right
    got = paste_masks(masks, boxes, shape, threshold=None, method="torchvision")
    want = np.stack([np_torchvision_paste(m, b, *shape) for m, b in zip(masks, boxes, strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    binary = paste_masks(masks, boxes, shape, method="torchvision")
    np.testing.assert_array_equal(binary, (got > 0.5).astype(np.uint8))
    outside = paste_masks(
        masks[:1], np.array([[-30, -30, -20, -20]], F32), shape, method="torchvision"
    )
    np.testing.assert_array_equal(outside, 0)


def test_paste_masks_tf_equals_numpy_exact():
    masks, boxes, shape = _detections(seed=6, num=5)
    want = paste_masks(masks, boxes, shape, threshold=None)
    got = paste_masks_tf(masks, boxes, shape, threshold=None).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    binary = paste_masks_tf(masks, boxes, shape).numpy()
    assert binary.dtype == np.uint8 and binary.shape == (5, *shape)
    decided = np.abs(want - 0.5) > 1e-5
    np.testing.assert_array_equal(binary[decided], (want >= 0.5)[decided])

    specs = [
        tf.TensorSpec([None, None, None]),
        tf.TensorSpec([None, 4]),
        tf.TensorSpec([2], tf.int32),
    ]

    @tf.function(input_signature=specs)
    def graph(m, b, hw):
        return paste_masks_tf(m, b, hw, threshold=None)

    np.testing.assert_allclose(graph(masks, boxes, shape).numpy(), want, atol=1e-5)
    assert graph(masks[:0], boxes[:0], shape).shape == (0, *shape)


def test_paste_bad_arguments():
    masks, boxes, shape = _detections()
    with pytest.raises(ValueError, match="method"):
        paste_masks(masks, boxes, shape, method="nearest")
    with pytest.raises(ValueError, match="boxes"):
        paste_masks(masks, boxes[:2], shape)
    with pytest.raises(ValueError, match="masks"):
        paste_masks(masks[0], boxes, shape)
    with pytest.raises(ValueError, match="size"):
        masks_to_mini_masks(np.zeros((1, 4, 4)), np.zeros((1, 4)), 0)
