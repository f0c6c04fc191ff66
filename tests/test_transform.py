"""keras_maskrcnn.transform: the resize rule, its TF twin, the box maps both ways, the canvas."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import transform
from keras_maskrcnn.config import get_config
from keras_maskrcnn.transform import (
    boxes_to_input,
    boxes_to_input_tf,
    boxes_to_original,
    boxes_to_original_tf,
    canvas_for,
    compute_resize_scale,
    compute_resized_shape,
    padded_canvas_size,
    resize_scale_tf,
    resized_shape_tf,
    round_up_to_multiple,
)

SIZES = [(h, w) for h in range(100, 1100, 37) for w in (h, h * 4 // 3, h * 3 // 2, 741, 451, 37)]
RULES = [(800, 1333), (320, 512), (256, 352), (128, 128)]


def torchvision_resized_shape(height, width, min_size, max_size):
    """torchvision 0.29 eager `_resize_image_and_masks`: Python-float scale,
    `F.interpolate(scale_factor=scale, recompute_scale_factor=True)` -> int(size * scale)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)


def random_boxes(rng, n, h, w):
    y = np.sort(rng.uniform(0, h, (n, 2)), axis=1)
    x = np.sort(rng.uniform(0, w, (n, 2)), axis=1)
    return np.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], axis=1).astype(np.float32)


# ------------------------------------------------------------------------ resize rule
def test_resize_rule_is_torchvision_over_many_sizes():
    mismatches = []
    for min_size, max_size in RULES:
        for h, w in SIZES:
            ours = compute_resized_shape(h, w, min_size, max_size)
            if ours != torchvision_resized_shape(h, w, min_size, max_size):
                mismatches.append((h, w, min_size, max_size))
            scale = compute_resize_scale(h, w, min_size, max_size)
            assert ours == (math.floor(h * scale), math.floor(w * scale))
    assert not mismatches, mismatches[:3]


def test_tf_twin_equals_the_python_rule():
    hws, rules, expected_scale, expected_shape = [], [], [], []
    for min_size, max_size in RULES:
        for h, w in SIZES:
            hws.append((h, w))
            rules.append((min_size, max_size))
            expected_scale.append(compute_resize_scale(h, w, min_size, max_size))
            expected_shape.append(compute_resized_shape(h, w, min_size, max_size))

    @tf.function(input_signature=[tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.int32),
                                  tf.TensorSpec([], tf.int32)])
    def rule(hw, min_size, max_size):
        return resize_scale_tf(hw, min_size, max_size), resized_shape_tf(hw, min_size, max_size)

    for hw, (min_size, max_size), scale, shape in zip(hws, rules, expected_scale,
                                                       expected_shape, strict=True):
        got_scale, got_shape = rule(tf.constant(hw), min_size, max_size)
        assert got_scale.dtype == tf.float64 and got_shape.dtype == tf.int32
        assert got_scale.numpy() == scale and tuple(got_shape.numpy()) == shape


def test_resize_rule_errors():
    with pytest.raises(ValueError, match="min_size"):
        compute_resize_scale(10, 10, 0, 10)
    with pytest.raises(TypeError, match="max_size"):
        compute_resize_scale(10, 10, 10, "10")
    with pytest.raises(ValueError, match="height and width"):
        compute_resize_scale(0, 10, 10, 10)


# ------------------------------------------------------------------------ box maps
@pytest.mark.parametrize("min_size, max_size", RULES)
def test_forward_then_inverse_is_the_identity(min_size, max_size):
    rng = np.random.default_rng(min_size)
    for h, w in SIZES[::5]:
        new_hw = compute_resized_shape(h, w, min_size, max_size)
        boxes = random_boxes(rng, 50, h, w)
        forward = boxes_to_input(boxes, (h, w), new_hw)
        assert forward.dtype == np.float32 and forward.shape == boxes.shape
        back = boxes_to_original(forward, new_hw, (h, w))
        np.testing.assert_allclose(back, boxes, rtol=1e-6, atol=1e-4)
        # NumPy and TF are the same float32 arithmetic.
        forward_tf = boxes_to_input_tf(tf.constant(boxes), tf.constant((h, w)),
                                       tf.constant(new_hw, tf.float32))
        np.testing.assert_array_equal(forward_tf.numpy(), forward)
        back_tf = boxes_to_original_tf(forward_tf, tf.constant(new_hw, tf.float32),
                                       tf.constant((h, w)))
        np.testing.assert_array_equal(back_tf.numpy(), back)


def test_box_maps_are_per_axis_and_clip():
    h, w, new_h, new_w = 480, 640, 800, 1066  # scale 5/3; the width ratio is 1066/640
    boxes = np.array([[0, 0, 480, 640], [240, 320, 480, 640], [-5, -5, 500, 700]], np.float32)
    forward = boxes_to_input(boxes, (h, w), (new_h, new_w))
    np.testing.assert_allclose(forward[0], [0, 0, 800, 1066], rtol=1e-6)
    np.testing.assert_allclose(forward[1], [400, 533, 800, 1066], rtol=1e-6)
    np.testing.assert_array_equal(forward[2], [0, 0, 800, 1066])  # clipped to (h', w')
    assert forward[0, 3] != 640 * compute_resize_scale(h, w, 800, 1333)  # not box * scale
    back = boxes_to_original(np.array([[-1, -1, 900, 1100]], np.float32), (new_h, new_w), (h, w))
    np.testing.assert_array_equal(back, [[0, 0, 480, 640]])  # clipped to (h, w)


def test_box_maps_broadcast_over_a_batch():
    rng = np.random.default_rng(0)
    original = np.array([[480, 640], [427, 640]], np.int32)
    resized = np.array([compute_resized_shape(*hw, 256, 352) for hw in original], np.float32)
    boxes = np.stack([random_boxes(rng, 7, *hw) for hw in original])  # [B, D, 4]
    batched = boxes_to_original_tf(tf.constant(boxes), tf.constant(resized)[:, None],
                                   tf.constant(original)[:, None]).numpy()
    for b in range(2):
        np.testing.assert_array_equal(batched[b], boxes_to_original(boxes[b], resized[b],
                                                                    original[b]))


def test_postprocess_uses_the_inverse_map():
    from keras_maskrcnn.inference import postprocess

    rng = np.random.default_rng(3)
    h, w = 427, 640
    new_h, new_w = compute_resized_shape(h, w, 256, 352)
    boxes = random_boxes(rng, 4, new_h, new_w)
    boxes[0] = [-3, -3, new_h + 5, new_w + 5]  # clipped to the original image
    outputs = {"num_detections": np.array([4], np.int32),
               "detection_boxes": np.concatenate([boxes, np.zeros((2, 4), np.float32)])[None],
               "detection_scores": np.full((1, 6), 0.9, np.float32),
               "detection_classes": np.ones((1, 6), np.int32),
               "detection_masks": np.ones((1, 6, 28, 28), np.float32)}
    batch = {"original_shape": np.array([[h, w]], np.int32),
             "image_shape": np.array([[new_h, new_w]], np.float32)}
    result = postprocess(outputs, batch, 0)
    np.testing.assert_array_equal(result["boxes"],
                                  boxes_to_original(boxes, (new_h, new_w), (h, w)))
    np.testing.assert_array_equal(result["boxes"][0], [0, 0, h, w])
    assert result["masks"].shape == (4, h, w)


# ------------------------------------------------------------------------ canvas
def test_canvas_rounding():
    assert [round_up_to_multiple(v) for v in (1, 31, 32, 33, 800, 1066)] == \
        [32, 32, 32, 64, 800, 1088]
    assert padded_canvas_size(480, 640, 800, 1333) == (800, 1088)
    fixed = get_config("coco_r50_fpn")
    assert canvas_for(480, 640, fixed) == fixed.image_size
    per_image = get_config("torchvision_r50_fpn")
    assert per_image.canvas == "per_image"
    assert canvas_for(480, 640, per_image) == (800, 1088)
    assert canvas_for(2000, 500, per_image) == (1344, 352)  # 1333 x 333


def test_module_imports_only_numpy_and_the_backend_module():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(transform))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    # TensorFlow only through backend.lazy_tensorflow(): imported by the tf.data functions
    assert imported <= {"__future__", "math", "typing", "numpy", "keras_maskrcnn",
                        "keras_maskrcnn.config"}, imported


@pytest.mark.parametrize("shape", [(37, 53), (480, 640), (500, 333), (20, 700)])
def test_numpy_letterbox_matches_tensorflow(shape):
    """The NumPy letterbox (JAX / PyTorch backends) gives TensorFlow's resize, to float noise."""
    from keras_maskrcnn.transform import _letterbox_np, letterbox

    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = _letterbox_np(image, (512, 768), 320, 512)
    tf_out = letterbox(image, (512, 768), 320, 512)
    for key in ("image_shape", "scale", "original_shape"):
        np.testing.assert_array_equal(ours[key], tf_out[key])
    np.testing.assert_allclose(ours["images"], tf_out["images"], atol=2e-3)
