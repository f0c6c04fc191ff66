"""ONNX export (tf2onnx from a fixed-canvas tf.function of the inference graph), run by
onnxruntime's CPU provider.

The model is rebuilt for a fixed square canvas of `input_size` S with the pure-TF RoIAlign
(`export_ready_model`, the weights carry over) and traced once; tf2onnx converts that graph
with the weights frozen into it. The contract is the one of the single-canvas TFLite export:

- inputs: `images [1, S, S, 3]` float32 RGB 0..255, the letterboxed canvas (`letterbox_inputs`
  makes it: the resize rule with min_size = max_size = S brings the long side to S, bilinear,
  half-pixel centres, no antialias, `floor(side * scale)`, the image top-left, zeros padding
  the rest); `image_shape [1, 2]` float32, the (h', w') of the resized image in the canvas.
- outputs (D = `config.detections_per_image`): `detection_boxes [1, D, 4]` float32
  (y1, x1, y2, x2) in canvas pixels (`keras_maskrcnn.transform.boxes_to_original` maps them to
  original pixels), `detection_scores [1, D]` float32, `detection_classes [1, D]` int32 (1..K,
  0 on padding), `num_detections [1]` int32 (rows past it are zeros), `detection_masks
  [1, D, 28, 28]` float32 probabilities inside each box.

Every node is a standard ONNX operator (domain ai.onnx; NonMaxSuppression, TopK, Loop, ...):
`missing_cpu_kernels` lists any that onnxruntime's CPU provider lacks. The class names and the
mask threshold are stored in the file's metadata (`metadata_props`) and in the sidecar JSON
`<output>.json`. Needs `pip install -e .[onnx]` (tf2onnx, onnx, onnxruntime).
"""

from __future__ import annotations

import json
import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from keras_maskrcnn.atomic import atomic_path, atomic_write_json, require_file_target
from keras_maskrcnn.extras import require
from keras_maskrcnn.parts.roi_heads import OUTPUT_NAMES
from keras_maskrcnn.transform import letterbox_canvas_size

if TYPE_CHECKING:
    from keras_maskrcnn.model import MaskRCNN

# Importing this module imports no TensorFlow (the CLI's parser imports it): the functions do.
ONNX_FORMAT = "onnx"

DEFAULT_OPSET = 17  # tf2onnx 1.17 writes opsets up to 18; onnxruntime >= 1.14 runs 17
DEFAULT_INPUT_SIZE = 512
ONNX_INPUTS = ("images", "image_shape")
ONNX_MODULES = ("tf2onnx", "onnx")
# model -> its traced serving function, owned here (never stored on the model; dropped with it)
_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def square_input_size(input_size) -> int:
    """The ONNX export's canvas side: S, or (S, S) (`transform.letterbox_canvas_size`); a
    non-square canvas is refused."""
    height, width = letterbox_canvas_size(input_size)
    if height != width:
        raise ValueError(f"the ONNX export takes a square canvas S, got `input_size` "
                         f"{input_size!r}")
    return height


def _require(module: str):
    return require(module, "onnx", "the ONNX export")


def onnx_ready_model(model_or_dir: MaskRCNN | str | Path, input_size: int = DEFAULT_INPUT_SIZE,
                     ) -> MaskRCNN:
    """The model rebuilt on an `input_size` x `input_size` letterbox canvas with the pure-TF
    RoIAlign (same weights)."""
    from keras_maskrcnn.export.saved_model import export_ready_model

    size = square_input_size(input_size)
    return export_ready_model(model_or_dir, image_size=(size, size), min_size=size,
                              max_size=size)


def serving_function(model: MaskRCNN):
    """The fixed-canvas tf.function that is converted (traced once per model; module doc)."""
    import tensorflow as tf

    from keras_maskrcnn.export.saved_model import require_portable

    cached = _TRACES.get(model)
    if cached is not None:
        return cached
    height, width = require_portable(model).config.image_size
    graph = model.inference_graph()

    @tf.function(input_signature=[
        tf.TensorSpec([1, height, width, 3], tf.float32, name="images"),
        tf.TensorSpec([1, 2], tf.float32, name="image_shape")], autograph=False)
    def serve(images, image_shape):
        outputs = graph({"images": images, "image_shape": image_shape}, training=False)
        return {name: outputs[name] for name in OUTPUT_NAMES}

    _TRACES[model] = serve
    return serve


def convert_onnx(model: MaskRCNN, opset: int = DEFAULT_OPSET):
    """Converts the inference graph of `model` (on its canvas, with the "gather" RoIAlign:
    `onnx_ready_model`) to an `onnx.ModelProto` with tf2onnx, the weights as initializers."""
    tf2onnx = _require("tf2onnx")
    _require("onnx")
    function = serving_function(model)
    tf2onnx_logger = logging.getLogger("tf2onnx")
    level = tf2onnx_logger.level
    tf2onnx_logger.setLevel(max(level, logging.WARNING))  # one INFO line per rewrite otherwise
    try:
        proto, _ = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=int(opset))
    finally:
        tf2onnx_logger.setLevel(level)
    return proto


def _metadata(model: MaskRCNN, input_size: int, opset: int) -> dict[str, Any]:
    config = model.config
    names = list(config.class_names) or [
        "background", *(f"class_{i}" for i in range(1, config.num_classes + 1))]
    return {"format": "onnx", "input_size": int(input_size), "opset": int(opset),
            "class_names": names, "num_classes": config.num_classes,
            "mask_threshold": config.mask_threshold, "inputs": list(ONNX_INPUTS),
            "outputs": list(OUTPUT_NAMES)}


def export_onnx(
    model_or_dir: MaskRCNN | str | Path, output: str | Path,
    input_size: int = DEFAULT_INPUT_SIZE, opset: int = DEFAULT_OPSET,
) -> Path:
    """Writes an .onnx model (module doc) and the metadata sidecar `<output>.json`.

    Args:
        model_or_dir: a `MaskRCNN` or a model directory.
        output: the .onnx file to write (parent folders are created; written aside and
            renamed, so a reader never sees a partial file).
        input_size: S, the side of the square letterbox canvas (multiple of 32).
        opset: the ONNX opset (default 17; tf2onnx 1.17 writes up to 18).

    Returns:
        The path of the .onnx file.
    """
    require_file_target(output, "the ONNX model")
    size = square_input_size(input_size)
    onnx = _require("onnx")
    model = onnx_ready_model(model_or_dir, size)
    proto = convert_onnx(model, opset)
    metadata = _metadata(model, size, opset)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        onnx.save(proto, str(tmp))
    atomic_write_json(metadata_path(output), metadata)
    return output


def metadata_path(onnx_path: str | Path) -> Path:
    """The sidecar JSON written beside an .onnx file by `export_onnx`."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


# ------------------------------------------------------------------------------ inspection
def _load(model):
    onnx = _require("onnx")
    if isinstance(model, str | Path):
        return onnx.load(str(model))
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return model


def _nodes(graph):
    """Every node of `graph` and of its subgraphs (Loop / If / Scan bodies)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _nodes(sub)


def _domain(domain: str) -> str:
    return domain if domain not in ("", "ai.onnx") else "ai.onnx"


def onnx_op_types(model) -> list[str]:
    """Sorted operator types used anywhere in an ONNX model (subgraphs included): "Conv",
    "NonMaxSuppression", ...; an operator outside the standard domain as "<domain>:<type>"."""
    proto = _load(model)
    return sorted({node.op_type if _domain(node.domain) == "ai.onnx"
                   else f"{node.domain}:{node.op_type}" for node in _nodes(proto.graph)})


def missing_cpu_kernels(model) -> list[str]:
    """The operators of an ONNX model for which onnxruntime's CPU provider registers no kernel
    at the model's opset ([] when it runs them all), as "<type> (opset N)".

    Per node: the ONNX schema version in force at the model's opset for its domain
    (`onnx.defs.get_schema`), then a CPU kernel whose version range holds it. Data types are
    checked by onnxruntime itself when a session is created.
    """
    onnx = _require("onnx")
    state = _require("onnxruntime.capi._pybind_state")
    proto = _load(model)
    opsets = {_domain(o.domain): o.version for o in proto.opset_import}
    kernels: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for kernel in state.get_all_opkernel_def():
        if kernel.provider == "CPUExecutionProvider":
            kernels.setdefault((_domain(kernel.domain), kernel.op_name), []).append(
                tuple(kernel.version_range))
    missing = set()
    for node in _nodes(proto.graph):
        domain = _domain(node.domain)
        opset = opsets.get(domain)
        ranges = kernels.get((domain, node.op_type), [])
        if opset is None or not ranges:
            missing.add(f"{node.op_type} (domain {domain!r}, no CPU kernel)")
            continue
        try:
            since = onnx.defs.get_schema(node.op_type, opset, domain if domain != "ai.onnx"
                                         else "").since_version
        except Exception:  # noqa: BLE001 - a contrib op without an onnx schema: any version
            continue
        if not any(lo <= since <= hi for lo, hi in ranges):
            missing.add(f"{node.op_type} (opset {opset}: version {since})")
    return sorted(missing)


# ------------------------------------------------------------------------------ running
def letterbox_inputs(image: np.ndarray, input_size: int) -> dict[str, np.ndarray]:
    """The ONNX inputs for one RGB image `[h, w, 3]` (uint8 or float 0..255) on the S x S
    canvas (`transform.letterbox` with min_size = max_size = S).

    Returns dict: `images [1, S, S, 3]` float32, `image_shape [1, 2]` float32 (h', w'),
    `scale [1]` float32, `original_shape [1, 2]` int32.
    """
    from keras_maskrcnn.transform import letterbox

    size = square_input_size(input_size)
    return {key: value[None] for key, value in letterbox(image, (size, size), size, size).items()}


def cpu_session(path: str | Path, threads: int | None = None):
    """An onnxruntime InferenceSession on the CPU provider only (`threads` intra-op threads;
    None: onnxruntime's default, one per core)."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs an exported model on `letterbox_inputs`' dict -> its outputs by name."""
    feed = {name: np.asarray(inputs[name], np.float32) for name in ONNX_INPUTS}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def predict_onnx(session, image: np.ndarray, input_size: int, mask_threshold: float = 0.5,
                 paste_method: str = "exact") -> dict[str, np.ndarray]:
    """One image's detections in original pixels from an ONNX session, as `predict_images`
    returns them: `boxes [n, 4]`, `scores [n]`, `labels [n]`, `masks [n, h, w]` uint8."""
    from keras_maskrcnn.inference import postprocess

    inputs = letterbox_inputs(image, input_size)
    return postprocess(run_session(session, inputs), inputs, 0, mask_threshold, paste_method)
