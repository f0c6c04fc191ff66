"""TFLite export: builtin ops only (both RoIAlign sampling modes), LiteRT output matches the
Keras model on the same letterboxed input (square, non-square and bucketed canvases: one
signature per bucket, the weights stored once), quantized variants run, and the LiteRT-only
example script reproduces `predict_images` without importing TensorFlow (one canvas, and
buckets with the per-image canvas)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import noise_rect_image
from PIL import Image

from keras_maskrcnn.builder import build_model, rebuilt
from keras_maskrcnn.config import get_config
from keras_maskrcnn.export import QUANTIZE_OPTIONS, export_tflite, letterbox_image, tflite_op_names
from keras_maskrcnn.export.buckets import canvas_inference_model
from keras_maskrcnn.export.cli import QUANTIZE_CHOICES
from keras_maskrcnn.export.tflite import (
    bucket_inputs,
    convert_tflite,
    metadata_path,
    tflite_ready_model,
)
from keras_maskrcnn.inference import predict_images, run_model
from keras_maskrcnn.transform import letterbox

Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tflite_predict.py"
# float32 TFLite vs Keras on the same input (measured: about 1e-5 px and 1e-7): boxes to a
# relative 1e-3 (+ 1e-3 px), scores and mask probabilities to 1e-4.
BOX_RTOL, BOX_ATOL = 1e-3, 1e-3
PROB_ATOL = 1e-4


_image = noise_rect_image


def _keras_outputs(model, inputs):
    return run_model(model, inputs)  # the Keras inference graph in a (cached) tf.function


def _run_tflite(path, inputs, signature="serving_default"):
    runner = Interpreter(model_path=str(path)).get_signature_runner(signature)
    return runner(images=inputs["images"], image_shape=inputs["image_shape"])


def _load_example():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tflite_predict_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def _run_example(tmp_path, path, image):
    """Runs examples/tflite_predict.py in a fresh process; its detections (.npz)."""
    Image.fromarray(image).save(tmp_path / "image.png")
    code = ("import importlib.util, json, sys\n"
            "spec = importlib.util.spec_from_file_location('example', sys.argv[1])\n"
            "example = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(example)\n"
            "rc = example.main(sys.argv[2:])\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'keras_maskrcnn')]\n"
            "print(json.dumps({'rc': rc, 'heavy': heavy}))\n")
    result = subprocess.run(
        [sys.executable, "-c", code, str(EXAMPLE), str(path), str(tmp_path / "image.png"),
         "--output", str(tmp_path / "drawn.png"), "--score-threshold", "0",
         "--save-npz", str(tmp_path / "det.npz")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads(result.stdout.strip().splitlines()[-1])
    assert status == {"rc": 0, "heavy": []}
    drawn = np.asarray(Image.open(tmp_path / "drawn.png"))
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)
    return np.load(tmp_path / "det.npz")


def _assert_same_detections(det, ref):
    np.testing.assert_array_equal(det["labels"], ref["labels"])
    np.testing.assert_allclose(det["boxes"], ref["boxes"], atol=1e-2)
    np.testing.assert_allclose(det["scores"], ref["scores"], atol=1e-3)
    assert det["masks"].shape == ref["masks"].shape
    assert np.mean(det["masks"] != ref["masks"]) < 1e-3


def _assert_builtin_only(path):
    ops = tflite_op_names(path)
    assert "CONV_2D" in ops and "NON_MAX_SUPPRESSION_V4" in ops  # every subgraph is listed
    assert not [op for op in ops if op.startswith("CUSTOM") or "FLEX" in op.upper()], ops
    details = Interpreter(model_path=str(path))._get_ops_details()
    assert not [d["op_name"] for d in details if d["op_name"].lower().startswith("flex")]
    return ops


def _assert_match(out, ref):
    n = int(ref["num_detections"][0])
    assert n > 0
    np.testing.assert_array_equal(out["num_detections"], ref["num_detections"])
    np.testing.assert_array_equal(out["detection_classes"], ref["detection_classes"])
    np.testing.assert_allclose(out["detection_boxes"], ref["detection_boxes"], rtol=BOX_RTOL,
                               atol=BOX_ATOL)
    np.testing.assert_allclose(out["detection_scores"], ref["detection_scores"], atol=PROB_ATOL)
    np.testing.assert_allclose(out["detection_masks"], ref["detection_masks"], atol=PROB_ATOL)


@pytest.fixture(scope="module")
def shapes_export(tmp_path_factory):
    """The `shapes` preset (RoIAlign sampling ratio 2), random weights, exported at 128."""
    keras.utils.set_random_seed(0)
    config = get_config("shapes", detections_per_image=8, rpn_pre_nms_topk_test=200,
                        rpn_post_nms_topk_test=50)
    model = build_model(config, roi_align_implementation="gather")
    path = export_tflite(model, tmp_path_factory.mktemp("tflite") / "shapes.tflite",
                         input_size=128)
    return model, path


def test_shapes_builtin_ops_only_and_matches_keras(shapes_export):
    model, path = shapes_export
    _assert_builtin_only(path)
    image = _image(np.random.default_rng(0), 90, 120)
    inputs = letterbox_image(image, 128)
    assert inputs["images"].shape == (1, 128, 128, 3)
    np.testing.assert_array_equal(inputs["image_shape"], [[96, 128]])
    out = _run_tflite(path, inputs)
    assert out["detection_boxes"].shape == (1, 8, 4)
    assert out["detection_masks"].shape == (1, 8, 28, 28)
    _assert_match(out, _keras_outputs(model, inputs))
    meta = json.loads(metadata_path(path).read_text())
    assert meta["input_size"] == 128 and meta["class_names"][1] == "square"


def test_adaptive_sampling_ratio_converts_and_matches(tmp_path):
    """coco_r50_fpn's RoIAlign uses the adaptive sampling ratio (0): data-dependent shapes that
    still convert to builtins (a narrow coco_r50_fpn). Built on a 128 canvas with the default
    RoIAlign ("auto"), the export rebuilds it on the 96 x 96 letterbox canvas with the portable
    RoIAlign and the same weights."""
    keras.utils.set_random_seed(1)
    config = get_config(
        "coco_r50_fpn", backbone="resnet_tiny", backbone_norm="bn", tiny_widths=(8, 16, 32, 64),
        fpn_channels=16, image_size=(128, 128), min_size=96, max_size=128, num_classes=3,
        box_head_dim=32, mask_head_dim=8, mask_head_convs=1, rpn_pre_nms_topk_test=100,
        rpn_post_nms_topk_test=20, detections_per_image=5)
    assert config.pooler_sampling_ratio == 0
    model = build_model(config)
    with pytest.raises(ValueError, match="roi_align_implementation"):
        convert_tflite(model)
    export_model = tflite_ready_model(model, 96)
    assert export_model.roi_align_implementation == "gather"
    assert export_model.config == config.replace(image_size=(96, 96), min_size=96, max_size=96)
    for a, b in zip(export_model.inference_graph().get_weights(),
                    model.inference_graph().get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    path = export_tflite(export_model, tmp_path / "adaptive.tflite", input_size=96)
    ops = _assert_builtin_only(path)
    assert "SEGMENT_SUM" in ops  # the ragged adaptive-ratio path is in the graph
    inputs = letterbox_image(_image(np.random.default_rng(1), 100, 60), 96)
    _assert_match(_run_tflite(path, inputs), _keras_outputs(export_model, inputs))


@pytest.mark.parametrize("quantize", ["float16", "dynamic-int8"])
def test_quantized_variants_run(shapes_export, tmp_path, quantize):
    """Quantized models are builtin-only, smaller, and give outputs of the right shapes whose
    valid detections stay in the canvas with probabilities in [0, 1]."""
    model, float_path = shapes_export
    path = export_tflite(model, tmp_path / f"{quantize}.tflite", input_size=128,
                         quantize=quantize)
    _assert_builtin_only(path)
    assert path.stat().st_size < 0.6 * float_path.stat().st_size
    inputs = letterbox_image(_image(np.random.default_rng(0), 90, 120), 128)
    out = _run_tflite(path, inputs)
    shapes = {"detection_boxes": (1, 8, 4), "detection_scores": (1, 8),
              "detection_classes": (1, 8), "num_detections": (1,),
              "detection_masks": (1, 8, 28, 28)}
    for key, shape in shapes.items():
        assert out[key].shape == shape, key
        assert out[key].dtype == (np.int32 if key in ("detection_classes", "num_detections")
                                  else np.float32), key
    n = int(out["num_detections"][0])
    assert 0 < n <= 8
    assert np.all((out["detection_boxes"][0, :n] >= 0) & (out["detection_boxes"][0, :n] <= 128))
    assert np.all((out["detection_masks"] >= 0) & (out["detection_masks"] <= 1))
    assert np.all((out["detection_classes"][0, :n] >= 1) & (out["detection_classes"][0, :n] <= 3))


def test_example_script_runs_with_litert_only(shapes_export, tmp_path):
    """examples/tflite_predict.py (numpy letterbox, LiteRT, numpy mask pasting, Pillow drawing)
    imports no TensorFlow and reproduces predict_images on the original image."""
    model, path = shapes_export
    image = _image(np.random.default_rng(2), 100, 72)
    det = _run_example(tmp_path, path, image)
    _assert_same_detections(det, predict_images(model, [image])[0])


@pytest.mark.parametrize("height, width", [(90, 120), (100, 72), (300, 41), (7, 5), (128, 128)])
def test_example_letterbox_is_the_resize_rule(height, width):
    """The example's numpy letterbox equals the package's (TensorFlow) resize rule."""
    example = _load_example()
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3)).astype(np.uint8)
    for size in (64, (64, 96), (96, 64)):  # square, landscape and portrait canvases
        canvas, image_shape = example.letterbox(image, size)
        ref = letterbox_image(image, size)
        np.testing.assert_array_equal(image_shape, ref["image_shape"])
        np.testing.assert_allclose(canvas, ref["images"], atol=1e-3)
    # the model's rule on a bucket (resized 96 x 128 for 90 x 120 at 96 / 128)
    canvas, image_shape = example.letterbox(image, (128, 128), rule=(96, 128))
    ref = letterbox(image, (128, 128), 96, 128)
    np.testing.assert_array_equal(image_shape[0], ref["image_shape"])
    np.testing.assert_allclose(canvas[0], ref["images"], atol=1e-3)


def test_non_square_canvas_fit_rule(shapes_export, tmp_path):
    """`input_size=(96, 128)`: one landscape canvas; a landscape image fills its width, a
    portrait one its height (the "fit" rule), and LiteRT matches the Keras model on both."""
    model, _ = shapes_export
    path = export_tflite(model, tmp_path / "wide.tflite", input_size=(96, 128))
    _assert_builtin_only(path)
    meta = json.loads(metadata_path(path).read_text())
    assert meta["input_size"] == [96, 128] and meta["resize"] == "fit"
    assert meta["signatures"] == {"serving_default": [96, 128]}
    export_model = tflite_ready_model(model, (96, 128))
    for (height, width), resized in (((90, 120), [96, 128]), ((110, 70), [96, 61])):
        inputs = letterbox_image(_image(np.random.default_rng(height), height, width), (96, 128))
        assert inputs["images"].shape == (1, 96, 128, 3)
        np.testing.assert_array_equal(inputs["image_shape"], [resized])
        _assert_match(_run_tflite(path, inputs), _keras_outputs(export_model, inputs))


@pytest.fixture(scope="module")
def bucket_export(shapes_export, tmp_path_factory):
    model, _ = shapes_export
    path = export_tflite(model, tmp_path_factory.mktemp("tflite_buckets") / "buckets.tflite",
                         buckets="auto")
    return model, path


def test_buckets_one_signature_each_weights_once(bucket_export, shapes_export):
    """`buckets="auto"`: a signature per canvas, builtin ops only; the file is barely larger
    than the one-canvas model (the weights are stored once)."""
    model, path = bucket_export
    _assert_builtin_only(path)
    signatures = Interpreter(model_path=str(path)).get_signature_list()
    assert sorted(signatures) == ["canvas_128x128", "canvas_128x96", "canvas_96x128"]
    meta = json.loads(metadata_path(path).read_text())
    assert meta["resize"] == "min_max" and (meta["min_size"], meta["max_size"]) == (128, 128)
    assert meta["signatures"] == {"canvas_96x128": [96, 128], "canvas_128x96": [128, 96],
                                  "canvas_128x128": [128, 128]}
    assert path.stat().st_size < 1.3 * shapes_export[1].stat().st_size


@pytest.mark.parametrize("height, width, signature", [
    (90, 120, "canvas_96x128"), (110, 70, "canvas_128x96"), (100, 100, "canvas_128x128")])
def test_each_bucket_matches_keras(bucket_export, height, width, signature):
    """Each bucket's signature on the model's resize rule equals the Keras graph on that canvas
    (the per-image canvas of `predict_images`)."""
    model, path = bucket_export
    meta = json.loads(metadata_path(path).read_text())
    image = _image(np.random.default_rng(height), height, width)
    key, inputs = bucket_inputs(image, meta)
    assert key == signature
    canvas = tuple(meta["signatures"][key])
    ref = run_model_on(canvas_inference_model(model, canvas), inputs)
    _assert_match(_run_tflite(path, inputs, key), ref)


def run_model_on(graph, inputs):
    out = graph({"images": inputs["images"], "image_shape": inputs["image_shape"]},
                training=False)
    return {k: np.asarray(v) for k, v in out.items()}


def test_example_script_with_buckets_is_predict_images_per_image(bucket_export, tmp_path):
    """The example picks the bucket of a portrait image and reproduces `predict_images` with
    the per-image canvas."""
    model, path = bucket_export
    image = _image(np.random.default_rng(3), 110, 70)
    det = _run_example(tmp_path, path, image)
    _assert_same_detections(det, predict_images(rebuilt(model, canvas="per_image"), [image])[0])


def test_bad_arguments(tmp_path):
    assert QUANTIZE_CHOICES == QUANTIZE_OPTIONS
    with pytest.raises(ValueError, match="quantize"):
        export_tflite(tmp_path, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="multiple of 32"):
        export_tflite(tmp_path, tmp_path / "m.tflite", input_size=100)
    with pytest.raises(TypeError, match="input_size"):
        export_tflite(tmp_path, tmp_path / "m.tflite", input_size=128.0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        export_tflite(tmp_path, tmp_path / "m.tflite", input_size=128)
    with pytest.raises(ValueError, match="multiple of 32"):
        export_tflite(tmp_path, tmp_path / "m.tflite", input_size=(96, 100))
    with pytest.raises(ValueError, match="height, width"):
        export_tflite(tmp_path, tmp_path / "m.tflite", input_size=(96, 128, 3))
