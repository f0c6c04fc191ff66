"""The model on the backend of this process: the package imports without TensorFlow off the
TensorFlow backend, a model builds, predicts and trains with `fit` (tiny `shapes` config)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

# The shapes preset made small (64 x 64 canvas, narrow backbone, heads and samplers), as in
# tests/test_model.py: these tests check the paths on each backend, not the preset's sizes.
TINY = dict(image_size=(64, 64), min_size=64, max_size=64, anchor_sizes=(8, 16, 32, 64, 128),
            tiny_widths=(8, 16, 32, 64), fpn_channels=32, box_head_dim=128,
            rpn_pre_nms_topk_train=300, rpn_post_nms_topk_train=64, rpn_pre_nms_topk_test=200,
            rpn_post_nms_topk_test=50, roi_batch_per_image=32, mask_head_dim=16,
            max_instances=6)


def _batch(config, size: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic training batch: one box per image with its mini mask, sampler seeds."""
    rng = np.random.default_rng(seed)
    h, w = config.image_size
    g, m = config.max_instances, config.gt_mask_size
    images = rng.uniform(0, 255, (size, h, w, 3)).astype(np.float32)
    boxes = np.zeros((size, g, 4), np.float32)
    boxes[:, 0] = [h * 0.2, w * 0.25, h * 0.7, w * 0.8]
    classes = np.zeros((size, g), np.int32)
    classes[:, 0] = 1
    masks = np.zeros((size, g, m, m), np.float32)
    masks[:, 0, m // 4:3 * m // 4, m // 4:3 * m // 4] = 1.0
    images[:, int(h * 0.2):int(h * 0.7), int(w * 0.25):int(w * 0.8)] = 230.0
    return {"images": images, "image_shape": np.tile(np.float32([h, w]), (size, 1)),
            "gt_boxes": boxes, "gt_classes": classes, "gt_masks": masks,
            "sample_seed": rng.integers(0, 2**31 - 1, (size, 2)).astype(np.int32)}


def test_package_imports_without_tensorflow(backend):
    import keras_maskrcnn  # noqa: F401
    from keras_maskrcnn import builder, inference, saving  # noqa: F401

    if backend != "tensorflow":
        assert "tensorflow" not in sys.modules


def test_build_and_predict(backend):
    from keras_maskrcnn import build_model, get_config
    from keras_maskrcnn.inference import predict_images

    model = build_model(get_config("shapes", **{**TINY, "detections_per_image": 10}))
    image = np.random.default_rng(1).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    (det,) = predict_images(model, [image])
    n = len(det["boxes"])
    assert det["boxes"].shape == (n, 4) and det["masks"].shape == (n, 45, 70)
    assert n <= 10 and np.all(det["scores"] >= model.config.score_threshold)
    assert np.all((det["boxes"] >= 0) & (det["boxes"] <= [45, 70, 45, 70]))


@pytest.fixture(scope="module")
def compiled():
    """A tiny model compiled once for the two `fit` tests below (one traced or jitted training
    step between them: the step is each backend's most expensive compile)."""
    import keras

    from keras_maskrcnn import build_model, get_config
    from keras_maskrcnn.solver import make_optimizer

    keras.utils.set_random_seed(0)
    config = get_config("shapes", **TINY, weight_decay=0.0)
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config.replace(learning_rate=0.01), 2))
    return model


def test_guarded_step_skips_a_non_finite_step(compiled):
    """A NaN weight in the class predictor makes the class loss NaN: the step reports it
    (`finite_loss` 0, `finite_weights` 0) and leaves every weight as it was (no weight decay
    here, so a zero gradient moves nothing). The weight is restored afterwards."""
    from keras import ops

    model = compiled
    (kernel,) = [v for v in model.trainable_variables if "class_logits" in v.path
                 and "kernel" in v.path]
    clean = ops.convert_to_numpy(kernel).copy()
    poisoned = clean.copy()
    poisoned[0, 0] = np.nan
    kernel.assign(poisoned)
    before = [ops.convert_to_numpy(v) for v in model.trainable_variables]
    history = model.fit(_batch(model.config), batch_size=2, epochs=1, verbose=0, shuffle=False)
    logs = {k: v[-1] for k, v in history.history.items()}
    after = [ops.convert_to_numpy(v) for v in model.trainable_variables]
    kernel.assign(clean)
    assert float(logs["finite_loss"]) == 0.0 and not np.isfinite(float(logs["class_loss"]))
    assert float(logs["finite_weights"]) == 0.0
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_steps_lower_the_loss(compiled):
    model = compiled
    batch = _batch(model.config)
    history = model.fit(batch, batch_size=2, epochs=4, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
