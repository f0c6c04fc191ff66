"""End to end: the tiny preset trains on shapes with every loss falling, predicts, saves, reloads."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.builder import build_model, rebuilt
from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import ShapesDataset, make_dataset
from keras_maskrcnn.inference import predict_images
from keras_maskrcnn.model import LOSS_NAMES
from keras_maskrcnn.saving import load_model_dir, save_model_dir
from keras_maskrcnn.training import make_optimizer


def tiny_config(**overrides):
    values = dict(image_size=(64, 64), min_size=64, max_size=64,
                  anchor_sizes=(8, 16, 32, 64, 128), tiny_widths=(8, 16, 32, 64),
                  fpn_channels=32, box_head_dim=128, rpn_pre_nms_topk_train=300,
                  rpn_post_nms_topk_train=64, rpn_pre_nms_topk_test=200,
                  rpn_post_nms_topk_test=50, roi_batch_per_image=32,
                  mask_head_dim=16, detections_per_image=10, max_instances=6, learning_rate=5e-3,
                  warmup_steps=5)
    values.update(overrides)
    return get_config("shapes", **values)


def _dataset(config, source, batch_size=4):
    return make_dataset(source, config, training=True, batch_size=batch_size, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    keras.utils.set_random_seed(0)
    config = get_config("shapes", detections_per_image=10)
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config, batch_size=4))
    source = ShapesDataset(num_images=200, image_size=128, seed=0)
    history = model.fit(_dataset(config, source), epochs=10, steps_per_epoch=20, verbose=0)
    return model, history.history, tmp_path_factory.mktemp("model")


def test_every_loss_falls(trained):
    """Each loss ends below its peak, and all but the box-head losses below their first epoch.

    The box and class losses start artificially low: at initialization the only foreground RoIs
    are the appended ground-truth boxes (regression target 0, easy to classify); they rise while
    the RPN learns to propose foreground, then fall.
    """
    _, history, _ = trained
    assert set(LOSS_NAMES) | {"loss"} <= set(history)
    for name in (*LOSS_NAMES, "loss"):
        values = np.array(history[name])
        assert np.all(np.isfinite(values)), (name, values)
        assert values[-1] < 0.9 * values.max(), f"{name} did not fall: {history}"
    for name in ("rpn_objectness_loss", "rpn_box_loss", "mask_loss", "loss"):
        assert history[name][-1] < history[name][0], f"{name} did not fall: {history}"


def test_predict_and_model_directory_round_trip(trained):
    model, _, directory = trained
    val = ShapesDataset(num_images=3, image_size=128, seed=1)
    images = [val.load_image(i) for i in val.image_ids]
    images.append(np.zeros((48, 80, 3), np.uint8))  # another size: resized onto the canvas
    results = predict_images(model, images, batch_size=2)
    assert len(results) == 4
    for image, det in zip(images, results, strict=True):
        n = len(det["scores"])
        assert det["boxes"].shape == (n, 4) and det["masks"].shape == (n, *image.shape[:2])
        assert np.all(det["labels"] >= 1) and np.all(det["labels"] <= 3)
        assert np.all(det["boxes"][:, 2:] <= np.array(image.shape[:2]) + 1e-3)
    save_model_dir(model, directory)
    config = json.loads((directory / "config.json").read_text())
    assert config["name"] == "shapes" and config["image_size"] == [128, 128]
    reloaded = load_model_dir(directory)
    again = predict_images(reloaded, images[:1])
    np.testing.assert_allclose(again[0]["scores"], results[0]["scores"], rtol=1e-4, atol=1e-5)


def test_inference_outputs_have_static_shapes():
    config = tiny_config()
    model = build_model(config)
    outputs = model.inference_graph().output
    shapes = {k: tuple(v.shape) for k, v in outputs.items()}
    assert shapes["detection_boxes"] == (None, 10, 4)
    assert shapes["detection_masks"] == (None, 10, 28, 28)
    assert shapes["num_detections"] == (None,)


def test_images_without_objects_give_finite_losses_and_gradients():
    config = tiny_config()
    model = build_model(config)
    g, m = config.max_instances, config.gt_mask_size
    batch = {
        "images": tf.random.uniform((2, 64, 64, 3), 0, 255),
        "image_shape": tf.constant([[64.0, 64.0], [48.0, 64.0]]),
        "gt_boxes": tf.zeros((2, g, 4)),
        "gt_classes": tf.zeros((2, g), tf.int32),
        "gt_masks": tf.zeros((2, g, m, m)),
    }
    with tf.GradientTape() as tape:
        losses = model.compute_losses(batch, training=True)
    grads = tape.gradient(losses["loss"], model.trainable_variables)
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert losses["box_loss"] == 0 and losses["mask_loss"] == 0 and losses["rpn_box_loss"] == 0
    assert all(g is None or np.all(np.isfinite(g.numpy())) for g in grads)


def test_missing_training_key_is_a_clear_error():
    model = build_model(tiny_config())
    with pytest.raises(KeyError, match="gt_masks"):
        model.compute_losses({"images": None, "image_shape": None, "gt_boxes": None,
                              "gt_classes": None})


def test_compile_builds_the_optimizer_before_any_trace():
    """Slots created inside the first trace of `fit` would make TensorFlow trace the whole
    training step a second time."""
    config = tiny_config()
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config, batch_size=2))
    assert model.optimizer.built
    slots = {v.path.rsplit("/", 1)[-1] for v in model.optimizer.variables}
    assert any(name.endswith("_momentum") for name in slots), sorted(slots)[:5]


# CI budget (`-m slow`): RoIPool training runs by default in test_c4 (a step with RoIPool),
# crowd regions in test_layers' target tests, COCO id gaps in test_data_coco, training on the
# photos in test_bf16 and test_training.
@pytest.mark.slow
def test_trains_on_real_coco_images_with_crowd_and_roi_pool(coco10_dir):
    """Real photos of different sizes, 80 categories with id gaps, a crowd region; RoIPool."""
    from keras_maskrcnn.data import CocoDataset

    source = CocoDataset(coco10_dir / "annotations.json", coco10_dir / "images")
    config = tiny_config(num_classes=source.num_classes, class_names=tuple(source.class_names),
                         image_size=(128, 128), min_size=96, max_size=128, max_instances=24,
                         pooler="pool")
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config, batch_size=2))
    data = _dataset(config, source, batch_size=2)
    history = model.fit(data, epochs=1, steps_per_epoch=3, verbose=0).history
    for name in (*LOSS_NAMES, "loss"):
        assert np.isfinite(history[name][0]), history
    assert history["mask_loss"][0] > 0 and history["rpn_objectness_loss"][0] > 0


def test_per_image_canvas_pads_each_image_to_a_multiple_of_32():
    """canvas="per_image" (torchvision's single-image padding) equals a fixed-canvas model built
    on that image's own padded size with the same weights."""
    from keras_maskrcnn.builder import model_for_canvas

    keras.utils.set_random_seed(1)
    config = tiny_config(image_size=(128, 128), min_size=64, max_size=100, canvas="per_image",
                         score_threshold=0.0)
    model = build_model(config)
    image = np.random.default_rng(0).integers(0, 255, (50, 90, 3), dtype=np.uint8)
    det = predict_images(model, [image])[0]
    # 50 x 90 -> scale min(64/50, 100/90) = 1.111 -> 55 x 100 -> canvas 64 x 128.
    assert rebuilt(model, image_size=(64, 128), min_size=64, max_size=100) is \
        rebuilt(model, image_size=(64, 128), min_size=64, max_size=100)  # cached
    fixed = build_model(config.replace(image_size=(64, 128), canvas="fixed"))
    fixed.inference_graph().set_weights(model.inference_graph().get_weights())
    expected = predict_images(fixed, [image])[0]
    np.testing.assert_allclose(det["boxes"], expected["boxes"], atol=1e-4)
    np.testing.assert_allclose(det["scores"], expected["scores"], atol=1e-6)
    assert model_for_canvas(model, (128, 128)) is model


def test_rebuilt_is_cached_bounded_and_resynced(tmp_path):
    from keras_maskrcnn.builder import REBUILT_CACHE_SIZE, rebuilt_cache
    from keras_maskrcnn.saving import save_model_dir

    config = tiny_config()
    model = build_model(config)
    assert rebuilt(model) is model and model.training_model is None  # inference only
    first = rebuilt(model, roi_align_implementation="gather")
    assert rebuilt(model, roi_align_implementation="gather") is first
    for k in range(REBUILT_CACHE_SIZE):
        rebuilt(model, detections_per_image=5 + k)
    assert rebuilt(model, roi_align_implementation="gather") is not first  # evicted
    # New weights reach a cached rebuild.
    other = build_model(config)
    save_model_dir(other, tmp_path / "m")
    cached = rebuilt(model, detections_per_image=99)
    model.load_weights(str(tmp_path / "m" / "model.weights.h5"))
    again = rebuilt(model, detections_per_image=99)
    assert again is cached
    for a, b in zip(again.inference_graph().weights, other.inference_graph().weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    # The cache belongs to the builder, not the model instance, and goes with the model.
    assert len(rebuilt_cache(model)) == REBUILT_CACHE_SIZE
    assert not any(isinstance(v, keras.Model) for v in vars(model).values() if v is not model)


def test_dynamic_graph_equals_static_graphs_on_each_canvas():
    """One shape-polymorphic graph (one trace) gives what a model rebuilt on each canvas gives,
    torchvision's grid-derived anchor strides included (P6 on odd multiples of 32)."""
    from keras_maskrcnn.data import make_inference_inputs

    config = tiny_config(image_size=(160, 160), min_size=96, max_size=160, canvas="per_image",
                         anchor_stride_from_grid=True, round_anchors=True)
    model = build_model(config)
    rng = np.random.default_rng(1)
    fn = model.dynamic_inference_function()
    from keras_maskrcnn.transform import canvas_for

    canvases = set()
    for shape in ((60, 100), (100, 60), (80, 80), (50, 90), (97, 101)):
        image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
        canvas = canvas_for(*shape, config)
        canvases.add(canvas)
        batch = make_inference_inputs([image], config, canvas)
        dynamic = fn({k: batch[k] for k in ("images", "image_shape")})
        fixed = build_model(config.replace(image_size=canvas, canvas="fixed",
                                        min_size=min(96, min(canvas)),
                                        max_size=min(160, max(canvas))))
        fixed.inference_graph().set_weights(model.inference_graph().get_weights())
        static = fixed.inference_graph()({k: batch[k] for k in ("images", "image_shape")})
        for key in ("detection_boxes", "detection_scores", "detection_classes", "num_detections"):
            np.testing.assert_allclose(dynamic[key].numpy(), static[key].numpy(), atol=1e-4,
                                       err_msg=f"{key} on {canvas}")
    assert len(canvases) >= 4 and len(fn._list_all_concrete_functions()) == 1


def test_example_assembles_a_model_from_custom_parts():
    """examples/custom_parts.py: a custom backbone body and box head, trained with `fit`."""
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).parent.parent / "examples" / "custom_parts.py"))
    result = example["main"](["--steps", "3"])
    model = result["model"]
    assert type(model.roi_heads.box_head).__name__ == "MeanPoolBoxHead"
    assert model.backbone.body.name == "body"
    assert all(np.isfinite(v) for v in result["losses"].values())
    assert set(result["losses"]) >= {"loss", "rpn_objectness_loss", "mask_loss"}
    # The custom head is trained: its weights moved from their initial values.
    trained = np.asarray(model.roi_heads.box_head.hidden.kernel.value)
    assert np.abs(trained - result["initial_box_kernel"]).max() > 0
