"""RoIAlign, RoIPool, FPN levels and multi-level pooling on every Keras backend, against numpy
references written from the definitions (tests/reference_roi_align.py for RoIAlign; RoIPool
and the level mapper below), forward, under the backend's compiler (jax.jit, XLA) and
gradients with respect to the features (jax.grad, torch autograd, tf.GradientTape)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from keras import ops
from reference_roi_align import roi_align_np

from keras_maskrcnn.layers.pooler import MultiLevelRoIAlign
from keras_maskrcnn.ops import poolers as pl
from keras_maskrcnn.ops import roi_align_ops as ra
from keras_maskrcnn.ops import roi_pool_ops as rp

F32 = np.float32

# Input pixels for a stride-2 map of 6 x 7 (spatial_scale 0.5): the map covers 12 x 14 pixels.
BOXES = np.array(
    [
        [2.3, 1.7, 9.1, 11.2],  # inside
        [0.0, 0.0, 12.0, 14.0],  # the whole map
        [-3.5, -2.2, 8.0, 17.9],  # past the top, left and right borders
        [9.0, 10.0, 15.3, 16.1],  # past the bottom-right corner
        [20.0, 20.0, 26.0, 30.0],  # fully outside
        [5.0, 6.0, 5.4, 6.3],  # tiny
        [0.0, 0.0, 0.0, 0.0],  # a padded row
        [8.0, 8.0, 6.0, 5.0],  # negative size
        [1.1, 12.9, 11.7, 13.6],  # thin, near the right border
        [-1.3, -0.7, 33.1, 35.2],  # larger than the map: adaptive counts up to 6
    ],
    F32,
)
BOX_INDICES = np.array([0, 1, 0, 1, 0, 1, 0, 1, 1, 0], np.int32)


def _features(shape=(2, 6, 7, 3), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(F32)


def _numpy(x):
    return ops.convert_to_numpy(x)


def _compiled(backend: str, fn):
    """`fn` under the backend's compiler: jax.jit, tf.function(jit_compile=True); PyTorch
    runs eagerly."""
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


def _run(backend: str, fn, *args):
    """`fn(*args)` as numpy; under jax.jit on JAX, whose eager mode compiles op by op (and
    re-traces the RoIAlign loop at every call)."""
    if backend == "jax":
        import jax

        fn = jax.jit(fn)
    return _numpy(fn(*args))


def _grad(backend: str, fn, xs: list[np.ndarray]) -> list[np.ndarray]:
    """The gradient of the scalar `fn(xs)` with respect to each array of `xs`, as numpy, with
    the backend's own autodiff."""
    if backend == "jax":
        import jax

        grad = jax.jit(jax.grad(fn))
        return [np.asarray(g) for g in grad([ops.convert_to_tensor(x) for x in xs])]
    if backend == "torch":
        import torch

        leaves = [torch.tensor(x, requires_grad=True) for x in xs]
        fn(leaves).backward()
        return [leaf.grad.cpu().numpy() for leaf in leaves]
    import tensorflow as tf

    leaves = [tf.constant(x) for x in xs]
    with tf.GradientTape() as tape:
        tape.watch(leaves)
        loss = fn(leaves)
    return [g.numpy() for g in tape.gradient(loss, leaves)]


# --------------------------------------------------------------------------- RoIAlign


@pytest.mark.parametrize(
    "sampling_ratio,aligned,output_size",
    [(0, True, (2, 3)), (0, False, (2, 3)), (2, True, (2, 3)), (2, False, (2, 3)), (0, True, 4),
     (2, False, 1)],
)
def test_roi_align_matches_reference(backend, sampling_ratio, aligned, output_size):
    features = _features()
    size = (output_size, output_size) if isinstance(output_size, int) else output_size
    want = roi_align_np(features, BOXES, BOX_INDICES, size, 0.5, sampling_ratio, aligned)
    got = _run(backend, lambda f: ra.roi_align(f, BOXES, BOX_INDICES, output_size, 0.5,
                                               sampling_ratio, aligned), features)
    assert got.shape == (len(BOXES), *size, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_compiled(backend, sampling_ratio):
    features = _features(seed=1)
    fn = _compiled(backend, lambda f, b, i: ra.roi_align(f, b, i, (2, 3), 0.5, sampling_ratio,
                                                         False))
    got = _numpy(fn(features, BOXES, BOX_INDICES))
    want = roi_align_np(features, BOXES, BOX_INDICES, (2, 3), 0.5, sampling_ratio, False)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_roi_align_static_and_max_samples(backend):
    features = _features(seed=2)
    static = _run(backend, lambda f: ra.roi_align(f, BOXES, BOX_INDICES, 3, 0.5, 0, True,
                                                  "static"), features)
    want = roi_align_np(features, BOXES, BOX_INDICES, (3, 3), 0.5, 0, True)
    np.testing.assert_allclose(static, want, atol=1e-5, rtol=1e-5)
    # A cap of 1 sample per axis: the reference with a 1 x 1 grid where the box asks for more.
    capped = _run(backend, lambda f: ra.roi_align(f, BOXES, BOX_INDICES, 3, 0.5, 0, True,
                                                  max_samples=1), features)
    one = roi_align_np(features, BOXES, BOX_INDICES, (3, 3), 0.5, 1, True)
    extent = (BOXES[:, 2:] - BOXES[:, :2]) * 0.5 / 3  # per-axis adaptive count before the cap
    big = np.all(extent > 0, axis=1)  # boxes with a positive extent sample 1 x 1 when capped
    np.testing.assert_allclose(capped[big], one[big], atol=1e-5, rtol=1e-5)


def test_roi_align_no_boxes():
    features = _features()
    for ratio in (0, 2):
        out = ra.roi_align(features, np.zeros((0, 4), F32), np.zeros(0, np.int32), (2, 3), 0.5,
                           ratio)
        assert tuple(out.shape) == (0, 2, 3, 3)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_gradient_matches_reference_jacobian(backend, sampling_ratio):
    features = _features((1, 4, 5, 2), seed=1)
    boxes = np.array([[0.6, 1.2, 7.4, 9.9], [-1.0, 3.0, 3.0, 10.5], [0, 0, 0, 0]], F32)
    indices = np.zeros(3, np.int32)
    args = (boxes, indices, (2, 2), 0.5, sampling_ratio, True)
    # RoIAlign is linear in the features: column j of the Jacobian is the reference of e_j.
    basis = np.eye(features.size).reshape(features.size, *features.shape)
    jacobian = np.stack([roi_align_np(e, *args).ravel() for e in basis], axis=1)
    cotangent = np.random.default_rng(2).normal(size=(3, 2, 2, 2)).astype(F32)

    def loss(xs):
        return ops.sum(ra.roi_align(xs[0], *args) * ops.convert_to_tensor(cotangent))

    grad = _grad(backend, loss, [features])[0].ravel()
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, jacobian.T @ cotangent.ravel(), atol=1e-5)


def test_tensorflow_only_implementations(backend):
    if backend == "tensorflow":
        pytest.skip("TensorFlow runs them (tests/test_ops_roi_align.py)")
    features = _features()
    for implementation in ("crop_and_resize", "custom_op"):
        with pytest.raises(ValueError, match="TensorFlow-only"):
            ra.roi_align(features, BOXES, BOX_INDICES, 2, 0.5, 2, True, implementation)
    want, auto = (
        _run(backend, lambda f, i=i: ra.roi_align(f, BOXES, BOX_INDICES, 2, 0.5, 2, True, i),
             features)
        for i in ("gather", "auto")
    )
    np.testing.assert_array_equal(auto, want)


# --------------------------------------------------------------------------- RoIPool


def _round_half_away(value: float) -> int:
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def np_roi_pool(features, boxes, box_indices, output_size, scale):
    """torchvision RoIPool from its definition: rounded RoI, floor / ceil bins, max (0 if
    empty)."""
    ph, pw = output_size
    height, width = features.shape[1:3]
    out = np.zeros((len(boxes), ph, pw, features.shape[3]))
    for n, (box, b) in enumerate(zip(boxes, box_indices, strict=True)):
        y1, x1, y2, x2 = (_round_half_away(float(F32(v) * F32(scale))) for v in box)
        bin_h = F32(max(y2 - y1 + 1, 1)) / F32(ph)
        bin_w = F32(max(x2 - x1 + 1, 1)) / F32(pw)
        for p in range(ph):
            hs = min(max(int(math.floor(F32(p) * bin_h)) + y1, 0), height)
            he = min(max(int(math.ceil(F32(p + 1) * bin_h)) + y1, 0), height)
            for q in range(pw):
                ws = min(max(int(math.floor(F32(q) * bin_w)) + x1, 0), width)
                we = min(max(int(math.ceil(F32(q + 1) * bin_w)) + x1, 0), width)
                if he > hs and we > ws:
                    out[n, p, q] = features[b, hs:he, ws:we].max(axis=(0, 1))
    return out


def test_roi_pool_matches_reference(backend):
    features = _features(seed=3)
    want = np_roi_pool(features, BOXES, BOX_INDICES, (2, 3), 0.5)
    got = _numpy(rp.roi_pool(features, BOXES, BOX_INDICES, (2, 3), 0.5))
    np.testing.assert_allclose(got, want, atol=1e-6)
    fixed = _compiled(backend, lambda f: rp.roi_pool(f, BOXES, BOX_INDICES, (2, 3), 0.5,
                                                     max_bin_size=10))
    np.testing.assert_allclose(_numpy(fixed(features)), want, atol=1e-6)
    if backend == "jax":  # the data-dependent window cannot be traced
        with pytest.raises(ValueError, match="max_bin_size"):
            _compiled(backend, lambda f: rp.roi_pool(f, BOXES, BOX_INDICES, 2, 0.5))(features)


# --------------------------------------------------------------------------- FPN levels


def np_levels(boxes, min_level, max_level, canonical_size, canonical_level, eps=1e-6):
    """torchvision's LevelMapper (eps added to the level), float64 from float32 areas."""
    boxes = np.asarray(boxes, F32)
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = np.floor(canonical_level + np.log2(np.sqrt(np.maximum(area, 0)) / canonical_size)
                         + eps)
    return np.clip(np.nan_to_num(level, nan=min_level), min_level, max_level).astype(np.int32)


def _pyramid(batch=2, channels=3, seed=4):
    rng = np.random.default_rng(seed)
    # levels 2, 3, 4 of a 64 x 64 input
    return [rng.normal(size=(batch, 64 >> k, 64 >> k, channels)).astype(F32) for k in (2, 3, 4)]


def _pyramid_boxes(batch=2, num=7, seed=6):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0, 64, size=(batch, num, 2))
    size = rng.uniform(6, 90, size=(batch, num, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], -1).astype(F32)
    boxes[1, -1] = 0.0  # a padded row
    return boxes


LEVEL_KW = dict(min_level=2, canonical_size=32.0, canonical_level=3)


def test_assign_fpn_levels_matches_formula():
    boxes = _pyramid_boxes(num=40, seed=5)
    got = _numpy(pl.assign_fpn_levels(boxes, 3, 6, 20.0, 5))
    assert got.shape == (2, 40) and got.dtype == np.int32
    np.testing.assert_array_equal(got, np_levels(boxes, 3, 6, 20.0, 5))


def _np_multilevel(features, boxes, output_size, sampling_ratio, aligned, method="align"):
    batch, num = boxes.shape[:2]
    flat = boxes.reshape(-1, 4)
    image = np.repeat(np.arange(batch), num)
    levels = np_levels(flat, 2, 4, 32.0, 3)
    assert len(set(levels.tolist())) == 3  # the boxes exercise every level
    out = np.zeros((batch * num, *output_size, features[0].shape[3]))
    for n in range(batch * num):
        k = levels[n]
        args = (features[k - 2], flat[n : n + 1], image[n : n + 1], output_size, 2.0**-k)
        if method == "pool":
            out[n] = np_roi_pool(*args)[0]
        else:
            out[n] = roi_align_np(*args, sampling_ratio, aligned)[0]
    return out.reshape(batch, num, *out.shape[1:])


@pytest.mark.parametrize("sampling_ratio,aligned", [(0, True), (2, False)])
def test_multilevel_roi_align_matches_reference(backend, sampling_ratio, aligned):
    features, boxes = _pyramid(), _pyramid_boxes()
    want = _np_multilevel(features, boxes, (3, 2), sampling_ratio, aligned)
    def pool(f, b):
        return pl.multilevel_roi_align(f, b, (3, 2), sampling_ratio=sampling_ratio,
                                       aligned=aligned, **LEVEL_KW)

    got = _numpy(_compiled(backend, pool)(features, boxes))
    assert got.shape == (2, 7, 3, 2, 3)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_multilevel_roi_pool_matches_reference(backend):
    features, boxes = _pyramid(), _pyramid_boxes()
    want = _np_multilevel(features, boxes, (2, 2), 0, True, method="pool")
    window = 12 if backend == "jax" else None  # jax.jit needs a fixed window
    got = _run(backend, lambda f: pl.multilevel_roi_align(f, boxes, 2, method="pool",
                                                          max_bin_size=window, **LEVEL_KW),
               features)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_multilevel_gradient_reaches_every_level(backend, sampling_ratio):
    features, boxes = _pyramid(), _pyramid_boxes()
    cotangent = ops.convert_to_tensor(np.random.default_rng(7).normal(
        size=(2, 7, 2, 2, 3)).astype(F32))

    def loss(maps):
        pooled = pl.multilevel_roi_align(maps, boxes, 2, sampling_ratio=sampling_ratio,
                                         **LEVEL_KW)
        return ops.sum(pooled * cotangent)

    for grad, level in zip(_grad(backend, loss, features), features, strict=True):
        assert grad.shape == level.shape
        assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


# --------------------------------------------------------------------------- layer


def test_pooler_layer_symbolic_and_eager():
    import keras

    layer = MultiLevelRoIAlign(output_size=2, sampling_ratio=0, **LEVEL_KW)
    inputs = [keras.Input((64 >> k, 64 >> k, 3), batch_size=2) for k in (2, 3, 4)]
    box_input = keras.Input((7, 4), batch_size=2)
    symbolic = layer(inputs, box_input)
    assert tuple(symbolic.shape) == (2, 7, 2, 2, 3)
    model = keras.Model([*inputs, box_input], symbolic)
    features, boxes = _pyramid(), _pyramid_boxes()
    got = _numpy(model.predict_on_batch([*features, boxes]))  # compiled on JAX and TensorFlow
    np.testing.assert_allclose(got, _np_multilevel(features, boxes, (2, 2), 0, True),
                               atol=1e-5, rtol=1e-5)
