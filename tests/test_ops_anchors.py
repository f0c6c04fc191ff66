"""Tests for keras_maskrcnn.ops.anchors (layout, centres, torchvision rounding rule)."""

import math

import numpy as np
import pytest

from keras_maskrcnn.ops import anchors as anchor_ops

STRIDES = (4, 8, 16, 32, 64)
SIZES = (32, 64, 128, 256, 512)
RATIOS = (0.5, 1.0, 2.0)


def test_feature_sizes_are_ceil():
    assert anchor_ops.feature_sizes((64, 96), STRIDES) == [
        (16, 24),
        (8, 12),
        (4, 6),
        (2, 3),
        (1, 2),
    ]
    assert anchor_ops.feature_sizes((100, 70), (8, 64)) == [(13, 9), (2, 2)]


def test_counts_per_level_and_concatenation():
    image_size = (64, 96)
    levels = anchor_ops.anchors_per_level(image_size, STRIDES, SIZES, RATIOS)
    sizes = anchor_ops.feature_sizes(image_size, STRIDES)
    a = anchor_ops.num_anchors_per_location(RATIOS)
    assert a == 3
    assert [len(level) for level in levels] == [h * w * a for h, w in sizes]
    all_anchors = anchor_ops.generate_anchors(image_size, STRIDES, SIZES, RATIOS)
    assert all_anchors.dtype == np.float32 and all_anchors.shape == (sum(map(len, levels)), 4)
    np.testing.assert_array_equal(all_anchors, np.concatenate(levels))


def test_layout_centres_and_sizes():
    image_size = (40, 72)
    levels = anchor_ops.anchors_per_level(image_size, (8, 16), (32, 64), RATIOS)
    for level, stride, size, (gh, gw) in zip(
        levels, (8, 16), (32, 64), anchor_ops.feature_sizes(image_size, (8, 16)), strict=True
    ):
        grid = level.reshape(gh, gw, len(RATIOS), 4)  # location-major (y, x), then ratio
        cy = (grid[..., 0] + grid[..., 2]) / 2
        cx = (grid[..., 1] + grid[..., 3]) / 2
        rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        np.testing.assert_allclose(cy, np.repeat(rows[..., None] * stride, 3, -1), atol=1e-4)
        np.testing.assert_allclose(cx, np.repeat(cols[..., None] * stride, 3, -1), atol=1e-4)
        heights = grid[..., 2] - grid[..., 0]
        widths = grid[..., 3] - grid[..., 1]
        for k, ratio in enumerate(RATIOS):
            np.testing.assert_allclose(heights[..., k], size * math.sqrt(ratio), rtol=1e-6)
            np.testing.assert_allclose(widths[..., k], size / math.sqrt(ratio), rtol=1e-6)


def test_first_cells_by_hand():
    anchors = anchor_ops.generate_anchors((16, 16), strides=(8,), sizes=(32,), aspect_ratios=RATIOS)
    h = [32 * math.sqrt(r) for r in RATIOS]
    w = [32 / math.sqrt(r) for r in RATIOS]
    expected = []
    for cy, cx in [(0, 0), (0, 8), (8, 0), (8, 8)]:  # row-major over the 2 x 2 grid
        for k in range(3):
            expected.append([cy - h[k] / 2, cx - w[k] / 2, cy + h[k] / 2, cx + w[k] / 2])
    np.testing.assert_allclose(anchors, np.array(expected), atol=1e-4)


def test_offset_moves_centres():
    anchors = anchor_ops.generate_anchors(
        (16, 16), strides=(8,), sizes=(8,), aspect_ratios=(1.0,), offset=0.5
    )
    np.testing.assert_allclose(anchors[:, 0] + 4, [4, 4, 12, 12])
    np.testing.assert_allclose(anchors[:, 1] + 4, [4, 12, 4, 12])


def _torchvision_rule_base(size: float, ratios) -> np.ndarray:
    """torchvision's AnchorGenerator.generate_anchors, written from its formula.

    h_ratios = sqrt(r), w_ratios = 1 / h_ratios, ws = w_ratios * size, hs = h_ratios * size;
    base = round([-ws, -hs, ws, hs] / 2) in (x1, y1, x2, y2), float32, round half to even.
    Returned here in our (y1, x1, y2, x2) order.
    """
    h_ratios = np.sqrt(np.asarray(ratios, np.float32))
    w_ratios = np.float32(1) / h_ratios
    ws = w_ratios * np.float32(size)
    hs = h_ratios * np.float32(size)
    xyxy = np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2))
    return xyxy[:, [1, 0, 3, 2]]


def test_round_base_matches_torchvision_rule():
    expected_by_hand = np.array(
        [[-11, -23, 11, 23], [-16, -16, 16, 16], [-23, -11, 23, 11]], np.float32
    )
    np.testing.assert_array_equal(_torchvision_rule_base(32, RATIOS), expected_by_hand)
    np.testing.assert_array_equal(anchor_ops.base_anchors(32, RATIOS, True), expected_by_hand)
    for size in SIZES:
        np.testing.assert_array_equal(
            anchor_ops.base_anchors(size, RATIOS, round_base=True),
            _torchvision_rule_base(size, RATIOS),
        )
    level = anchor_ops.generate_anchors(
        (16, 16), strides=(8,), sizes=(32,), aspect_ratios=RATIOS, round_base=True
    )
    np.testing.assert_array_equal(level[:3], expected_by_hand)
    np.testing.assert_array_equal(level[3:6], expected_by_hand + [0, 8, 0, 8])
    unrounded = anchor_ops.generate_anchors((16, 16), strides=(8,), sizes=(32,))
    assert not np.array_equal(unrounded[:3], expected_by_hand)


def test_round_base_half_to_even_and_before_shift():
    # Half sizes 2.5 -> 2 and 3.5 -> 4 (round half to even, as torch.round).
    np.testing.assert_array_equal(anchor_ops.base_anchors(5, (1.0,), True), [[-2, -2, 2, 2]])
    np.testing.assert_array_equal(anchor_ops.base_anchors(7, (1.0,), True), [[-4, -4, 4, 4]])
    # Rounded before the shift: centre 2.5 + rounded base (-2, 2), not round(0.5 - 2.5).
    anchors = anchor_ops.generate_anchors(
        (5, 5), strides=(5,), sizes=(5,), aspect_ratios=(1.0,), offset=0.5, round_base=True
    )
    np.testing.assert_array_equal(anchors, [[0.5, 0.5, 4.5, 4.5]])


def test_stride_from_grid_follows_torchvision_rule():
    # 96 x 64 canvas, stride 64: grid 2 x 1, torchvision strides 96 // 2 = 48 and 64 // 1 = 64.
    nominal = anchor_ops.generate_anchors(
        (96, 64), strides=(64,), sizes=(64,), aspect_ratios=(1.0,)
    )
    grid = anchor_ops.generate_anchors(
        (96, 64), strides=(64,), sizes=(64,), aspect_ratios=(1.0,), stride_from_grid=True
    )
    np.testing.assert_allclose(nominal[:, 0] + 32, [0, 64])
    np.testing.assert_allclose(grid[:, 0] + 32, [0, 48])
    divisible = anchor_ops.generate_anchors((64, 128), STRIDES, SIZES, RATIOS)
    np.testing.assert_array_equal(
        divisible,
        anchor_ops.generate_anchors((64, 128), STRIDES, SIZES, RATIOS, stride_from_grid=True),
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=(0, 32)), "image_size"),
        (dict(image_size=(32.0, 32)), "image_size"),
        (dict(image_size=(32,)), "image_size"),
        (dict(image_size=(32, 32), sizes=(32, 64)), "sizes"),
        (dict(image_size=(32, 32), strides=(4, 0, 16, 32, 64)), "strides"),
        (dict(image_size=(32, 32), aspect_ratios=()), "aspect_ratios"),
        (dict(image_size=(32, 32), aspect_ratios=(1.0, -2.0)), "aspect_ratios"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        anchor_ops.generate_anchors(**kwargs)


@pytest.mark.parametrize("stride_from_grid", [False, True])
@pytest.mark.parametrize("round_base", [False, True])
@pytest.mark.parametrize("size", [(64, 64), (96, 160), (800, 1216), (1088, 800), (224, 352)])
def test_dynamic_anchors_equal_the_static_ones(size, round_base, stride_from_grid):
    import tensorflow as tf

    from keras_maskrcnn.ops.anchors import generate_anchors, generate_anchors_tf

    args = dict(strides=(4, 8, 16, 32, 64), sizes=(32, 64, 128, 256, 512),
                aspect_ratios=(0.5, 1.0, 2.0), offset=0.0, round_base=round_base,
                stride_from_grid=stride_from_grid)
    expected = generate_anchors(size, **args)
    fn = tf.function(lambda h, w: generate_anchors_tf(h, w, **args),
                     input_signature=[tf.TensorSpec([], tf.int32)] * 2)
    anchors, counts = fn(tf.constant(size[0]), tf.constant(size[1]))
    np.testing.assert_array_equal(anchors.numpy(), expected)
    assert int(counts.numpy().sum()) == len(expected)


def test_single_level_dynamic_anchors_equal_the_static_ones():
    import tensorflow as tf

    from keras_maskrcnn.layers.anchors import SingleLevelAnchorGenerator

    layer = SingleLevelAnchorGenerator(stride=16, sizes=(32, 64, 128), round_base=True,
                                       stride_from_grid=True)
    for size in ((64, 96), (800, 1216), (224, 160)):
        anchors, counts = layer.dynamic_anchors(tf.constant(size[0]), tf.constant(size[1]))
        np.testing.assert_array_equal(anchors.numpy(), layer.anchors(size))
        assert tuple(counts.numpy()) == layer.level_sizes(size)
