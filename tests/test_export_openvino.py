"""OpenVINO export: `keras-maskrcnn export --format openvino` (openvino.convert_model of the
fixed-canvas graph), run by OpenVINO's CPU plugin in float32, against the Keras model on the
ten real COCO photos.

The model is the narrow `coco_r50_fpn` of tests/test_export_onnx.py (adaptive RoIAlign
sampling ratio: data-dependent shapes inside the graph), random weights with the class logits
scaled up so that scores separate, on a non-square 288 x 352 canvas. Detections are matched by
class and box IoU >= 0.9. Measured here (OpenVINO 2026.4, TF 2.21): 200 / 200 matched, boxes
within 6e-5 canvas px, scores 4e-7, mask probabilities 1.2e-7, pasted mask IoU min 0.9996; the
tolerances sit 16-80x above (float32 rounding of another kernel library). Without the exporter's
two graph rewrites (`unbatch_unit_gathers`, `guard_integer_reductions`) OpenVINO's CPU plugin
crashes or fails on this model.

Skipped only when openvino is not importable (pip install -e ".[openvino]").
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import compare_with_keras
from PIL import Image

from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import get_config
from keras_maskrcnn.saving import save_model_dir

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(
    not HAVE_OPENVINO, reason='openvino is not installed: pip install -e ".[openvino]"')

CANVAS = (288, 352)
MATCH_IOU = 0.9
MIN_MATCHED = 0.98  # fraction of the Keras detections found in the OpenVINO output
BOX_ATOL = 1e-3  # canvas pixels
SCORE_ATOL = 1e-5
MASK_PROB_ATOL = 1e-5
MIN_MASK_IOU, MIN_MEAN_MASK_IOU = 0.9, 0.99
ROOT = Path(__file__).resolve().parents[1]


def _tiny_config():
    return get_config(
        "coco_r50_fpn", backbone="resnet_tiny", backbone_norm="bn", tiny_widths=(8, 16, 32, 64),
        fpn_channels=16, image_size=(128, 128), min_size=96, max_size=128, num_classes=3,
        class_names=("background", "a", "b", "c"), box_head_dim=32, mask_head_dim=8,
        mask_head_convs=1, rpn_pre_nms_topk_test=300, rpn_post_nms_topk_test=60,
        detections_per_image=20)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = build_model(_tiny_config())
    assert model.config.pooler_sampling_ratio == 0
    logits = model.roi_heads.box_head.class_logits
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * 400.0, bias])  # std 0.01 gives equal scores for every class
    path = tmp_path_factory.mktemp("openvino") / "model"
    save_model_dir(model, path)
    return path


@pytest.fixture(scope="module")
def exported(model_dir):
    """Exported by the CLI into a folder: (Keras model on the canvas, model.xml path)."""
    from keras_maskrcnn.cli import main
    from keras_maskrcnn.export.openvino import openvino_ready_model

    if not HAVE_OPENVINO:
        pytest.skip('openvino is not installed: pip install -e ".[openvino]"')
    out = model_dir.parent / "ir"
    assert main(["export", "--model", str(model_dir), "--format", "openvino", "--output",
                 str(out), "--input-size", *map(str, CANVAS)]) == 0
    return openvino_ready_model(model_dir, CANVAS), out / "model.xml"


@needs_openvino
def test_openvino_matches_keras_on_coco_photos(exported, coco10_dir):
    from keras_maskrcnn.export.openvino import compile_openvino, letterbox_inputs, run_compiled

    model, path = exported
    compiled = compile_openvino(path)  # float32
    assert [i.get_any_name() for i in compiled.inputs] == ["images", "image_shape"]
    assert list(compiled.input("images").shape) == [1, *CANVAS, 3]
    stats = compare_with_keras(model, sorted((coco10_dir / "images").glob("*.jpg")),
                               lambda image: letterbox_inputs(image, CANVAS),
                               lambda inputs: run_compiled(compiled, inputs), MATCH_IOU)
    total, matched, mask_ious = stats["total"], stats["matched"], stats["mask_ious"]
    box_diff, score_diff, prob_diff = stats["box_diff"], stats["score_diff"], stats["prob_diff"]
    print(f"OpenVINO vs Keras: {matched}/{total} matched, max box diff {box_diff:.2e} px, score "
          f"{score_diff:.2e}, mask prob {prob_diff:.2e}, mask IoU min {min(mask_ious):.4f} "
          f"mean {np.mean(mask_ious):.5f}")
    assert total >= 50  # the scaled logits give detections on every photo
    assert matched >= MIN_MATCHED * total
    assert box_diff <= BOX_ATOL and score_diff <= SCORE_ATOL and prob_diff <= MASK_PROB_ATOL
    assert min(mask_ious) >= MIN_MASK_IOU and np.mean(mask_ious) >= MIN_MEAN_MASK_IOU


@needs_openvino
def test_metadata_sidecar_and_rt_info(exported):
    from keras_maskrcnn.export.openvino import (
        OPENVINO_INPUTS,
        metadata_path,
        read_metadata,
    )
    from keras_maskrcnn.parts.roi_heads import OUTPUT_NAMES

    _, path = exported
    meta = json.loads(metadata_path(path).read_text())
    assert meta["input_size"] == list(CANVAS) and meta["class_names"] == ["background", "a", "b", "c"]
    assert meta["inputs"] == list(OPENVINO_INPUTS) and meta["outputs"] == list(OUTPUT_NAMES)
    assert read_metadata(path) == meta
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.bin", "model.xml",
                                                              "model.xml.json"]


@needs_openvino
def test_predict_openvino_gives_original_pixels(exported, coco10_dir):
    from keras_maskrcnn.export.openvino import compile_openvino, predict_openvino

    _, path = exported
    file = sorted((coco10_dir / "images").glob("*.jpg"))[0]
    image = np.asarray(Image.open(file).convert("RGB"))
    result = predict_openvino(compile_openvino(path, threads=1), image, CANVAS)
    assert result["masks"].shape[1:] == image.shape[:2]
    assert len(result["boxes"]) > 0
    assert result["boxes"][:, 2].max() <= image.shape[0] and result["boxes"][:, 3].max() <= image.shape[1]


@needs_openvino
def test_export_to_an_xml_path_replaces_an_earlier_one(model_dir, tmp_path):
    from keras_maskrcnn.export.openvino import compile_openvino, export_openvino, metadata_path

    target = tmp_path / "sub" / "m.xml"
    for size in (128, (96, 160)):  # the second export replaces the first
        path = export_openvino(model_dir, target, input_size=size)
    assert path == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.bin", "m.xml", "m.xml.json"]
    assert json.loads(metadata_path(path).read_text())["input_size"] == [96, 160]
    assert list(compile_openvino(path).input("images").shape) == [1, 96, 160, 3]


def _run_pure(build, feeds):
    """Builds an openvino.Model from opset8 nodes, applies the exporter's rewrites and runs it
    on the CPU in float32 -> (rewrite counts, output)."""
    from keras_maskrcnn.export.openvino import (
        compile_openvino,
        guard_integer_reductions,
        require_openvino,
        scatter_segment_sums,
        unbatch_unit_gathers,
    )

    ov = require_openvino()
    import openvino.opset8 as ops

    params = [ops.parameter(list(x.shape), x.dtype) for x in feeds]
    model = ov.Model([build(ops, *params)], params)
    counts = (unbatch_unit_gathers(model), guard_integer_reductions(model),
              scatter_segment_sums(model))
    return counts, np.asarray(next(iter(compile_openvino(model)(list(feeds)).values())))


@needs_openvino
def test_rewrites_against_numpy():
    """Each rewrite replaces its pattern and gives numpy's values (the patterns the CPU plugin
    gets wrong, or runs with a reference kernel, unrewritten: see export/openvino.py)."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1, 500, 4)).astype(np.float32)
    index = rng.integers(0, 500, (1, 30)).astype(np.int32)
    counts, out = _run_pure(lambda ops, d, i: ops.gather(d, i, 1, 1), [data, index])
    assert counts == (1, 0, 0)
    np.testing.assert_array_equal(out, data[0][index[0]][None])

    x = rng.integers(-5, 10, (60, 7, 6)).astype(np.int32)
    counts, out = _run_pure(lambda ops, v: ops.add(ops.reduce_max(v, [1, 2], False),
                                                   ops.constant(np.array(1, np.int32))), [x])
    assert counts == (0, 1, 0)
    np.testing.assert_array_equal(out, x.max(axis=(1, 2)) + 1)

    values = rng.normal(size=(40, 3)).astype(np.float32)
    segments = np.sort(rng.integers(0, 12, 40)).astype(np.int32)
    segments[-1] = 13  # segment 12 stays empty: zeros
    def segment_sum(ops, v, s):
        rows = ops.convert(ops.range(ops.constant(0), ops.constant(40), ops.constant(1), "i32"),
                           "i32")
        return ops.embedding_segments_sum(v, rows, s, ops.constant(np.array(14, np.int32)))
    counts, out = _run_pure(segment_sum, [values, segments])
    assert counts == (0, 0, 1)
    expected = np.zeros((14, 3))
    np.add.at(expected, segments, values)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@needs_openvino
def test_bad_output_paths(tmp_path):
    from keras_maskrcnn.export.openvino import ir_paths

    assert ir_paths(tmp_path / "a.xml") == (tmp_path / "a.xml", tmp_path / "a.bin")
    assert ir_paths(tmp_path / "new") == (tmp_path / "new" / "model.xml", tmp_path / "new" / "model.bin")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="not .xml"):
        ir_paths(tmp_path / "f.txt")
    (tmp_path / "d.xml").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        ir_paths(tmp_path / "d.xml")


@pytest.mark.parametrize("extra", [["--full-image-masks"], ["--buckets", "auto"],
                                   ["--quantize", "float16"], ["--precision", "bfloat16"],
                                   ["--input-size", "1", "2", "3"]])
def test_cli_rejects_other_formats_options(tmp_path, extra):
    from keras_maskrcnn.cli import main

    with pytest.raises(SystemExit):
        main(["export", "--model", str(tmp_path), "--format", "openvino",
              "--output", str(tmp_path / "x.xml"), *extra])
    assert not (tmp_path / "x.xml").exists()


def test_missing_openvino_is_one_line(tmp_path):
    """Without the package: one line naming the install command, exit code != 0, no traceback
    (the import is made to fail in a fresh process)."""
    (tmp_path / "model").mkdir()
    argv = ["keras-maskrcnn", "export", "--model", str(tmp_path / "model"), "--format", "openvino",
            "--output", str(tmp_path / "x.xml")]
    # As the console script runs: argv[0] "keras-maskrcnn" quiets TensorFlow's start-up lines.
    code = (f"import sys; sys.argv = {argv!r}; sys.modules['openvino'] = None; "
            "from keras_maskrcnn.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=env, cwd=tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ['--format openvino needs the openvino package: pip install -e ".[openvino]"'], \
        result.stderr
    assert not (tmp_path / "x.xml").exists()
