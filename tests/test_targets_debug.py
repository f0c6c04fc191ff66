"""`targets_debug.training_targets` and the "torchvision" mask-target batches, without torch
(the comparison with torchvision's own targets is tests/test_training_parity.py)."""

from __future__ import annotations

import numpy as np
import pytest

from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import ShapesDataset, make_dataset
from keras_maskrcnn.targets_debug import training_targets

BIG_QUOTA = 100_000


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, M] of (y1, x1, y2, x2) boxes, from the definition."""
    top = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom - top, 0, None), axis=2)
    union = np.prod(a[:, 2:] - a[:, :2], 1)[:, None] + np.prod(b[:, 2:] - b[:, :2], 1) - inter
    return inter / union


def _nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch's legacy nearest resize from its definition (float32 scale, floor, clamp)."""
    def rows(size_in, size_out):
        scale = np.float32(size_in) / np.float32(size_out)
        return np.minimum(np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(int),
                          size_in - 1)
    return mask[rows(mask.shape[0], height)][:, rows(mask.shape[1], width)]


@pytest.fixture(scope="module")
def shapes_batch():
    config = get_config("shapes", rpn_batch_per_image=BIG_QUOTA)
    dataset = make_dataset(ShapesDataset(4, 128, seed=3), config, training=True, batch_size=2,
                           seed=0)
    (batch,) = next(iter(dataset))
    return config, {k: v.numpy() for k, v in batch.items()}


def test_training_targets_follow_the_matching_rule_and_leave_the_model_alone(shapes_batch):
    config, batch = shapes_batch
    model = build_model(config)
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    t = training_targets(model, batch)
    again = training_targets(model, batch)
    for key, value in t.items():  # the batch's sample_seed fixes the samples
        np.testing.assert_array_equal(value, again[key], err_msg=key)
    for b, a in zip(before, model.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(b, a.numpy())  # BatchNorm statistics unchanged
    n = len(t["anchors"])
    assert t["anchor_labels"].shape == (2, n) and t["rpn_box_targets"].shape == (2, n, 4)
    for i in range(2):  # every anchor sampled: the labels are the matching rule itself
        gt = batch["gt_boxes"][i][batch["gt_classes"][i] > 0]
        iou = _iou(t["anchors"].astype(np.float64), gt.astype(np.float64))
        best = (iou == iou.max(axis=0, keepdims=True)).any(axis=1)
        expected = np.where((iou.max(1) >= 0.7) | best, 1, np.where(iou.max(1) < 0.3, 0, -1))
        close = np.abs(iou.max(1) - 0.7) < 1e-5  # float32 vs float64 at the threshold
        np.testing.assert_array_equal(t["anchor_labels"][i][~close], expected[~close])
        valid = t["weights"][i] > 0
        assert valid.sum() == min(config.roi_batch_per_image, t["num_proposals"][i] + len(gt))
        assert np.all(t["class_targets"][i][~valid] == 0)
    assert set(np.unique(t["mask_targets"])) <= {0.0, 1.0}  # Detectron2: binary targets


def test_training_targets_names_a_missing_key(shapes_batch):
    config, batch = shapes_batch
    model = build_model(config)
    with pytest.raises(KeyError, match="gt_masks"):
        training_targets(model, {k: v for k, v in batch.items() if k != "gt_masks"})


def test_torchvision_rule_batches_carry_nearest_resized_canvas_masks():
    """Shapes of 100 x 100 on a 128 canvas: the masks are mirrored (when the image is) at the
    original size, then nearest-resized to 128 as torchvision's transform resizes them."""
    source = ShapesDataset(6, 100, seed=4)
    config = get_config("shapes", mask_target_rule="torchvision")
    dataset = make_dataset(source, config, training=True, batch_size=1, shuffle=False,
                           repeat=False, seed=1)
    flipped = 0
    for (batch,) in dataset:
        image_id = int(batch["image_id"][0])
        masks = source.load_annotations(image_id)["masks"]
        g = len(masks)
        got = batch["gt_masks"].numpy()[0]
        assert got.shape == (config.max_instances, 128, 128) and got.dtype == np.uint8
        ann = source.load_annotations(image_id)
        scale = 128 / 100
        mirrored = not np.allclose(batch["gt_boxes"].numpy()[0, :g], ann["boxes"] * scale,
                                   atol=1e-3)
        if mirrored:  # then the boxes are mirrored
            x1, x2 = ann["boxes"][:, 1] * scale, ann["boxes"][:, 3] * scale
            np.testing.assert_allclose(batch["gt_boxes"].numpy()[0, :g, [1, 3]],
                                       np.stack([128 - x2, 128 - x1]), atol=1e-3)
        flipped += mirrored
        for k in range(g):
            mask = masks[k][:, ::-1] if mirrored else masks[k]
            np.testing.assert_array_equal(got[k], _nearest(mask, 128, 128))
        assert not got[g:].any()
    assert 0 < flipped < 6

    model = build_model(config)
    (batch,) = next(iter(dataset))
    t = training_targets(model, batch)
    fg = t["mask_weights"] > 0
    soft = t["mask_targets"][fg]
    assert np.any((soft > 0.01) & (soft < 0.99))  # torchvision: soft targets
