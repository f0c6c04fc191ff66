"""ONNX export: `keras-maskrcnn export --format onnx` (tf2onnx), run by onnxruntime's CPU
provider, against the Keras model on the ten real COCO photos; every operator of the graph has
an onnxruntime CPU kernel.

The model is a narrow `coco_r50_fpn` (the adaptive RoIAlign sampling ratio: data-dependent
shapes inside the graph) with random weights whose class logits are scaled up so that scores
separate (tied scores would make the detection order a coin toss, in either runtime).
Detections are matched by class and box IoU >= 0.9. Measured here (onnxruntime 1.32, TF 2.21):
200 / 200 detections matched, boxes within 3e-5 canvas px, scores 2e-7, mask probabilities
1e-7, pasted masks identical (IoU 1.0); the tolerances sit 30-80x above (float32 rounding of a
different kernel library). A full torchvision_r50_fpn on a 512 canvas, converted from
calibrated torchvision weights, differs more (deeper: boxes 0.009 px, scores 4e-4, mask IoU
mean 0.9993, min 0.875 on one small mask; 1000 / 1000 matched).

Skipped only when tf2onnx / onnxruntime are missing and the CI environment variable is unset.
"""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest
from helpers import compare_with_keras
from PIL import Image

from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import get_config
from keras_maskrcnn.saving import save_model_dir

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("tf2onnx", "onnx", "onnxruntime"))
pytestmark = pytest.mark.skipif(not HAVE_ONNX and not os.environ.get("CI"),
                                reason="tf2onnx / onnx / onnxruntime missing: pip install -e .[onnx]")

INPUT_SIZE = 320
MATCH_IOU = 0.9
MIN_MATCHED = 0.98  # fraction of the Keras detections found in the ONNX output
BOX_ATOL = 1e-3  # canvas pixels
SCORE_ATOL = 1e-5
MASK_PROB_ATOL = 1e-5
MIN_MASK_IOU, MIN_MEAN_MASK_IOU = 0.9, 0.99


def _tiny_config():
    return get_config(
        "coco_r50_fpn", backbone="resnet_tiny", backbone_norm="bn", tiny_widths=(8, 16, 32, 64),
        fpn_channels=16, image_size=(128, 128), min_size=96, max_size=128, num_classes=3,
        class_names=("background", "a", "b", "c"), box_head_dim=32, mask_head_dim=8,
        mask_head_convs=1, rpn_pre_nms_topk_test=300, rpn_post_nms_topk_test=60,
        detections_per_image=20)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A model directory exported by the CLI: (Keras model on the ONNX canvas, .onnx path)."""
    from keras_maskrcnn.cli import main
    from keras_maskrcnn.export.onnx import onnx_ready_model

    keras.utils.set_random_seed(3)
    model = build_model(_tiny_config())
    assert model.config.pooler_sampling_ratio == 0
    logits = model.roi_heads.box_head.class_logits
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * 400.0, bias])  # std 0.01 gives equal scores for every class
    root = tmp_path_factory.mktemp("onnx")
    save_model_dir(model, root / "model")
    path = root / "out" / "tiny.onnx"
    assert main(["export", "--model", str(root / "model"), "--format", "onnx", "--output",
                 str(path), "--input-size", str(INPUT_SIZE)]) == 0
    return onnx_ready_model(root / "model", INPUT_SIZE), path


def test_ops_have_onnxruntime_cpu_kernels(exported):
    import onnx

    from keras_maskrcnn.export.onnx import missing_cpu_kernels, onnx_op_types

    _, path = exported
    ops = onnx_op_types(path)
    assert {"Conv", "NonMaxSuppression", "TopK", "ConvTranspose"} <= set(ops), ops
    assert not [op for op in ops if ":" in op], ops  # standard domain only: no TF fallback op
    assert missing_cpu_kernels(path) == []
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["images", "image_shape"]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == \
        [1, INPUT_SIZE, INPUT_SIZE, 3]


def test_missing_kernel_is_reported():
    from onnx import TensorProto, helper

    from keras_maskrcnn.export.onnx import missing_cpu_kernels

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"]),
                               helper.make_node("NoSuchOp", ["y"], ["z"], domain="org.example")],
                              "g", [x], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("org.example", 1)])
    assert missing_cpu_kernels(model) == ["NoSuchOp (domain 'org.example', no CPU kernel)"]


def test_onnxruntime_matches_keras_on_coco_photos(exported, coco10_dir):
    from keras_maskrcnn.export.onnx import cpu_session, letterbox_inputs, run_session

    model, path = exported
    session = cpu_session(path)
    assert session.get_providers() == ["CPUExecutionProvider"]
    stats = compare_with_keras(model, sorted((coco10_dir / "images").glob("*.jpg")),
                               lambda image: letterbox_inputs(image, INPUT_SIZE),
                               lambda inputs: run_session(session, inputs), MATCH_IOU)
    total, matched, mask_ious = stats["total"], stats["matched"], stats["mask_ious"]
    box_diff, score_diff, prob_diff = stats["box_diff"], stats["score_diff"], stats["prob_diff"]
    print(f"ONNX vs Keras: {matched}/{total} matched, max box diff {box_diff:.2e} px, score "
          f"{score_diff:.2e}, mask prob {prob_diff:.2e}, mask IoU min {min(mask_ious):.4f} "
          f"mean {np.mean(mask_ious):.5f}")
    assert total >= 50  # the scaled logits give detections on every photo
    assert matched >= MIN_MATCHED * total
    assert box_diff <= BOX_ATOL and score_diff <= SCORE_ATOL and prob_diff <= MASK_PROB_ATOL
    assert min(mask_ious) >= MIN_MASK_IOU and np.mean(mask_ious) >= MIN_MEAN_MASK_IOU


def test_metadata_sidecar_and_properties(exported):
    import onnx

    from keras_maskrcnn.export.onnx import ONNX_INPUTS, metadata_path
    from keras_maskrcnn.parts.roi_heads import OUTPUT_NAMES

    _, path = exported
    meta = json.loads(metadata_path(path).read_text())
    assert meta["input_size"] == INPUT_SIZE and meta["class_names"] == ["background", "a", "b", "c"]
    assert meta["inputs"] == list(ONNX_INPUTS) and meta["outputs"] == list(OUTPUT_NAMES)
    props = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert props == meta
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]


def test_predict_onnx_gives_original_pixels(exported, coco10_dir):
    from keras_maskrcnn.export.onnx import cpu_session, predict_onnx

    model, path = exported
    file = sorted((coco10_dir / "images").glob("*.jpg"))[0]
    image = np.asarray(Image.open(file).convert("RGB"))
    result = predict_onnx(cpu_session(path, threads=1), image, INPUT_SIZE)
    assert result["masks"].shape[1:] == image.shape[:2]
    assert len(result["boxes"]) > 0
    assert result["boxes"][:, 2].max() <= image.shape[0] and result["boxes"][:, 3].max() <= image.shape[1]


@pytest.mark.parametrize("extra", [["--quantize", "float16"], ["--full-image-masks"],
                                   ["--input-size", "100"]])
def test_cli_rejects_other_formats_options(tmp_path, extra):
    from keras_maskrcnn.cli import main

    with pytest.raises((SystemExit, ValueError)):
        main(["--log-level", "DEBUG", "export", "--model", str(tmp_path), "--format", "onnx",
              "--output", str(tmp_path / "x.onnx"), *extra])
    assert not (tmp_path / "x.onnx").exists()


def test_bad_input_size():
    from keras_maskrcnn.export.onnx import square_input_size

    assert square_input_size(64) == 64 and square_input_size((96, 96)) == 96
    with pytest.raises(ValueError, match="square"):
        square_input_size([64, 96])
    with pytest.raises(ValueError, match="multiple of 32"):
        square_input_size(100)
    with pytest.raises(ValueError, match=r"S or \(height, width\)"):
        square_input_size([64])
