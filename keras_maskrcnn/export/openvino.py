"""OpenVINO export (an IR `.xml` + `.bin` converted from a fixed-canvas tf.function of the
inference graph), run by OpenVINO's CPU plugin.

The model is rebuilt for a fixed canvas (`input_size`: S x S or (H, W), multiples of 32) with
the pure-TF RoIAlign (`tflite_ready_model`, the weights carry over); the fixed-canvas
tf.function (`onnx.serving_function`) is converted with `openvino.convert_model` and written
with `openvino.save_model`. The contract is the one of the single-canvas TFLite export:

- inputs: `images [1, H, W, 3]` float32 RGB 0..255, the letterboxed canvas (`letterbox_inputs`
  = `tflite.letterbox_image`: the "fit" rule `scale = min(H / h, W / w)`, bilinear, half-pixel
  centres, no antialias, `floor(side * scale)`, the image top-left, zeros padding the rest);
  `image_shape [1, 2]` float32, the (h', w') of the resized image in the canvas.
- outputs (by name; D = `config.detections_per_image`): `detection_boxes [1, D, 4]` float32
  (y1, x1, y2, x2) in canvas pixels (`keras_maskrcnn.transform.boxes_to_original` maps them to
  original pixels), `detection_scores [1, D]` float32, `detection_classes [1, D]` int32 (1..K,
  0 on padding), `num_detections [1]` int32 (rows past it are zeros), `detection_masks
  [1, D, 28, 28]` float32 probabilities inside each box.

One IR holds one canvas. The shape-polymorphic graph (`MaskRCNN.dynamic_inference_function`,
input `[1, ?, ?, 3]`) converts too and, with the rewrites below, runs, but its boxes differed
from the Keras model's (up to 200 px on a tiny random model; not investigated), so it is not
offered. The non-maximum suppressions (`NonMaxSuppressionV4` inside `tf.map_fn`) become
OpenVINO Loop bodies.

Precision: OpenVINO's CPU plugin computes in bfloat16 by default on CPUs with AVX512_BF16 or
AMX; `compile_openvino(precision="float32")` (the default here) asks for float32, which gives
the Keras model's detections; "bfloat16" / "auto" (the plugin's own choice) trade accuracy for
speed. The weights are stored as float32 (`openvino.save_model(compress_to_fp16=False)`).

The class names, mask threshold and canvas are stored in the IR's runtime info (section
"keras_maskrcnn") and in the sidecar JSON `<model>.xml.json`. Needs `pip install -e
".[openvino]"`. OpenVINO's converter sends usage telemetry by default; this module imports
OpenVINO with its telemetry package blocked (the converter's own no-op stub takes over), so
exporting opens no network connection.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from keras_maskrcnn.atomic import atomic_write_json, replace, temporary_sibling
from keras_maskrcnn.parts.roi_heads import OUTPUT_NAMES

if TYPE_CHECKING:
    from keras_maskrcnn.model import MaskRCNN

# Importing this module imports neither TensorFlow nor OpenVINO: the functions do.
OPENVINO_FORMAT = "openvino"
OPENVINO_HINT = 'pip install -e ".[openvino]"'
DEFAULT_INPUT_SIZE = 512
DEFAULT_XML_NAME = "model.xml"
OPENVINO_INPUTS = ("images", "image_shape")
PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "auto": None}
RT_INFO_SECTION = "keras_maskrcnn"


def require_openvino():
    """The `openvino` module; ImportError naming the install command when it is missing.

    Its telemetry package is blocked first (unless something imported it already), so that
    neither this import nor `convert_model` sends usage data."""
    sys.modules.setdefault("openvino_telemetry", None)  # None: `import` raises ImportError
    try:
        return importlib.import_module("openvino")
    except ImportError as err:
        raise ImportError(f"the OpenVINO export needs the openvino package: {OPENVINO_HINT}") \
            from err


def ir_paths(output: str | Path) -> tuple[Path, Path]:
    """(.xml, .bin) for `output`: a path ending in .xml, or a folder (new or existing) that
    gets `model.xml` / `model.bin`."""
    output = Path(output)
    if output.suffix.lower() == ".xml":
        if output.is_dir():
            raise ValueError(f"the OpenVINO model {output} is a folder, not a file: give a .xml "
                             "file path or a folder without the .xml suffix")
        xml = output
    elif output.exists() and not output.is_dir():
        raise ValueError(f"the OpenVINO model {output} is a file but not .xml: give a .xml "
                         "file path or a folder")
    else:
        xml = output / DEFAULT_XML_NAME
    return xml, xml.with_suffix(".bin")


def metadata_path(xml_path: str | Path) -> Path:
    """The sidecar JSON written beside the .xml by `export_openvino`."""
    xml_path = Path(xml_path)
    return xml_path.with_name(xml_path.name + ".json")


def openvino_ready_model(model_or_dir: MaskRCNN | str | Path, input_size=DEFAULT_INPUT_SIZE,
                         ) -> MaskRCNN:
    """The model rebuilt on an `input_size` canvas (S x S, or (H, W)) with the pure-TF
    RoIAlign, same weights."""
    from keras_maskrcnn.export.tflite import tflite_ready_model

    return tflite_ready_model(model_or_dir, input_size)


def _static_dim(shape, index: int):
    """Dimension `index` of a PartialShape as an int, or None when it is not static."""
    if shape.rank.is_dynamic or len(shape) <= index or shape[index].is_dynamic:
        return None
    return shape[index].get_length()


def unbatch_unit_gathers(model) -> int:
    """Rewrites every Gather with `batch_dims >= 1` whose batch dimension is a static 1 as
    Squeeze -> Gather(batch_dims - 1) -> Unsqueeze, in `model` and its Loop bodies; returns
    how many it rewrote.

    OpenVINO's CPU plugin (2025.4 and 2026.4 checked) computes a Gather with batch_dims=1 and
    batch size 1 wrongly (wrong rows for [1, 19200, 4] data and [1, 300] indices) or crashes
    (segmentation fault for [1, 10, 4] and [1, 3]); batch 2, a dynamic batch or batch_dims=0
    are right. The rewrite gives the same values and sidesteps that kernel."""
    ops = importlib.import_module("openvino.opset8")
    count = 0
    for op in model.get_ordered_ops():
        if hasattr(op, "get_function"):  # Loop / TensorIterator bodies
            count += unbatch_unit_gathers(op.get_function())
        if op.get_type_name() != "Gather" or op.get_attributes().get("batch_dims", 0) < 1:
            continue
        data, indices, axis_input = op.input_value(0), op.input_value(1), op.input_value(2)
        axis_node = axis_input.get_node()
        if axis_node.get_type_name() != "Constant" or \
                _static_dim(data.get_partial_shape(), 0) != 1 or \
                _static_dim(indices.get_partial_shape(), 0) != 1:
            continue
        batch_dims = int(op.get_attributes()["batch_dims"])
        axis = int(np.asarray(axis_node.get_data()).reshape(()))
        axis = axis + data.get_partial_shape().rank.get_length() if axis < 0 else axis
        gathered = ops.gather(ops.squeeze(data, [0]), ops.squeeze(indices, [0]), axis - 1,
                              batch_dims - 1)
        replacement = ops.unsqueeze(gathered, [0])
        replacement.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(replacement.output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


_INTEGER_REDUCTIONS = ("ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd")


def guard_integer_reductions(model) -> int:
    """Puts `Maximum(x, dtype min)` (the identity) after every integer Reduce* node, in
    `model` and its Loop bodies; returns how many it guarded.

    OpenVINO's CPU plugin (2026.4) returns garbage (values near -2^31) for an int32 ReduceMax /
    ReduceMin / ReduceSum over the inner axes followed by an Add or Multiply with a constant,
    e.g. `reduce_max(x, [1, 2]) + 1` on [60, 7, 6] (it fuses the constant into the reduction;
    the adaptive RoIAlign's per-box window width is such an expression); a Maximum in between
    keeps them apart. (The plugin reduces int32 through float32: exact below 2^24.)"""
    ops = importlib.import_module("openvino.opset8")
    count = 0
    for op in model.get_ordered_ops():
        if hasattr(op, "get_function"):
            count += guard_integer_reductions(op.get_function())
        if op.get_type_name() not in _INTEGER_REDUCTIONS:
            continue
        output = op.output(0)
        element = output.get_element_type()
        if not (element.is_integral_number() and element.is_signed()):
            continue
        dtype = np.int64 if element.bitwidth == 64 else np.int32
        consumers = list(output.get_target_inputs())
        guard = ops.maximum(output, ops.constant(np.array(np.iinfo(dtype).min, dtype)))
        for consumer in consumers:
            consumer.replace_source_output(guard.output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


def scatter_segment_sums(model) -> int:
    """Replaces every EmbeddingSegmentsSum (what TensorFlow's SegmentSum converts to; the
    adaptive RoIAlign's per-bin sums) by Gather + ScatterNDUpdate(reduction="sum") on zeros, in
    `model` and its Loop bodies; returns how many it replaced.

    The CPU plugin runs EmbeddingSegmentsSum with a reference kernel whose time grows with rows
    x segments: 0.11 s for 20,000 rows into 4,900 segments of 256 channels (ScatterNDUpdate:
    0.007 s), 38 s for the box RoIAlign of a ResNet-50 FPN at 320 x 320. Same sums (rows added
    in order); empty segments are zeros in both (no default index is set by the converter)."""
    ops = importlib.import_module("openvino.opset8")
    scatter = importlib.import_module("openvino.opset15").scatter_nd_update
    count = 0
    for op in model.get_ordered_ops():
        if hasattr(op, "get_function"):
            count += scatter_segment_sums(op.get_function())
        if op.get_type_name() != "EmbeddingSegmentsSum" or op.get_input_size() != 4:
            continue
        table, indices, segments, num = (op.input_value(i) for i in range(4))
        rows = ops.gather(table, indices, ops.constant(np.array(0, np.int64)))
        size = ops.concat([ops.convert(ops.reshape(num, ops.constant(np.array([1], np.int64)),
                                                   False), "i64"),
                           ops.gather(ops.shape_of(table, "i64"),
                                      ops.range(ops.constant(np.array(1, np.int64)),
                                                ops.squeeze(ops.shape_of(ops.shape_of(table, "i64"),
                                                                         "i64"), [0]),
                                                ops.constant(np.array(1, np.int64)), "i64"),
                                      ops.constant(np.array(0, np.int64)))], 0)
        zeros = ops.broadcast(ops.constant(np.array(0, table.get_element_type().to_dtype())),
                              size)
        summed = scatter(zeros, ops.unsqueeze(segments, [1]), rows, "sum")
        summed.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(summed.output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


def convert_openvino(model: MaskRCNN):
    """Converts the inference graph of `model` (on its canvas, "gather" RoIAlign:
    `openvino_ready_model`) to an `openvino.Model`, the weights as constants, with the
    rewrites that keep OpenVINO's CPU plugin off its bugs (`unbatch_unit_gathers`,
    `guard_integer_reductions`) and off its slow reference kernel (`scatter_segment_sums`)."""
    from keras_maskrcnn.export.onnx import serving_function

    ov = require_openvino()
    function = serving_function(model)
    converted = ov.convert_model(function.get_concrete_function())
    unbatch_unit_gathers(converted)
    guard_integer_reductions(converted)
    scatter_segment_sums(converted)
    return converted


def _metadata(model: MaskRCNN) -> dict[str, Any]:
    config = model.config
    names = list(config.class_names) or [
        "background", *(f"class_{i}" for i in range(1, config.num_classes + 1))]
    height, width = config.image_size
    return {"format": OPENVINO_FORMAT, "input_size": [height, width], "resize": "fit",
            "class_names": names, "num_classes": config.num_classes,
            "mask_threshold": config.mask_threshold, "inputs": list(OPENVINO_INPUTS),
            "outputs": list(OUTPUT_NAMES)}


def export_openvino(
    model_or_dir: MaskRCNN | str | Path, output: str | Path, input_size=DEFAULT_INPUT_SIZE,
) -> Path:
    """Writes an OpenVINO IR (module doc): `.xml`, `.bin` and the sidecar `<model>.xml.json`.

    Args:
        model_or_dir: a `MaskRCNN` or a model directory.
        output: the .xml file to write (the .bin goes beside it), or a folder that gets
            `model.xml` + `model.bin`. Parent folders are created; each file is written aside
            and renamed (the .bin before the .xml), so a reader never sees a partial file.
        input_size: S (an S x S canvas) or (H, W), multiples of 32.

    Returns:
        The path of the .xml file.
    """
    xml, weights = ir_paths(output)
    ov = require_openvino()
    model = openvino_ready_model(model_or_dir, input_size)
    converted = convert_openvino(model)
    metadata = _metadata(model)
    for key, value in metadata.items():
        converted.set_rt_info(json.dumps(value), [RT_INFO_SECTION, key])
    xml.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(xml, ".d")
    staging.mkdir()
    try:
        ov.save_model(converted, str(staging / xml.name), compress_to_fp16=False)
        replace(staging / weights.name, weights)
        replace(staging / xml.name, xml)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_json(metadata_path(xml), metadata)
    return xml


def read_metadata(xml_path: str | Path) -> dict[str, Any]:
    """The metadata stored in an exported IR's runtime info (the sidecar's content)."""
    ov = require_openvino()
    model = ov.Core().read_model(str(xml_path))
    keys = model.get_rt_info()[RT_INFO_SECTION]
    return {key: json.loads(model.get_rt_info([RT_INFO_SECTION, key]).astype(str))
            for key in keys}


# ------------------------------------------------------------------------------ running
def compile_openvino(model, precision: str = "float32", threads: int | None = None):
    """An OpenVINO `CompiledModel` on the CPU for an exported .xml (or an `openvino.Model`).

    `precision`: "float32" (default: the Keras model's numbers), "bfloat16", or "auto"
    (OpenVINO's default: bfloat16 on CPUs with AVX512_BF16 / AMX, else float32). `threads`:
    inference threads (None: OpenVINO's default, one per core). Latency mode (one request at a
    time using every thread)."""
    ov = require_openvino()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    core = ov.Core()
    if isinstance(model, str | Path):
        model = core.read_model(str(model))
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if PRECISIONS[precision]:
        config["INFERENCE_PRECISION_HINT"] = PRECISIONS[precision]
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(model, "CPU", config)


def letterbox_inputs(image: np.ndarray, input_size) -> dict[str, np.ndarray]:
    """The inputs of an exported IR for one RGB image `[h, w, 3]` (uint8 or float 0..255) on
    its canvas (S or (H, W); the "fit" rule, `tflite.letterbox_image`).

    Returns dict: `images [1, H, W, 3]` float32, `image_shape [1, 2]` float32 (h', w'),
    `scale [1]` float32, `original_shape [1, 2]` int32.
    """
    from keras_maskrcnn.export.tflite import letterbox_image

    return letterbox_image(image, input_size)


def run_compiled(compiled, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs a compiled IR on `letterbox_inputs`' dict -> its outputs by name."""
    feed = {name: np.asarray(inputs[name], np.float32) for name in OPENVINO_INPUTS}
    result = compiled(feed)
    return {port.get_any_name(): np.asarray(value) for port, value in result.items()}


def predict_openvino(compiled, image: np.ndarray, input_size, mask_threshold: float = 0.5,
                     paste_method: str = "exact") -> dict[str, np.ndarray]:
    """One image's detections in original pixels from a compiled IR, as `predict_images`
    returns them: `boxes [n, 4]`, `scores [n]`, `labels [n]`, `masks [n, h, w]` uint8."""
    from keras_maskrcnn.inference import postprocess

    inputs = letterbox_inputs(image, input_size)
    return postprocess(run_compiled(compiled, inputs), inputs, 0, mask_threshold, paste_method)
