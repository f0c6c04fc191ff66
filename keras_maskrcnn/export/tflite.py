"""TFLite export with TFLite builtin ops only (no Flex, no custom ops), run by LiteRT.

Two layouts:

- one canvas (default, `input_size` S or (H, W)): the model is rebuilt for a fixed canvas and
  the pure-TF RoIAlign; the image is letterboxed onto it by the "fit" rule: `scale = min(H / h,
  W / w)` (for a square S x S canvas the resize rule with min_size = max_size = S: the long side
  to S), `floor(side * scale)`, the image top-left, zeros padding the rest. Signature
  `serving_default`.
- canvas buckets (`buckets`, `keras_maskrcnn.export.buckets`: "auto", "square" or "HxW,..."):
  one signature per canvas, `canvas_<H>x<W>`, all sharing one copy of the weights in the file;
  the image is resized by the model's own rule (config `min_size` / `max_size`, as the Keras
  path and the SavedModel) and goes to the smallest canvas that holds it (`bucket_for`); its
  detections are those of `predict_images` with `canvas="per_image"` whenever that canvas is
  a bucket. The sidecar lists the buckets; examples/tflite_predict.py picks the signature.

Each signature:

- inputs: `images [1, H, W, 3]` float32 RGB 0..255, the letterboxed canvas (`letterbox_image`
  makes it, or any reimplementation of the rule: bilinear, half-pixel centres, no antialias,
  `floor(side * scale)`); `image_shape [1, 2]` float32, the (h', w') of the resized image
  inside the canvas (the padding is zeroed and boxes clipped to it inside the model).
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
bfloat16 compute is not offered: LiteRT's CPU kernels have none.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_maskrcnn.atomic import atomic_path, atomic_write_json, require_file_target
from keras_maskrcnn.export.buckets import (
    bucket_for,
    canvas_inference_model,
    format_canvas,
    missing_coverage,
    parse_buckets,
)
from keras_maskrcnn.export.saved_model import (
    export_ready_model,
    model_variables,
    require_portable,
)
from keras_maskrcnn.model import MaskRCNN
from keras_maskrcnn.parts.roi_heads import OUTPUT_NAMES
from keras_maskrcnn.transform import letterbox, letterbox_canvas_size

QUANTIZE_OPTIONS = ("none", "float16", "dynamic-int8")
TFLITE_SIGNATURE = "serving_default"
TFLITE_INPUTS = ("images", "image_shape")
logger = logging.getLogger("keras_maskrcnn")

RESIZE_FIT = "fit"  # one canvas: scale = min(H / h, W / w)
RESIZE_RULE = "min_max"  # buckets: the config's min_size / max_size rule


def _check_quantize(quantize) -> str:
    if quantize not in QUANTIZE_OPTIONS:
        raise ValueError(f"quantize must be one of {QUANTIZE_OPTIONS}, got {quantize!r}")
    return quantize


def fit_resize_sizes(height: int, width: int, canvas) -> tuple[int, int]:
    """(min_size, max_size) of the resize rule that gives the "fit" scale `min(H / h, W / w)`
    of an `height x width` image on `canvas` (H, W), with the same float arithmetic.

    When the image has the canvas' orientation (or either is square) that is (min(H, W),
    max(H, W)); otherwise the long side goes to the canvas' short side: (min(H, W), min(H, W)).
    """
    h_canvas, w_canvas = letterbox_canvas_size(canvas)
    short, long = min(h_canvas, w_canvas), max(h_canvas, w_canvas)
    if h_canvas == w_canvas or height == width or (height < width) == (h_canvas < w_canvas):
        return short, long
    return short, short


def tflite_ready_model(model_or_dir: MaskRCNN | str | Path, input_size=512) -> MaskRCNN:
    """The model rebuilt on an `input_size` canvas (S x S, or (H, W)), same weights."""
    h, w = letterbox_canvas_size(input_size)
    return export_ready_model(model_or_dir, image_size=(h, w), min_size=min(h, w),
                              max_size=max(h, w))


# model -> {bucket set: traced functions}, owned here (never stored on the model)
_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature_function(graph, canvas, name: str):
    height, width = canvas

    def serve(images, image_shape):
        outputs = graph({"images": images, "image_shape": image_shape}, training=False)
        return {key: outputs[key] for key in OUTPUT_NAMES}

    serve.__name__ = name  # the converter names each signature after its function
    return tf.function(serve, autograph=False, input_signature=[
        tf.TensorSpec([1, height, width, 3], tf.float32, name="images"),
        tf.TensorSpec([1, 2], tf.float32, name="image_shape")]).get_concrete_function()


def bucket_signature(canvas) -> str:
    """The signature key of a bucket canvas: "canvas_<H>x<W>"."""
    return f"canvas_{format_canvas(canvas)}"


def _traced_inference(model: MaskRCNN, buckets=None):
    """(concrete functions, tf.Module holding their variables): the inference graph on the
    model's canvas (`serving_default`), or on each bucket (shared variables), traced once per
    model and bucket set (each quantization option converts the same trace)."""
    key = None if buckets is None else tuple(buckets)
    cache = _TRACES.setdefault(model, {})
    if key in cache:
        return cache[key]
    if buckets is None:
        functions = [_signature_function(model.inference_graph(), model.config.image_size,
                                         TFLITE_SIGNATURE)]
    else:
        functions = [_signature_function(canvas_inference_model(model, canvas), canvas,
                                         bucket_signature(canvas)) for canvas in buckets]
    module = tf.Module(name="keras_maskrcnn_tflite")
    # The variables let the converter freeze the weights; the functions stay untracked (a
    # tracked tf.function would be traced once more when the converter saves the module).
    module.model_variables = model_variables(model)
    cache[key] = (functions, module)
    return cache[key]


def convert_tflite(model: MaskRCNN, quantize: str = "none", buckets=None) -> bytes:
    """Converts the inference graph of `model` with builtin ops only.

    Args:
        model: a model with the "gather" RoIAlign: on the canvas to export
            (`tflite_ready_model`), or any canvas when `buckets` is given.
        quantize: "none", "float16" or "dynamic-int8".
        buckets: None (one `serving_default` signature on the model's canvas) or canvases
            (H, W): one signature `canvas_<H>x<W>` each, weights stored once.

    Returns:
        The .tflite flatbuffer.
    """
    quantize = _check_quantize(quantize)
    if buckets is not None:
        config = model.config
        buckets = parse_buckets(buckets, config.min_size, config.max_size)
    functions, module = _traced_inference(require_portable(model), buckets)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def export_tflite(
    model_or_dir: MaskRCNN | str | Path, output: str | Path, input_size=512,
    quantize: str = "none", buckets=None,
) -> Path:
    """Writes a .tflite model (module doc) and a metadata sidecar `<output>.json`.

    The sidecar holds `input_size`, `quantize`, `class_names`, `mask_threshold`, `num_classes`,
    the input / output names, the `resize` rule ("fit" or "min_max" with `min_size` and
    `max_size`) and `signatures` ({key: [H, W]}), for runtimes without keras_maskrcnn
    (examples/tflite_predict.py).

    Args:
        model_or_dir: a `MaskRCNN` or a model directory.
        output: the .tflite file to write (parent folders are created).
        input_size: S (a square S x S canvas) or (H, W), multiples of 32; ignored with
            `buckets`.
        quantize: "none", "float16" or "dynamic-int8".
        buckets: None (one canvas of `input_size`) or a bucket spec ("auto", "square",
            "HxW,HxW,..." or a list of (H, W)): one signature per canvas.

    Returns:
        The path of the .tflite file.
    """
    require_file_target(output, "the TFLite model")
    quantize = _check_quantize(quantize)
    if buckets is None:
        canvas = letterbox_canvas_size(input_size)
        model = tflite_ready_model(model_or_dir, canvas)
        data = convert_tflite(model, quantize)
        signatures = {TFLITE_SIGNATURE: list(canvas)}
        resize = {"resize": RESIZE_FIT}
        size_entry = canvas[0] if canvas[0] == canvas[1] else list(canvas)
    else:
        model = export_ready_model(model_or_dir)
        c = model.config
        canvases = parse_buckets(buckets, c.min_size, c.max_size)
        missing = missing_coverage(canvases, c.min_size, c.max_size)
        if missing:
            logger.warning("export: no bucket holds %s: images whose resized size needs it fit "
                           "no signature", ", ".join(map(format_canvas, missing)))
        data = convert_tflite(model, quantize, canvases)
        signatures = {bucket_signature(b): list(b) for b in canvases}
        resize = {"resize": RESIZE_RULE, "min_size": c.min_size, "max_size": c.max_size}
        size_entry = None
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        tmp.write_bytes(data)
    config = model.config
    names = list(config.class_names) or [
        "background", *(f"class_{i}" for i in range(1, config.num_classes + 1))]
    metadata = {"input_size": size_entry, "quantize": quantize, "class_names": names,
                "num_classes": config.num_classes, "mask_threshold": config.mask_threshold,
                "signature": next(iter(signatures)), "signatures": signatures, **resize,
                "inputs": list(TFLITE_INPUTS), "outputs": list(OUTPUT_NAMES)}
    atomic_write_json(metadata_path(output), metadata)
    return output


def metadata_path(tflite_path: str | Path) -> Path:
    """The sidecar JSON written beside a .tflite file by `export_tflite`."""
    tflite_path = Path(tflite_path)
    return tflite_path.with_name(tflite_path.name + ".json")


def letterbox_image(image: np.ndarray, input_size) -> dict[str, np.ndarray]:
    """The inputs of a one-canvas TFLite model for one RGB image `[h, w, 3]` (uint8 or float
    0..255): the "fit" rule on the `input_size` canvas (S x S or (H, W); `transform.letterbox`
    with `fit_resize_sizes`).

    Returns dict: `images [1, H, W, 3]` float32, `image_shape [1, 2]` float32 (h', w'),
    `scale [1]` float32 (canvas pixels / original pixels), `original_shape [1, 2]` int32.
    """
    canvas = letterbox_canvas_size(input_size)
    image = np.asarray(image)
    min_size, max_size = fit_resize_sizes(image.shape[0], image.shape[1], canvas)
    return {key: value[None] for key, value in letterbox(image, canvas, min_size,
                                                         max_size).items()}


def bucket_inputs(image: np.ndarray, metadata: dict) -> tuple[str, dict[str, np.ndarray]]:
    """(signature key, inputs) for one RGB image on a bucketed TFLite model (`metadata`: its
    sidecar): the model's resize rule and the smallest bucket that holds the image."""
    if metadata.get("resize") != RESIZE_RULE:
        raise ValueError("bucket_inputs needs the sidecar of a model exported with buckets")
    image = np.asarray(image)
    signatures = {key: tuple(canvas) for key, canvas in metadata["signatures"].items()}
    min_size, max_size = metadata["min_size"], metadata["max_size"]
    canvas = bucket_for(image.shape[0], image.shape[1], list(signatures.values()), min_size,
                        max_size)
    if canvas is None:
        raise ValueError(f"the {image.shape[0]} x {image.shape[1]} image fits none of the "
                         f"canvases {sorted(signatures.values())}")
    key = next(k for k, v in signatures.items() if v == canvas)
    inputs = letterbox(image, canvas, min_size, max_size)
    return key, {name: value[None] for name, value in inputs.items()}


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
