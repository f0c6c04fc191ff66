"""TFLite export with TFLite builtin ops only (no Flex, no custom ops), run by LiteRT.

The model is rebuilt for a fixed square canvas of `input_size` S (letterboxed: the resize rule
with min_size = max_size = S brings the long side to S, the image sits top-left, zeros pad the
rest) and the pure-TF RoIAlign. Signature `serving_default`:

- inputs: `images [1, S, S, 3]` float32 RGB 0..255, the letterboxed canvas (`letterbox_image`
  makes it, or any reimplementation of the resize rule: bilinear, half-pixel centres, no
  antialias, `floor(side * scale)`); `image_shape [1, 2]` float32, the (h', w') of the resized
  image inside the canvas (the padding is zeroed and boxes clipped to it inside the model).
- outputs (fixed size, D = `config.detections_per_image`): `detection_boxes [1, D, 4]` float32
  (y1, x1, y2, x2) in canvas pixels (`keras_maskrcnn.transform.boxes_to_original` maps them to
  original pixels: per axis by original / resized size, clipped), `detection_scores [1, D]`,
  `detection_classes [1, D]` int32 (1..K, 0 on padding), `num_detections [1]` int32 (rows past
  it are zeros), `detection_masks [1, D, 28, 28]` float32 probabilities inside each box.

Both RoIAlign sampling modes convert: a fixed `pooler_sampling_ratio` gives static shapes; the
adaptive ratio (0, Detectron2's default) gives data-dependent shapes inside the graph (ONE_HOT,
WHERE, CUMSUM, SEGMENT_SUM: all builtins), which LiteRT resizes at run time.

Quantization: "none" (float32), "float16" (weights stored as float16, dequantized at load),
"dynamic-int8" (weights int8, dynamic-range activations quantization of the matmul / conv ops).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_maskrcnn.atomic import atomic_path, atomic_write_json
from keras_maskrcnn.export.saved_model import (
    export_ready_model,
    model_variables,
    require_portable,
)
from keras_maskrcnn.model import MaskRCNN
from keras_maskrcnn.transform import SIZE_MULTIPLE, letterbox

QUANTIZE_OPTIONS = ("none", "float16", "dynamic-int8")
TFLITE_SIGNATURE = "serving_default"
TFLITE_INPUTS = ("images", "image_shape")
TFLITE_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections",
                  "detection_masks")


def _check_input_size(input_size) -> int:
    if isinstance(input_size, bool) or not isinstance(input_size, int | np.integer):
        raise TypeError(f"input_size must be an int, got {input_size!r}")
    if input_size <= 0 or input_size % SIZE_MULTIPLE:
        raise ValueError(
            f"input_size must be a positive multiple of {SIZE_MULTIPLE}, got {input_size}")
    return int(input_size)


def _check_quantize(quantize) -> str:
    if quantize not in QUANTIZE_OPTIONS:
        raise ValueError(f"quantize must be one of {QUANTIZE_OPTIONS}, got {quantize!r}")
    return quantize


def tflite_ready_model(model_or_dir: MaskRCNN | str | Path, input_size: int = 512) -> MaskRCNN:
    """The model rebuilt on an `input_size` x `input_size` letterbox canvas (same weights)."""
    size = _check_input_size(input_size)
    return export_ready_model(model_or_dir, image_size=(size, size), min_size=size,
                              max_size=size)


_TRACE_ATTRIBUTE = "_kmr_tflite_trace"


def _traced_inference(model: MaskRCNN):
    """(concrete function, tf.Module holding its variables) of the fixed-size inference graph,
    traced once per model (each quantization option converts the same trace)."""
    cached = model.__dict__.get(_TRACE_ATTRIBUTE)
    if cached is not None:
        return cached
    height, width = model.config.image_size

    @tf.function(input_signature=[
        tf.TensorSpec([1, height, width, 3], tf.float32, name="images"),
        tf.TensorSpec([1, 2], tf.float32, name="image_shape")], autograph=False)
    def serve(images, image_shape):
        outputs = model.inference_model({"images": images, "image_shape": image_shape},
                                        training=False)
        return {name: outputs[name] for name in TFLITE_OUTPUTS}

    module = tf.Module(name="keras_maskrcnn_tflite")
    # The variables let the converter freeze the weights; `serve` stays untracked (a tracked
    # tf.function would be traced once more when the converter saves the module).
    module.model_variables = model_variables(model)
    traced = (serve.get_concrete_function(), module)
    # Stored past Keras' attribute tracking (not a layer or weight of the model).
    object.__setattr__(model, _TRACE_ATTRIBUTE, traced)
    return traced


def convert_tflite(model: MaskRCNN, quantize: str = "none") -> bytes:
    """Converts the inference graph of `model` at its canvas size with builtin ops only.

    Args:
        model: a model on the canvas to export, with the "gather" RoIAlign
            (`tflite_ready_model`).
        quantize: "none", "float16" or "dynamic-int8".

    Returns:
        The .tflite flatbuffer.
    """
    quantize = _check_quantize(quantize)
    function, module = _traced_inference(require_portable(model))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def export_tflite(
    model_or_dir: MaskRCNN | str | Path, output: str | Path, input_size: int = 512,
    quantize: str = "none",
) -> Path:
    """Writes a .tflite model (module doc) and a metadata sidecar `<output>.json`.

    The sidecar holds `input_size`, `quantize`, `class_names`, `mask_threshold`, `num_classes`
    and the input / output names, for runtimes without keras_maskrcnn (examples/tflite_predict.py).

    Args:
        model_or_dir: a `MaskRCNN` or a model directory.
        output: the .tflite file to write (parent folders are created).
        input_size: S, the side of the square letterbox canvas (multiple of 32).
        quantize: "none", "float16" or "dynamic-int8".

    Returns:
        The path of the .tflite file.
    """
    quantize = _check_quantize(quantize)
    model = tflite_ready_model(model_or_dir, input_size)
    data = convert_tflite(model, quantize)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        tmp.write_bytes(data)
    config = model.config
    names = list(config.class_names) or [
        "background", *(f"class_{i}" for i in range(1, config.num_classes + 1))]
    metadata = {"input_size": int(input_size), "quantize": quantize, "class_names": names,
                "num_classes": config.num_classes, "mask_threshold": config.mask_threshold,
                "signature": TFLITE_SIGNATURE, "inputs": list(TFLITE_INPUTS),
                "outputs": list(TFLITE_OUTPUTS)}
    atomic_write_json(metadata_path(output), metadata)
    return output


def metadata_path(tflite_path: str | Path) -> Path:
    """The sidecar JSON written beside a .tflite file by `export_tflite`."""
    tflite_path = Path(tflite_path)
    return tflite_path.with_name(tflite_path.name + ".json")


def letterbox_image(image: np.ndarray, input_size: int) -> dict[str, np.ndarray]:
    """The TFLite inputs for one RGB image `[h, w, 3]` (uint8 or float 0..255): the resize rule
    with min_size = max_size = S on the S x S canvas (`transform.letterbox`).

    Returns dict: `images [1, S, S, 3]` float32, `image_shape [1, 2]` float32 (h', w'),
    `scale [1]` float32 (canvas pixels / original pixels), `original_shape [1, 2]` int32.
    """
    size = _check_input_size(input_size)
    return {key: value[None] for key, value in letterbox(image, (size, size), size, size).items()}


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:  # TensorFlow ships the same generated schema
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


def tflite_op_names(model: str | Path | bytes) -> list[str]:
    """Sorted names of the operators used anywhere in a .tflite model (every subgraph).

    Builtins appear by name ("CONV_2D", "NON_MAX_SUPPRESSION_V4", ...); a custom op, Flex ops
    included, as "CUSTOM:<code>" (e.g. "CUSTOM:FlexCropAndResize").
    """
    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    flat = schema.Model.GetRootAs(data, 0)
    ops = set()
    for i in range(flat.OperatorCodesLength()):
        code = flat.OperatorCodes(i)
        # Codes < 127 may sit in the deprecated int8 field only; the larger of the two is right.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            ops.add(f"CUSTOM:{(code.CustomCode() or b'').decode()}")
        else:
            ops.add(names.get(builtin, f"BUILTIN_{builtin}"))
    return sorted(ops)
