"""Tests for the compiled RoIAlign op (keras_maskrcnn.ops.custom_roi_align)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from reference_roi_align import roi_align_np

from keras_maskrcnn.ops import custom_roi_align as cra
from keras_maskrcnn.ops import roi_align

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def op_built():
    """Compile the op once per session (a no-op when an up-to-date library exists)."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        msg = f"C++ compiler {compiler!r} not found: the RoIAlign custom op cannot be built"
        if IN_CI:
            pytest.fail(msg + " (a compiler is required in CI)")
        pytest.skip(msg)
    path = cra.build(verbose=False)
    cra.reset_cache()
    assert cra.is_available(), cra.unavailable_reason()
    return path


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(2, 11, 13, 37)).astype(np.float32)  # 32-wide loop + tail
    boxes = np.array(
        [
            [3.1, 2.7, 15.3, 20.9],  # inside (input pixels, stride 2)
            [-6.3, -4.2, 9.7, 7.9],  # past the top-left border
            [12.4, 17.1, 30.2, 33.6],  # past the bottom-right border
            [5.2, 6.3, 5.9, 6.8],  # tiny box
            [-30.0, -30.0, -10.5, -12.5],  # fully outside
            [1.3, 0.4, 21.7, 25.6],  # almost the whole map
        ],
        np.float32,
    )
    box_indices = np.array([0, 1, 1, 0, 1, 0], np.int32)
    return features, boxes, box_indices


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
def test_forward_matches_numpy(op_built, aligned, sampling_ratio):
    features, boxes, idx = _inputs()
    got = cra.roi_align_custom(
        features, boxes, idx, (3, 4), spatial_scale=0.5, sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
    want = roi_align_np(features, boxes, idx, (3, 4), 0.5, sampling_ratio, aligned)
    assert got.shape == (6, 3, 4, 37) and got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_matches_gather_path(op_built, aligned, sampling_ratio):
    features, boxes, idx = _inputs(1)
    features = tf.constant(features)
    kwargs = dict(spatial_scale=0.5, sampling_ratio=sampling_ratio, aligned=aligned)
    upstream = tf.random.stateless_normal((6, 3, 4, 37), seed=(1, 2))
    results = []
    for fn in (
        lambda f: cra.roi_align_custom(f, boxes, idx, (3, 4), **kwargs),
        lambda f: roi_align(f, boxes, idx, (3, 4), implementation="gather", **kwargs),
    ):
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = fn(features)
            loss = tf.reduce_sum(out * upstream)
        results.append((out.numpy(), tape.gradient(loss, features).numpy()))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], atol=3e-5, rtol=1e-5)


def test_gradient_is_adjoint_and_matches_numerics(op_built):
    features, boxes, idx = _inputs(2)
    kwargs = dict(output_size=(3, 2), spatial_scale=0.5, sampling_ratio=0, aligned=True)
    f = tf.constant(features)
    g = tf.random.stateless_normal((6, 3, 2, 37), seed=(3, 4))
    with tf.GradientTape() as tape:
        tape.watch(f)
        out = cra.roi_align_custom(f, boxes, idx, **kwargs)
        loss = tf.reduce_sum(out * g)
    d_f = tape.gradient(loss, f)
    # The op is linear in the features: <d_f, f> == <g, op(f)>.
    np.testing.assert_allclose(tf.reduce_sum(d_f * f), loss, rtol=1e-5)

    small_f = tf.constant(features[:, :6, :7, :2])
    small_boxes = tf.constant([[1.5, -1.2, 9.3, 8.8], [-2.0, 3.3, 14.1, 12.6]], tf.float32)
    small_idx = tf.constant([1, 0])
    theoretical, numerical = tf.test.compute_gradient(
        lambda x: cra.roi_align_custom(x, small_boxes, small_idx, **kwargs), [small_f], delta=1e-2
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


def test_second_order_gradient_is_forward(op_built):
    features, boxes, idx = _inputs(3)
    f = tf.constant(features)
    g = tf.random.stateless_normal((6, 2, 2, 37), seed=(5, 6))
    h = tf.random.stateless_normal(f.shape, seed=(7, 8))
    with tf.GradientTape() as outer:
        outer.watch(g)
        with tf.GradientTape() as inner:
            inner.watch(f)
            loss = tf.reduce_sum(cra.roi_align_custom(f, boxes, idx, 2, 0.5, 2) * g)
        d_f = inner.gradient(loss, f)
        second = tf.reduce_sum(d_f * h)
    d_g = outer.gradient(second, g)
    np.testing.assert_allclose(d_g, cra.roi_align_custom(h, boxes, idx, 2, 0.5, 2), atol=1e-5)


def test_gradient_is_deterministic_with_many_boxes(op_built):
    rng = np.random.default_rng(4)
    f = tf.constant(rng.normal(size=(2, 16, 16, 40)).astype(np.float32))
    yx = rng.uniform(-8, 60, size=(300, 2)).astype(np.float32)
    boxes = np.concatenate([yx, yx + rng.uniform(1, 40, size=(300, 2))], 1).astype(np.float32)
    idx = rng.integers(0, 2, size=300).astype(np.int32)
    g = tf.constant(rng.normal(size=(300, 7, 7, 40)).astype(np.float32))

    def grad():
        with tf.GradientTape() as tape:
            tape.watch(f)
            loss = tf.reduce_sum(cra.roi_align_custom(f, boxes, idx, 7, 0.25, 2) * g)
        return tape.gradient(loss, f).numpy(), loss

    first, loss = grad()
    second, _ = grad()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(np.sum(first * f.numpy()), loss, rtol=1e-4)


def test_empty_boxes(op_built):
    f = tf.random.stateless_normal((2, 5, 6, 3), seed=(1, 1))
    with tf.GradientTape() as tape:
        tape.watch(f)
        out = cra.roi_align_custom(f, tf.zeros((0, 4)), tf.zeros((0,), tf.int32), (7, 5))
        loss = tf.reduce_sum(out)
    assert out.shape == (0, 7, 5, 3)
    np.testing.assert_array_equal(tape.gradient(loss, f), np.zeros((2, 5, 6, 3)))


def test_low_precision_close_to_float32(op_built):
    features, boxes, idx = _inputs(5)
    ref = cra.roi_align_custom(features, boxes, idx, 3, 0.5, 2)
    for dtype in (tf.bfloat16, tf.float16):
        f = tf.cast(features, dtype)
        with tf.GradientTape() as tape:
            tape.watch(f)
            out = cra.roi_align_custom(f, boxes, idx, 3, 0.5, 2)
            loss = tf.reduce_sum(tf.cast(out, tf.float32))
        assert out.dtype == dtype
        assert tape.gradient(loss, f).dtype == dtype
        np.testing.assert_allclose(tf.cast(out, tf.float32), ref, atol=3e-2, rtol=3e-2)


def test_static_shape_in_graph(op_built):
    @tf.function(
        input_signature=[
            tf.TensorSpec((2, 8, 8, 16), tf.float32),
            tf.TensorSpec((None, 4), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ]
    )
    def fn(f, b, i):
        out = cra.roi_align_custom(f, b, i, (7, 3))
        assert out.shape.as_list() == [None, 7, 3, 16]
        grad = tf.gradients(tf.reduce_sum(out), f)[0]
        assert grad.shape.as_list() == [2, 8, 8, 16]
        return out

    fn.get_concrete_function()

    @tf.function(
        input_signature=[
            [tf.TensorSpec((2, 8, 8, 16), tf.float32), tf.TensorSpec((2, 4, 4, 16), tf.float32)],
            tf.TensorSpec((5, 4), tf.float32),
        ]
    )
    def multi(maps, b):
        i = tf.zeros((5,), tf.int32)
        out = cra.multilevel_roi_align_custom(maps, b, i, i, (7, 3), [0.25, 0.125])
        assert out.shape.as_list() == [5, 7, 3, 16]
        grads = tf.gradients(tf.reduce_sum(out), maps)
        assert [g.shape.as_list() for g in grads] == [[2, 8, 8, 16], [2, 4, 4, 16]]
        return out

    multi.get_concrete_function()


def test_bad_input(op_built):
    features, boxes, idx = _inputs()
    with pytest.raises(tf.errors.InvalidArgumentError, match="box_indices"):
        cra.roi_align_custom(features, boxes, np.full(6, 2, np.int32), 2)
    with pytest.raises(ValueError, match="output_size"):
        cra.roi_align_custom(features, boxes, idx, (0, 2))
    with pytest.raises(TypeError, match="output_size"):  # the same check as roi_align's
        cra.roi_align_custom(features, boxes, idx, "7")
    with pytest.raises(ValueError, match="sampling_ratio"):
        cra.roi_align_custom(features, boxes, idx, 2, sampling_ratio=-1)
    with pytest.raises(ValueError, match="spatial_scale"):
        cra.roi_align_custom(features, boxes, idx, 2, spatial_scale=0.0)
    with pytest.raises(TypeError, match="features"):
        cra.roi_align_custom(features.astype(np.float64), boxes, idx, 2)


def test_disable_env_and_stale_stamp(op_built, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_MASKRCNN_DISABLE_CUSTOM_OP", "1")
    assert not cra.is_available()
    assert cra.implementation_in_use() == "gather"
    monkeypatch.delenv("KERAS_MASKRCNN_DISABLE_CUSTOM_OP")
    assert cra.implementation_in_use() == "custom_op"

    shutil.copy(op_built, tmp_path / op_built.name)
    stamp = json.loads((op_built.parent / "_kmr_roi_align.stamp.json").read_text())
    (tmp_path / "_kmr_roi_align.stamp.json").write_text(json.dumps(stamp))
    monkeypatch.setenv("KERAS_MASKRCNN_CUSTOM_OP_DIR", str(tmp_path))
    assert cra.library_path() == tmp_path / op_built.name
    stamp["tensorflow"] = "0.0.0"
    (tmp_path / "_kmr_roi_align.stamp.json").write_text(json.dumps(stamp))
    assert cra.library_path() is None


def _multilevel_inputs():
    rng = np.random.default_rng(6)
    maps = [
        tf.constant(rng.normal(size=(2, 16 // 2**k + 1, 18 // 2**k, 6)).astype(np.float32))
        for k in range(3)
    ]
    yx = rng.uniform(-10, 60, size=(9, 2))
    boxes = np.concatenate([yx, yx + rng.uniform(2, 40, size=(9, 2))], 1).astype(np.float32)
    idx = rng.integers(0, 2, size=9).astype(np.int32)
    levels = np.array([0, 1, 2, 2, 0, 1, 1, 0, 2], np.int32)
    return maps, boxes, idx, levels, [1 / 2, 1 / 4, 1 / 8]


def test_multilevel_matches_single_level_calls(op_built):
    maps, boxes, idx, levels, scales = _multilevel_inputs()
    upstream = tf.random.stateless_normal((9, 3, 2, 6), seed=(9, 9))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(maps)
        multi = cra.multilevel_roi_align_custom(maps, boxes, idx, levels, (3, 2), scales, 0, False)
        per_level = [cra.roi_align_custom(m, boxes, idx, (3, 2), s, 0, False)
                     for m, s in zip(maps, scales, strict=True)]
        single = tf.gather(tf.stack(per_level, 1), levels, axis=1, batch_dims=1)
        loss_multi = tf.reduce_sum(multi * upstream)
        loss_single = tf.reduce_sum(single * upstream)
    np.testing.assert_allclose(multi, single, atol=1e-6)
    for got, want in zip(tape.gradient(loss_multi, maps), tape.gradient(loss_single, maps),
                         strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)

    # Second order: d/d(upstream) <d loss / d maps, h> is the forward op applied to h.
    h = [tf.random.stateless_normal(m.shape, seed=(k, 1)) for k, m in enumerate(maps)]
    with tf.GradientTape() as outer:
        outer.watch(upstream)
        with tf.GradientTape() as inner:
            inner.watch(maps)
            out = cra.multilevel_roi_align_custom(maps, boxes, idx, levels, (3, 2), scales)
            loss = tf.reduce_sum(out * upstream)
        d_maps = inner.gradient(loss, maps)
        second = tf.add_n([tf.reduce_sum(d * x) for d, x in zip(d_maps, h, strict=True)])
    want = cra.multilevel_roi_align_custom(h, boxes, idx, levels, (3, 2), scales)
    np.testing.assert_allclose(outer.gradient(second, upstream), want, atol=1e-5)


def test_multilevel_empty_and_bad_levels(op_built):
    maps, boxes, idx, levels, scales = _multilevel_inputs()
    with tf.GradientTape() as tape:
        tape.watch(maps)
        out = cra.multilevel_roi_align_custom(
            maps, tf.zeros((0, 4)), tf.zeros((0,), tf.int32), tf.zeros((0,), tf.int32), 4, scales
        )
        loss = tf.reduce_sum(out)
    assert out.shape == (0, 4, 4, 6)
    for grad, m in zip(tape.gradient(loss, maps), maps, strict=True):
        np.testing.assert_array_equal(grad, np.zeros(m.shape))
    with pytest.raises(tf.errors.InvalidArgumentError, match="box_levels"):
        cra.multilevel_roi_align_custom(maps, boxes, idx, levels + 1, 4, scales)
    with pytest.raises(ValueError, match="spatial_scales"):
        cra.multilevel_roi_align_custom(maps, boxes, idx, levels, 4, scales[:2])


def test_multilevel_roi_align_custom_op_matches_gather(op_built):
    """The pooler's one-call multi-level path equals the pure-TF path."""
    from keras_maskrcnn.ops.poolers import multilevel_roi_align

    rng = np.random.default_rng(3)
    feats = [tf.constant(rng.normal(size=(2, 64 // s, 64 // s, 8)).astype("float32"))
             for s in (4, 8, 16, 32)]
    y1, x1 = rng.uniform(-5, 50, (2, 30, 1)), rng.uniform(-5, 50, (2, 30, 1))
    hw = rng.uniform(1, 70, (2, 30, 2))
    boxes = tf.constant(np.concatenate([y1, x1, y1 + hw[..., :1], x1 + hw[..., 1:]], -1),
                        tf.float32)
    for ratio in (0, 2):
        a = multilevel_roi_align(feats, boxes, 7, sampling_ratio=ratio, implementation="gather")
        b = multilevel_roi_align(feats, boxes, 7, sampling_ratio=ratio,
                                 implementation="custom_op")
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5)
