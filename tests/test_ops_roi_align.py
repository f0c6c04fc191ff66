"""RoIAlign / RoIPool / FPN level assignment / multi-level pooling vs numpy references.

The references are written from the definitions (torchvision's CPU kernels): loops over
boxes, bins and sample points, with the sample coordinates computed in float32 like the kernel.
RoIAlign's is shared with the custom-op tests (tests/reference_roi_align.py).
"""

import math
import sys

import numpy as np
import pytest
import tensorflow as tf
from reference_roi_align import roi_align_np

from keras_maskrcnn.ops import custom_roi_align
from keras_maskrcnn.ops import poolers as pl
from keras_maskrcnn.ops import roi_align_ops as ra
from keras_maskrcnn.ops import roi_pool_ops as rp

F32 = np.float32


# --------------------------------------------------------------------------- numpy references


def np_round(value):
    """C++ std::round: halves away from zero."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def np_roi_pool(features, boxes, box_indices, output_size, scale):
    """torchvision RoIPool from its definition."""
    ph, pw = output_size
    height, width = features.shape[1:3]
    out = np.zeros((len(boxes), ph, pw, features.shape[3]))
    for n, (box, b) in enumerate(zip(boxes, box_indices, strict=True)):
        y1, x1, y2, x2 = (np_round(float(F32(v) * F32(scale))) for v in box)
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


def np_levels(boxes, min_level, max_level, canonical_size, canonical_level, eps=1e-6):
    """torchvision LevelMapper (eps added to the level), in float64 from float32 areas."""
    boxes = np.asarray(boxes, F32)
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).astype(np.float64)
    with np.errstate(divide="ignore"):
        level = np.floor(canonical_level + np.log2(np.sqrt(area) / canonical_size) + eps)
    return np.clip(level, min_level, max_level).astype(np.int32)


# --------------------------------------------------------------------------- fixtures


def _features(shape=(2, 6, 7, 3), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(F32)


# Input pixels for a stride-2 map of 6 x 7 (spatial_scale 0.5): the map covers 12 x 14 pixels.
BOXES = np.array(
    [
        [2.3, 1.7, 9.1, 11.2],  # inside
        [0.0, 0.0, 12.0, 14.0],  # the whole map, edges on the border
        [-3.5, -2.2, 8.0, 17.9],  # past the top, left and right borders
        [9.0, 10.0, 15.3, 16.1],  # past the bottom-right corner
        [20.0, 20.0, 26.0, 30.0],  # fully outside
        [5.0, 6.0, 5.4, 6.3],  # tiny
        [4.0, 4.0, 4.0, 4.0],  # zero size
        [8.0, 8.0, 6.0, 5.0],  # negative size
        [-1.3, -0.7, 13.1, 15.2],  # slightly larger than the map
        [1.1, 12.9, 11.7, 13.6],  # thin, near the right border
    ],
    F32,
)
BOX_INDICES = np.array([0, 1, 0, 1, 0, 1, 0, 1, 1, 0], np.int32)


def _run(
    features,
    boxes=BOXES,
    box_indices=BOX_INDICES,
    output_size=(2, 3),
    scale=0.5,
    sampling_ratio=2,
    aligned=True,
    implementation="gather",
):
    out = ra.roi_align(
        features, boxes, box_indices, output_size, scale, sampling_ratio, aligned, implementation
    )
    return out.numpy()


# --------------------------------------------------------------------------- RoIAlign


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
def test_roi_align_matches_reference(aligned, sampling_ratio):
    features = _features()
    want = roi_align_np(features, BOXES, BOX_INDICES, (2, 3), 0.5, sampling_ratio, aligned)
    got = _run(features, sampling_ratio=sampling_ratio, aligned=aligned)
    assert got.shape == (len(BOXES), 2, 3, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_roi_align_adaptive_large_boxes_and_square_output():
    # Adaptive counts of 1..5 per axis in one call (mixed per-box grids).
    features = _features((1, 20, 24, 2), seed=3)
    boxes = np.array(
        [[0, 0, 20, 24], [3.2, 1.1, 4.0, 22.7], [2.5, 5.5, 18.3, 7.1], [-4, -6, 30, 31]], F32
    )
    indices = np.zeros(4, np.int32)
    for aligned in (True, False):
        want = roi_align_np(features, boxes, indices, (4, 4), 1.0, 0, aligned)
        got = _run(features, boxes, indices, 4, 1.0, 0, aligned)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_roi_align_hand_computed_ramp():
    # f(y, x) = 5 y + x on a 5 x 5 map: bilinear reads of a linear ramp are exact.
    ramp = (5.0 * np.arange(5)[:, None] + np.arange(5)[None, :]).astype(F32)
    features = ramp[None, :, :, None]
    # aligned=True, box (1, 1, 4, 4): start 0.5, bins of 1, sample means at 1 + p, 1 + q.
    got = _run(features, np.array([[1, 1, 4, 4]], F32), [0], 3, 1.0, 2, True)[0, :, :, 0]
    p = np.arange(3)[:, None]
    q = np.arange(3)[None, :]
    np.testing.assert_allclose(got, 5.0 * (1 + p) + (1 + q), atol=1e-5)
    # aligned=False, one sample per 1x1 bin, each read known by hand:
    boxes = np.array(
        [
            [0, 0, 5, 5],  # centre (2.5, 2.5): 15
            [4, 4, 5, 5],  # (4.5, 4.5): past the last row / column, snaps to f(4, 4) = 24
            [-1, 0, 0, 1],  # (-0.5, 0.5): y in [-1, 0) clamps to 0 -> f(0, 0.5) = 0.5
            [5.5, 0, 6.5, 1],  # (6, 0.5): y > H = 5 reads 0
            [0, -2.5, 1, -1.5],  # (0.5, -2): x < -1 reads 0
            [2, 4.1, 3, 5.1],  # (2.5, 4.6): x in (W - 1, W], snaps to column 4 -> 16.5
            [4.5, 0, 5.5, 1],  # (5, 0.5): y == H is still inside -> f(4, 0.5) = 20.5
            [-1.5, 0, -0.5, 1],  # (-1, 0.5): y == -1 is still inside -> f(0, 0.5) = 0.5
            [0, 4.75, 1, 5.75],  # (0.5, 5.25): x > W reads 0
        ],
        F32,
    )
    got = _run(features, boxes, np.zeros(9, np.int32), 1, 1.0, 1, False)[:, 0, 0, 0]
    want = [15.0, 24.0, 0.5, 0.0, 0.0, 16.5, 20.5, 0.5, 0.0]
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_align_gradient_matches_reference_jacobian(sampling_ratio):
    features = _features((1, 4, 5, 2), seed=1).astype(np.float64)
    boxes = np.array([[0.6, 1.2, 7.4, 9.9], [-1.0, 3.0, 3.0, 10.5]], F32)
    indices = np.zeros(2, np.int32)
    args = (boxes, indices, (2, 2), 0.5, sampling_ratio, True)
    # The op is linear in the features: column j of the reference Jacobian is ref(e_j).
    size = features.size
    basis = np.eye(size).reshape(size, *features.shape)
    jacobian = np.stack([roi_align_np(e, *args).ravel() for e in basis], axis=1)
    cotangent = np.random.default_rng(2).normal(size=(2, 2, 2, 2))
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = ra.roi_align(x, boxes, indices, 2, 0.5, sampling_ratio, True, "gather")
        loss = tf.reduce_sum(out * cotangent)
    grad = tape.gradient(loss, x).numpy().ravel()
    np.testing.assert_allclose(grad, jacobian.T @ cotangent.ravel(), atol=1e-9)
    # and a finite-difference check of the reference itself along one direction
    step = np.random.default_rng(3).normal(size=features.shape)
    eps = 1e-3
    plus = roi_align_np(features + eps * step, *args)
    minus = roi_align_np(features - eps * step, *args)
    fd = np.sum((plus - minus) * cotangent) / (2 * eps)
    np.testing.assert_allclose(fd, grad @ step.ravel(), rtol=1e-6)


def test_roi_align_no_boxes():
    features = _features()
    for ratio in (0, 2):
        out = ra.roi_align(
            features,
            np.zeros((0, 4), F32),
            np.zeros(0, np.int32),
            (2, 3),
            0.5,
            ratio,
            True,
            "gather",
        )
        assert out.shape == (0, 2, 3, 3)

    @tf.function(input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32)])
    def pool(boxes, indices):
        return ra.roi_align(features, boxes, indices, (2, 3), 0.5, 0, True, "gather")

    assert pool(tf.zeros([0, 4]), tf.zeros([0], tf.int32)).shape == (0, 2, 3, 3)
    got = pool(tf.constant(BOXES), tf.constant(BOX_INDICES)).numpy()
    want = roi_align_np(features, BOXES, BOX_INDICES, (2, 3), 0.5, 0, True)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_roi_align_xla_static_shapes():
    features = _features()
    fn = tf.function(
        lambda f, b, i: ra.roi_align(f, b, i, (2, 3), 0.5, 2, False, "gather"), jit_compile=True
    )
    got = fn(tf.constant(features), tf.constant(BOXES), tf.constant(BOX_INDICES)).numpy()
    want = roi_align_np(features, BOXES, BOX_INDICES, (2, 3), 0.5, 2, False)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    static = tf.function(
        lambda b: ra.roi_align(features, b, BOX_INDICES, (2, 3), 0.5, 2, True, "gather")
    ).get_concrete_function(tf.TensorSpec([10, 4]))
    assert static.structured_outputs.shape == (10, 2, 3, 3)


@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_roi_align_half_precision(dtype, sampling_ratio):
    features = _features()
    half = tf.cast(features, dtype)
    got = ra.roi_align(half, BOXES, BOX_INDICES, (2, 3), 0.5, sampling_ratio, True, "gather")
    assert got.dtype == dtype
    want = roi_align_np(features, BOXES, BOX_INDICES, (2, 3), 0.5, sampling_ratio, True)
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), want, atol=0.06)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_crop_and_resize_equals_gather(aligned, sampling_ratio):
    features = _features()
    gather = _run(features, sampling_ratio=sampling_ratio, aligned=aligned)
    crop = _run(
        features, sampling_ratio=sampling_ratio, aligned=aligned, implementation="crop_and_resize"
    )
    np.testing.assert_allclose(crop, gather, atol=1e-5, rtol=1e-5)


def test_crop_and_resize_rejects_adaptive_ratio():
    with pytest.raises(ValueError, match="sampling_ratio"):
        _run(_features(), sampling_ratio=0, implementation="crop_and_resize")


def test_custom_op_missing(monkeypatch):
    # An unimportable custom-op module: "auto" falls back to gather, "custom_op" says how to build.
    monkeypatch.setitem(sys.modules, custom_roi_align.__name__, None)
    features = _features()
    auto = _run(features, implementation="auto")
    np.testing.assert_array_equal(auto, _run(features))
    with pytest.raises(RuntimeError, match="--build"):
        _run(features, implementation="custom_op")


def test_auto_and_custom_op_when_available():
    features = _features()
    want = roi_align_np(features, BOXES, BOX_INDICES, (2, 3), 0.5, 2, True)
    np.testing.assert_allclose(_run(features, implementation="auto"), want, atol=1e-5)
    if not custom_roi_align.is_available():
        with pytest.raises(RuntimeError, match="--build"):
            _run(features, implementation="custom_op")
    else:
        np.testing.assert_allclose(_run(features, implementation="custom_op"), want, atol=1e-5)
    # "auto" must stay XLA-compilable and accept dtypes the compiled op lacks
    xla = tf.function(
        lambda f: ra.roi_align(f, BOXES, BOX_INDICES, (2, 3), 0.5, 2, True, "auto"),
        jit_compile=True,
    )
    np.testing.assert_allclose(xla(features).numpy(), want, atol=1e-5)
    got64 = _run(features.astype(np.float64), implementation="auto")
    np.testing.assert_allclose(got64, want, atol=1e-5)


def test_roi_align_bad_arguments():
    features = _features()
    with pytest.raises(ValueError, match="output_size"):
        _run(features, output_size=(0, 2))
    with pytest.raises(TypeError, match="output_size"):
        _run(features, output_size="7")
    with pytest.raises(ValueError, match="sampling_ratio"):
        _run(features, sampling_ratio=-1)
    with pytest.raises(ValueError, match="implementation"):
        _run(features, implementation="fast")
    with pytest.raises(ValueError, match="features"):
        _run(features[0])
    with pytest.raises(ValueError, match="boxes"):
        _run(features, boxes=BOXES[:, :3])
    with pytest.raises(ValueError, match="spatial_scale"):
        _run(features, scale=0.0)


# --------------------------------------------------------------------------- RoIPool


def test_roi_pool_matches_reference():
    features = _features(seed=2)
    # Coordinates x 0.5 land on halves (2.5 -> 3, 0.5 -> 1, -2.5 -> -3: away from zero).
    boxes = np.concatenate(
        [BOXES, np.array([[5, 1, 9, 5], [-5, 3, 7, 13], [1, 1, 1, 1], [3, 7, 11, 11]], F32)]
    )
    indices = np.concatenate([BOX_INDICES, [0, 1, 0, 1]]).astype(np.int32)
    want = np_roi_pool(features, boxes, indices, (2, 3), 0.5)
    got = rp.roi_pool(features, boxes, indices, (2, 3), 0.5).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    fixed = tf.function(lambda f: rp.roi_pool(f, boxes, indices, (2, 3), 0.5, max_bin_size=8))
    static = fixed.get_concrete_function(tf.TensorSpec(features.shape))
    assert static.structured_outputs.shape == (len(boxes), 2, 3, 3)
    np.testing.assert_allclose(fixed(features).numpy(), want, atol=1e-6)
    empty = rp.roi_pool(features, np.zeros((0, 4), F32), np.zeros(0, np.int32), 2, 0.5)
    assert empty.shape == (0, 2, 2, 3)


# --------------------------------------------------------------------------- FPN levels


def test_assign_fpn_levels_pinned_sizes():
    below_112 = np.nextafter(F32(112), F32(0))
    for _ in range(3):
        below_112 = np.nextafter(below_112, F32(0))  # 112 minus 4 ulps
    sizes = np.array([224, 112, 448, 56, 1000, 0, 223.9, 224 * (1 - 5e-6), below_112], F32)
    boxes = np.stack([np.zeros_like(sizes), np.full_like(sizes, 7), sizes, sizes + 7], -1)
    got = pl.assign_fpn_levels(boxes).numpy()
    np.testing.assert_array_equal(got, [4, 3, 5, 2, 5, 2, 3, 3, 3])
    # 112 - 4 ulps is 3 only because eps is added after the log (torchvision); with
    # Detectron2's eps inside the log (1e-8, lost in float32) it would be level 2.
    ratio = np.float64(below_112) / 224
    assert math.floor(4 + math.log2(ratio + 1e-8)) == 2
    assert math.floor(4 + math.log2(ratio) + 1e-6) == 3


def test_assign_fpn_levels_matches_formula():
    rng = np.random.default_rng(5)
    y1x1 = rng.uniform(0, 100, size=(3, 40, 2))
    hw = np.exp(rng.uniform(np.log(4), np.log(900), size=(3, 40, 2)))
    boxes = np.concatenate([y1x1, y1x1 + hw], -1).astype(F32)
    got = pl.assign_fpn_levels(boxes, 3, 6, 200.0, 5).numpy()
    assert got.shape == (3, 40) and got.dtype == np.int32
    np.testing.assert_array_equal(got, np_levels(boxes, 3, 6, 200.0, 5))
    degenerate = np.array([[5, 5, 3, 9], [np.nan, 0, 1, 1]], F32)
    np.testing.assert_array_equal(pl.assign_fpn_levels(degenerate).numpy(), [2, 2])


# --------------------------------------------------------------------------- multi-level


def _pyramid(batch=2, channels=3, seed=4):
    rng = np.random.default_rng(seed)
    # levels 2, 3, 4 of a 64 x 64 input
    return [rng.normal(size=(batch, 64 >> k, 64 >> k, channels)).astype(F32) for k in (2, 3, 4)]


def _pyramid_boxes(batch=2, num=7, seed=6):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0, 64, size=(batch, num, 2))
    size = rng.uniform(6, 90, size=(batch, num, 2))
    return np.concatenate([centre - size / 2, centre + size / 2], -1).astype(F32)


LEVEL_KW = dict(min_level=2, canonical_size=32.0, canonical_level=3)


def _np_multilevel(features, boxes, output_size, sampling_ratio, aligned, method="align"):
    batch, num = boxes.shape[:2]
    flat = boxes.reshape(-1, 4)
    image = np.repeat(np.arange(batch), num)
    levels = np_levels(flat, 2, 4, 32.0, 3)
    out = np.zeros((batch * num, *output_size, features[0].shape[3]))
    for n in range(batch * num):
        k = levels[n]
        args = (features[k - 2], flat[n : n + 1], image[n : n + 1], output_size, 2.0**-k)
        if method == "pool":
            out[n] = np_roi_pool(*args)[0]
        else:
            out[n] = roi_align_np(*args, sampling_ratio, aligned)[0]
    assert len(set(levels.tolist())) == 3  # the boxes exercise every level
    return out.reshape(batch, num, *out.shape[1:])


@pytest.mark.parametrize("sampling_ratio,aligned", [(0, True), (2, False)])
def test_multilevel_roi_align_matches_reference(sampling_ratio, aligned):
    features, boxes = _pyramid(), _pyramid_boxes()
    want = _np_multilevel(features, boxes, (3, 2), sampling_ratio, aligned)
    kw = dict(sampling_ratio=sampling_ratio, aligned=aligned, **LEVEL_KW)
    got = pl.multilevel_roi_align(features, boxes, (3, 2), implementation="gather", **kw)
    assert got.shape == (2, 7, 3, 2, 3)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=1e-5)
    per_level = pl.multilevel_roi_align_per_level(features, boxes, (3, 2), **kw)
    np.testing.assert_allclose(per_level.numpy(), want, atol=1e-5, rtol=1e-5)


def test_multilevel_roi_pool_matches_reference():
    features, boxes = _pyramid(), _pyramid_boxes()
    want = _np_multilevel(features, boxes, (2, 2), 0, True, method="pool")
    got = pl.multilevel_roi_align(features, boxes, 2, method="pool", **LEVEL_KW)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_multilevel_dynamic_batch_and_xla():
    features, boxes = _pyramid(), _pyramid_boxes()
    specs = [tf.TensorSpec([None, 64 >> k, 64 >> k, 3]) for k in (2, 3, 4)]

    @tf.function(input_signature=[specs, tf.TensorSpec([None, None, 4])])
    def dynamic(f, b):
        return pl.multilevel_roi_align(
            f, b, 2, sampling_ratio=2, implementation="gather", **LEVEL_KW
        )

    want = _np_multilevel(features, boxes, (2, 2), 2, True)
    np.testing.assert_allclose(dynamic(features, boxes).numpy(), want, atol=1e-5, rtol=1e-5)
    assert dynamic(features, boxes[:, :0]).shape == (2, 0, 2, 2, 3)

    xla = tf.function(
        lambda f, b: pl.multilevel_roi_align(
            f, b, 2, sampling_ratio=2, implementation="gather", **LEVEL_KW
        ),
        jit_compile=True,
    )
    np.testing.assert_allclose(xla(features, boxes).numpy(), want, atol=1e-5, rtol=1e-5)


def test_multilevel_gradient_reaches_every_level():
    features, boxes = [tf.constant(f) for f in _pyramid()], _pyramid_boxes()
    with tf.GradientTape() as tape:
        tape.watch(features)
        out = pl.multilevel_roi_align(
            features, boxes, 2, sampling_ratio=2, implementation="gather", **LEVEL_KW
        )
        loss = tf.reduce_sum(out)
    grads = tape.gradient(loss, features)
    assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_multilevel_bad_arguments():
    features, boxes = _pyramid(), _pyramid_boxes()
    with pytest.raises(ValueError, match="method"):
        pl.multilevel_roi_align(features, boxes, 2, method="max")
    with pytest.raises(ValueError, match="boxes"):
        pl.multilevel_roi_align(features, boxes[0], 2)
    with pytest.raises(TypeError, match="features"):
        pl.multilevel_roi_align(features[0], boxes, 2)


# --------------------------------------------------------------------------- static adaptive


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_static_matches_reference(aligned, sampling_ratio):
    # implementation="static": the adaptive ratio with static shapes (a fixed ratio is static
    # on every path); same numbers as "gather".
    features = _features()
    want = roi_align_np(features, BOXES, BOX_INDICES, (2, 3), 0.5, sampling_ratio, aligned)
    got = _run(features, sampling_ratio=sampling_ratio, aligned=aligned, implementation="static")
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got, _run(features, sampling_ratio=sampling_ratio, aligned=aligned),
                               atol=1e-6)


def test_roi_align_static_gradient_matches_reference_jacobian():
    features = _features((1, 4, 5, 2), seed=1).astype(np.float64)
    boxes = np.array([[0.6, 1.2, 7.4, 9.9], [-1.0, 3.0, 3.0, 10.5]], F32)
    indices = np.zeros(2, np.int32)
    args = (boxes, indices, (2, 2), 0.5, 0, True)
    size = features.size
    basis = np.eye(size).reshape(size, *features.shape)
    jacobian = np.stack([roi_align_np(e, *args).ravel() for e in basis], axis=1)
    cotangent = np.random.default_rng(2).normal(size=(2, 2, 2, 2))
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(ra.roi_align(x, *args, "static") * cotangent)
    grad = tape.gradient(loss, x).numpy().ravel()
    np.testing.assert_allclose(grad, jacobian.T @ cotangent.ravel(), atol=1e-9)


def test_roi_align_static_dynamic_number_of_boxes():
    features = _features()

    @tf.function(input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32)])
    def pool(boxes, indices):
        return ra.roi_align(features, boxes, indices, (2, 3), 0.5, 0, True, "static")

    assert pool(tf.zeros([0, 4]), tf.zeros([0], tf.int32)).shape == (0, 2, 3, 3)
    want = roi_align_np(features, BOXES, BOX_INDICES, (2, 3), 0.5, 0, True)
    np.testing.assert_allclose(pool(BOXES, BOX_INDICES).numpy(), want, atol=1e-5, rtol=1e-5)


def test_roi_align_adaptive_under_xla():
    # "gather" and "auto" with the adaptive ratio compile under XLA (the static formulation).
    features = _features()
    want = roi_align_np(features, BOXES, BOX_INDICES, (2, 3), 0.5, 0, False)
    for implementation in ("gather", "auto", "static"):
        fn = tf.function(
            lambda f, impl=implementation: ra.roi_align(f, BOXES, BOX_INDICES, (2, 3), 0.5, 0,
                                                        False, impl),
            jit_compile=True,
        )
        np.testing.assert_allclose(fn(features).numpy(), want, atol=1e-5, rtol=1e-5)


def test_multilevel_static_matches_reference():
    features, boxes = _pyramid(), _pyramid_boxes()
    want = _np_multilevel(features, boxes, (3, 2), 0, True)
    got = pl.multilevel_roi_align(features, boxes, (3, 2), sampling_ratio=0,
                                  implementation="static", **LEVEL_KW)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=1e-5)
    xla = tf.function(
        lambda f, b: pl.multilevel_roi_align(f, b, (3, 2), sampling_ratio=0, **LEVEL_KW),
        jit_compile=True,
    )
    np.testing.assert_allclose(xla(features, boxes).numpy(), want, atol=1e-5, rtol=1e-5)
