"""The PyTorch fast paths through torchvision (`keras_maskrcnn.ops.torch_fast`) against the
portable keras.ops paths they replace (`torch_fast.ENABLED = False`, or NMS
implementation="portable"): RoIAlign and multi-level RoIAlign (forward and gradients, edge-case
boxes), NMS (exact indices and counts, ties, padding, thresholds), and the fallbacks (no
torchvision, max_samples, meta tensors). PyTorch backend only (tests/test_backends.py runs
this directory on it); skipped on the other backends."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from keras import ops

from keras_maskrcnn.ops import nms as nms_ops
from keras_maskrcnn.ops import poolers as pl
from keras_maskrcnn.ops import roi_align_ops as ra
from keras_maskrcnn.ops import torch_fast

F32 = np.float32


@pytest.fixture(autouse=True)
def _torch_with_torchvision(backend):
    if backend != "torch":
        pytest.skip("PyTorch fast paths")
    pytest.importorskip("torchvision")


def _portable(monkeypatch, fn):
    """fn() with the fast paths switched off."""
    with monkeypatch.context() as patch:
        patch.setattr(torch_fast, "ENABLED", False)
        return fn()


def _boxes(rng, num, size, edge_cases=True):
    """[num, 4] (y1, x1, y2, x2) random boxes over a size x size canvas plus edge cases."""
    yx = rng.uniform(-0.1 * size, size, (num, 2))
    hw = rng.uniform(0.0, 0.8 * size, (num, 2))
    boxes = np.concatenate([yx, yx + hw], axis=1).astype(F32)
    if edge_cases:
        boxes[:8] = [
            [0, 0, 0, 0],  # a padded row
            [5, 6, 3, 2],  # negative size
            [-30, -40, -20, -25],  # fully outside
            [2 * size, size, 3 * size, 2 * size],  # fully outside
            [-3, -3, size + 5, size + 9],  # larger than the map
            [np.nan, 1, 4, 5],  # non-finite: pools 0
            [1, 1, np.inf, 5],
            [4.0, 4.0, 4.5, 4.25],  # tiny
        ]
    return boxes


# --------------------------------------------------------------------------- RoIAlign


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_equals_portable_with_gradients(monkeypatch, sampling_ratio, aligned):
    import torch

    rng = np.random.default_rng(sampling_ratio + 2 * aligned)
    features = rng.normal(size=(2, 9, 11, 5)).astype(F32)
    boxes = _boxes(rng, 24, 20)
    box_indices = rng.integers(0, 2, 24).astype(np.int32)
    upstream = torch.as_tensor(rng.normal(size=(24, 3, 4, 5)).astype(F32))

    def run():
        x = torch.tensor(features, requires_grad=True)
        out = ra.roi_align(x, boxes, box_indices, (3, 4), 0.5, sampling_ratio, aligned)
        (out * upstream).sum().backward()
        return out.detach().numpy(), x.grad.numpy()

    assert torch_fast.roi_align(ops.convert_to_tensor(features), ops.convert_to_tensor(boxes),
                                ops.convert_to_tensor(box_indices), (3, 4), 0.5,
                                sampling_ratio, aligned) is not None  # the fast path applies
    fast, fast_grad = run()
    slow, slow_grad = _portable(monkeypatch, run)
    assert np.all(fast[5:7] == 0.0)  # the non-finite boxes
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast_grad, slow_grad, rtol=1e-5, atol=1e-5)


def test_roi_align_half_precision_no_boxes_and_fallbacks(monkeypatch):
    import torch

    rng = np.random.default_rng(7)
    features = torch.as_tensor(rng.normal(size=(2, 8, 8, 4)).astype(F32))
    boxes = _boxes(rng, 10, 16, edge_cases=False)
    index = np.array([0, 1] * 5, np.int32)
    half = features.to(torch.bfloat16)
    fast = ra.roi_align(half, boxes, index, 2, 0.5, 0)
    assert fast.dtype == torch.bfloat16
    slow = _portable(monkeypatch, lambda: ra.roi_align(half, boxes, index, 2, 0.5, 0))
    np.testing.assert_allclose(fast.float().numpy(), slow.float().numpy(), rtol=2e-2, atol=2e-2)
    empty = ra.roi_align(features, np.zeros((0, 4), F32), np.zeros((0,), np.int32), 2, 0.5, 0)
    assert tuple(empty.shape) == (0, 2, 2, 4)
    # torchvision's semantics differ or the inputs cannot be checked: the portable path runs
    bad_index = torch.as_tensor([0, 2], dtype=torch.int32)
    assert torch_fast.roi_align(features, torch.as_tensor(boxes[:2]), bad_index, (2, 2), 0.5,
                                0, True) is None
    meta = torch.empty((2, 8, 8, 4), device="meta")
    assert torch_fast.roi_align(meta, torch.as_tensor(boxes), torch.as_tensor(index), (2, 2),
                                0.5, 0, True) is None
    assert torch_fast.roi_align(features.double(), torch.as_tensor(boxes),
                                torch.as_tensor(index), (2, 2), 0.5, 0, True) is None


def _levels(rng, batch=2, size=32, channels=3):
    return [rng.normal(size=(batch, size >> k, size >> k, channels)).astype(F32)
            for k in range(2, 6)]


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_multilevel_equals_portable_with_gradients(monkeypatch, sampling_ratio):
    import torch

    rng = np.random.default_rng(11 + sampling_ratio)
    levels = _levels(rng)
    # boxes of every level (sizes 2 .. 500 pixels) and edge cases, two images
    boxes = np.stack([_boxes(rng, 40, 32), _boxes(rng, 40, 32)])
    boxes[:, 10:20, 2:] = boxes[:, 10:20, :2] + rng.uniform(100, 500, (2, 10, 2))
    upstream = torch.as_tensor(rng.normal(size=(2, 40, 4, 4, 3)).astype(F32))

    def run():
        xs = [torch.tensor(f, requires_grad=True) for f in levels]
        out = pl.multilevel_roi_align(xs, boxes, 4, canonical_size=16.0,
                                      sampling_ratio=sampling_ratio)
        (out * upstream).sum().backward()
        return out.detach().numpy(), [x.grad.numpy() for x in xs]

    fast, fast_grads = run()
    slow, slow_grads = _portable(monkeypatch, run)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
    for level, (a, b) in enumerate(zip(fast_grads, slow_grads, strict=True)):
        assert np.abs(a).sum() > 0, f"no gradient reached level {level}"
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_multilevel_no_boxes_and_max_samples_fallback(monkeypatch):
    import torch

    rng = np.random.default_rng(3)
    levels = _levels(rng)
    empty = pl.multilevel_roi_align(levels, np.zeros((2, 0, 4), F32), 3)
    assert tuple(empty.shape) == (2, 0, 3, 3, 3)
    # levels without boxes get a zero gradient (not None), as on the portable path
    xs = [torch.tensor(f, requires_grad=True) for f in levels]
    small = np.tile(np.array([[1.0, 1.0, 9.0, 9.0]], F32), (2, 3, 1))  # all on the first level
    pl.multilevel_roi_align(xs, small, 3).sum().backward()
    assert np.abs(xs[0].grad.numpy()).sum() > 0
    assert all(x.grad is not None and not x.grad.numpy().any() for x in xs[1:])

    def no_fast_path(*args, **kwargs):
        raise AssertionError("max_samples must take the portable path")

    boxes = np.stack([_boxes(rng, 6, 32, edge_cases=False)] * 2)
    with monkeypatch.context() as patch:
        patch.setattr(torch_fast, "_pool_float", no_fast_path)
        capped = pl.multilevel_roi_align(levels, boxes, 3, max_samples=2)
        single = ra.roi_align(levels[0], boxes[0], np.zeros(6, np.int32), 3, 0.25,
                              max_samples=2)
    assert tuple(capped.shape) == (2, 6, 3, 3, 3) and tuple(single.shape) == (6, 3, 3, 3)


# --------------------------------------------------------------------------- NMS


def _nms_inputs(rng, batch, num):
    """Boxes on an integer grid (equal IoUs, duplicates), reversed and zero-area boxes,
    scores drawn from a few values (ties), some -inf (padding)."""
    yx = rng.integers(0, 40, (batch, num, 2))
    hw = rng.integers(0, 12, (batch, num, 2))  # some zero-size
    boxes = np.concatenate([yx, yx + hw], axis=2).astype(F32)
    flip = rng.random((batch, num)) < 0.2
    boxes[flip] = boxes[flip][:, [2, 3, 0, 1]]  # reversed corners
    boxes[:, 1] = boxes[:, 0]  # an exact duplicate with...
    scores = rng.choice(np.array([0.1, 0.3, 0.5, 0.9], F32), (batch, num))
    scores[:, 1] = scores[:, 0]  # ...the same score
    scores[rng.random((batch, num)) < 0.1] = -np.inf
    return boxes, scores


def _nms_calls(boxes, scores, groups, size, iou_threshold, threshold, impl):
    """(name, (indices, num_valid) as numpy) of the three NMS functions."""
    results = {
        "single": nms_ops.nms_padded(boxes[0], scores[0], size, iou_threshold, threshold,
                                     implementation=impl),
        "batched": nms_ops.batched_nms_padded(boxes, scores, size, iou_threshold, threshold,
                                              implementation=impl),
        "grouped": nms_ops.grouped_nms_padded(boxes, scores, groups, size, iou_threshold,
                                              threshold, implementation=impl),
    }
    return {k: [ops.convert_to_numpy(x) for x in v] for k, v in results.items()}


@pytest.mark.parametrize("iou_threshold", [0.0, 0.3, 0.5, 1.0])
def test_nms_equals_portable_exactly(iou_threshold):
    rng = np.random.default_rng(int(iou_threshold * 10))
    boxes, scores = _nms_inputs(rng, 3, 200)
    groups = rng.integers(0, 4, (3, 200)).astype(np.int32)
    assert torch_fast.batched_nms(ops.convert_to_tensor(boxes), ops.convert_to_tensor(scores),
                                  10, iou_threshold, -np.inf) is not None
    for size in (1, 10, 250):  # max_output_size below and above the number of boxes
        for threshold in (-np.inf, 0.3):
            args = (boxes, scores, groups, size, iou_threshold, threshold)
            fast, slow = _nms_calls(*args, "auto"), _nms_calls(*args, "portable")
            for name in fast:
                where = f"{name} size={size} score_threshold={threshold}"
                np.testing.assert_array_equal(fast[name][1], slow[name][1], err_msg=where)
                np.testing.assert_array_equal(fast[name][0], slow[name][0], err_msg=where)
                assert fast[name][0].dtype == np.int32 and fast[name][1].dtype == np.int32


def test_nms_empty_and_all_suppressed_inputs():
    for boxes, scores in [
        (np.zeros((2, 0, 4), F32), np.zeros((2, 0), F32)),  # no boxes
        (np.ones((2, 5, 4), F32), np.full((2, 5), -np.inf, F32)),  # no candidates
    ]:
        fast = nms_ops.batched_nms_padded(boxes, scores, 4, 0.5)
        slow = nms_ops.batched_nms_padded(boxes, scores, 4, 0.5, implementation="portable")
        for a, b in zip(fast, slow, strict=True):
            assert tuple(a.shape) == tuple(b.shape)
            np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    # no images (the portable loop needs B >= 1)
    indices, num_valid = nms_ops.batched_nms_padded(np.zeros((0, 5, 4), F32),
                                                    np.zeros((0, 5), F32), 4, 0.5)
    assert tuple(indices.shape) == (0, 4) and tuple(num_valid.shape) == (0,)


def test_without_torchvision_the_portable_paths_run(monkeypatch):
    """torchvision stays optional: when it cannot be imported, "auto" falls back."""
    rng = np.random.default_rng(5)
    boxes, scores = _nms_inputs(rng, 2, 30)
    features = rng.normal(size=(1, 6, 6, 2)).astype(F32)
    roi = _boxes(rng, 4, 12, edge_cases=False)
    expected_nms = nms_ops.batched_nms_padded(boxes, scores, 8, 0.5)
    expected_roi = ra.roi_align(features, roi, np.zeros(4, np.int32), 2, 0.5)
    torch_fast._import_torchvision_ops.cache_clear()
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    try:
        assert torch_fast.torchvision_ops() is None
        got_nms = nms_ops.batched_nms_padded(boxes, scores, 8, 0.5)
        got_roi = ra.roi_align(features, roi, np.zeros(4, np.int32), 2, 0.5)
    finally:
        torch_fast._import_torchvision_ops.cache_clear()
    for a, b in zip(got_nms, expected_nms, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    np.testing.assert_allclose(ops.convert_to_numpy(got_roi), ops.convert_to_numpy(expected_roi),
                               rtol=1e-5, atol=1e-5)
