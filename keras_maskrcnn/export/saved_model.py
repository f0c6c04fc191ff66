"""SavedModel export for TF Serving: raw images in, detections in original pixels out.

The exported `tf.Module` has two signatures; the resize rule (`keras_maskrcnn.transform`),
normalization, padding and anchors all run inside the graph, so a client sends plain pixels:

- `serving_default(images)`: `images [B, H, W, 3]` uint8 RGB, any H and W (one size per batch).
- `serving_bytes(image_bytes)`: `image_bytes [B]` tf.string, each an encoded JPEG / PNG / BMP /
  GIF (first frame) / WebP; images may differ in size (each runs on its own canvas, one after
  the other).

Canvas buckets (`keras_maskrcnn.export.buckets`, option `buckets`): the graph holds the model on
a few canvases (default "auto": square, 4:3, 3:2 and the catch-all, landscape and portrait), all
sharing one set of variables, and runs each image on the smallest that holds its resized size
(`tf.switch_case`), so a 640 x 480 photo at 800 / 1333 runs on the same 800 x 1088 canvas as the
Keras path with `canvas="per_image"`, and gives its detections. `buckets="square"` is the one
square canvas of earlier exports; `buckets="per_image"` holds the shape-polymorphic graph
instead (`MaskRCNN.dynamic_inference_function`: anchors computed in the graph), each image padded
only to a multiple of 32 as the Keras path pads it, for any aspect ratio.

Outputs (dict, D = `config.detections_per_image`, rows past `num_detections` are zeros):
`detection_boxes [B, D, 4]` float32 (y1, x1, y2, x2) in original-image pixels (the inverse box
map `transform.boxes_to_original_tf`: per axis by original / resized size, clipped to the image,
as `inference.postprocess` does),
`detection_scores [B, D]` float32, `detection_classes [B, D]` int32 (1..K, 0 on padding),
`num_detections [B]` int32, `detection_masks [B, D, 28, 28]` float32 probabilities of the
detected class inside its box, `original_shape [B, 2]` int32 (h, w) of each input image, and
with `full_image_masks=True` `detection_full_masks [B, D, Hmax, Wmax]` uint8 {0, 1}: each mask
pasted into its image (`ops.paste.paste_masks_tf`, Detectron2 "exact", `>= mask_threshold`);
Hmax, Wmax are the largest height and width in the batch, image b fills the top-left
`original_shape[b]` block and is zero elsewhere.

Bad requests fail with an InvalidArgumentError naming the problem: the signature enforces dtype,
rank and the 3 channels; an empty batch or an empty image (height or width 0) fails a
`tf.debugging` assertion; images above `max_image_pixels` (default
`keras_maskrcnn.data.images.DEFAULT_MAX_IMAGE_PIXELS`, 36 MP) are refused, in `serving_bytes`
from the file header before anything is decoded (`export.image_header`; the message names the
index of the file in the batch and the limit); a file that is no image fails naming its index
("Unknown image file format").

`precision="bfloat16"` (`export.precision`) exports the model computing in bfloat16 (variables
float32; coordinates, decoding and outputs float32), for CPUs with AVX512_BF16 / AMX.
`assets.extra/config.json` keeps the model's config and `assets.extra/export.json` the export
options (buckets, max_image_pixels, precision).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import tensorflow as tf

from keras_maskrcnn.atomic import atomic_path, require_replaceable_folder
from keras_maskrcnn.builder import rebuilt
from keras_maskrcnn.config import MaskRCNNConfig
from keras_maskrcnn.data.images import DEFAULT_MAX_IMAGE_PIXELS
from keras_maskrcnn.export.buckets import (
    DEFAULT_BUCKETS,
    PER_IMAGE,
    bucket_index_tf,
    canvas_inference_model,
    format_canvas,
    missing_coverage,
    parse_buckets,
)
from keras_maskrcnn.export.image_header import check_encoded_images
from keras_maskrcnn.model import MaskRCNN
from keras_maskrcnn.ops.paste import paste_masks_tf
from keras_maskrcnn.parts.roi_heads import OUTPUT_NAMES
from keras_maskrcnn.precision import model_precision, with_precision
from keras_maskrcnn.saving import CONFIG_FILE, load_model_dir, read_model_config
from keras_maskrcnn.transform import (
    SIZE_MULTIPLE,
    boxes_to_original_tf,
    resize_and_pad_image,
    resize_image_tf,
    resized_shape_tf,
)

logger = logging.getLogger("keras_maskrcnn")

SERVING_DEFAULT = "serving_default"
SERVING_BYTES = "serving_bytes"
EXPORT_ROI_ALIGN = "gather"  # pure TF: no compiled custom op may end up in an export
EXPORT_METADATA_FILE = "export.json"


# --------------------------------------------------------------------------------- the model
def export_ready_model(model_or_dir: MaskRCNN | str | Path, **config_changes) -> MaskRCNN:
    """The model to export: pure-TF RoIAlign ("gather"), `config_changes` applied.

    Args:
        model_or_dir: a `MaskRCNN` or a model directory (config.json + model.weights.h5).
        config_changes: config fields to replace (e.g. `image_size`); the weights depend on
            neither the canvas size nor the RoIAlign kernel, so they carry over.

    Returns:
        `model_or_dir` itself when it already is such a model, else a rebuilt one with the
        same weights.
    """
    if isinstance(model_or_dir, MaskRCNN):
        return rebuilt(model_or_dir, roi_align_implementation=EXPORT_ROI_ALIGN, **config_changes)
    if not isinstance(model_or_dir, str | Path):
        raise TypeError(
            "model_or_dir must be a MaskRCNN or the path of a model directory, "
            f"got {type(model_or_dir).__name__}")
    config = read_model_config(model_or_dir).replace(**config_changes)
    return load_model_dir(model_or_dir, roi_align_implementation=EXPORT_ROI_ALIGN, config=config)


def require_portable(model: MaskRCNN) -> MaskRCNN:
    """Raises ValueError unless `model` uses the pure-TF RoIAlign that every export needs."""
    if not isinstance(model, MaskRCNN):
        raise TypeError(f"model must be a MaskRCNN, got {type(model).__name__}")
    if model.roi_align_implementation != EXPORT_ROI_ALIGN:
        raise ValueError(
            f"exports need roi_align_implementation={EXPORT_ROI_ALIGN!r} (no compiled custom "
            f"op), got {model.roi_align_implementation!r}: rebuild with export_ready_model")
    return model


def model_variables(model: MaskRCNN) -> list[tf.Variable]:
    """The tf.Variables behind the inference graph's Keras variables.

    A `tf.Module` must hold these explicitly: the Keras wrappers are not tracked as TF
    variables, and without them SavedModel / TFLite exports lose (or fail to freeze) the weights.
    """
    return [w.value for w in model.inference_graph().weights]


def check_max_image_pixels(max_image_pixels) -> int | None:
    """`max_image_pixels` as an int > 0, or None (no limit)."""
    if max_image_pixels is None:
        return None
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int):
        raise TypeError(f"max_image_pixels must be an int or None, got {max_image_pixels!r}")
    if max_image_pixels <= 0:
        raise ValueError(f"max_image_pixels must be > 0 (or None: no limit), got "
                         f"{max_image_pixels}")
    return max_image_pixels


# --------------------------------------------------------------------------------- graph pieces
def _check_batch(images: tf.Tensor, signature: str) -> list[tf.Operation]:
    """Assertions: at least one image, and (for pixel tensors) no empty image."""
    shape = tf.shape(images)
    checks = [tf.debugging.assert_greater(
        shape[0], 0, message=f"{signature}: the batch is empty; send at least one image")]
    if images.shape.rank == 4:
        checks.append(tf.debugging.assert_greater(
            tf.reduce_min(shape[1:3]), 0,
            message=f"{signature}: empty image: height and width must be > 0 "
                    "(images is [batch, height, width, 3] uint8)"))
    return checks


def _check_pixels(hw: tf.Tensor, max_pixels: int | None, what) -> list[tf.Operation]:
    """Assertion that an image of size `hw [2]` has at most `max_pixels` pixels (the message
    starts with `what`, a string or a scalar string tensor)."""
    if max_pixels is None:
        return []
    pixels = tf.cast(hw[0], tf.int64) * tf.cast(hw[1], tf.int64)
    message = tf.strings.join([what, tf.strings.format(
        " is {} x {} = {} pixels (height x width), above the limit of "
        f"{max_pixels} pixels of this export; downscale it, or export with a larger "
        "`max_image_pixels`", (hw[0], hw[1], pixels))])
    return [tf.debugging.Assert(pixels <= max_pixels, [message])]


class BucketDetector:
    """The model on each bucket canvas (shared variables) and the in-graph choice among them.

    Call: `images [B, h, w, 3]` (one size, any real dtype, 0..255) -> dict of the model outputs
    (`OUTPUT_NAMES`, boxes in input pixels) plus `image_shape [B, 2]` float32 (h', w').
    """

    def __init__(self, model: MaskRCNN, buckets):
        self.config: MaskRCNNConfig = model.config
        self.buckets = list(buckets)
        # One tf.function per canvas, traced once and called by both signatures (the
        # SavedModel stores each canvas' graph once).
        self.functions = [self._inference_function(model, canvas) for canvas in self.buckets]

    @staticmethod
    def _inference_function(model: MaskRCNN, canvas):
        graph = canvas_inference_model(model, canvas)

        def inference(images, image_shape):
            outputs = graph({"images": images, "image_shape": image_shape}, training=False)
            return {name: outputs[name] for name in OUTPUT_NAMES}

        inference.__name__ = f"inference_{format_canvas(canvas)}"
        return tf.function(inference, autograph=False, input_signature=[
            tf.TensorSpec([None, *canvas, 3], tf.float32, name="images"),
            tf.TensorSpec([None, 2], tf.float32, name="image_shape")])

    def _branch(self, k: int, images: tf.Tensor):
        c, canvas, function = self.config, self.buckets[k], self.functions[k]
        spec = (tf.TensorSpec([*canvas, 3], tf.float32), tf.TensorSpec([2], tf.float32))

        def letterbox(image):
            padded, image_shape, _ = resize_and_pad_image(image, canvas, c.min_size, c.max_size)
            return padded, image_shape

        def run():
            padded, image_shape = tf.map_fn(letterbox, images, fn_output_signature=spec)
            result = dict(function(padded, image_shape))
            result["image_shape"] = image_shape
            return result
        return run

    def __call__(self, images: tf.Tensor, what: str) -> dict[str, tf.Tensor]:
        c = self.config
        resized = resized_shape_tf(tf.shape(images)[1:3], c.min_size, c.max_size)
        index = bucket_index_tf(resized, self.buckets, what)  # asserts that one holds it
        if len(self.buckets) == 1:
            with tf.control_dependencies([index]):
                return self._branch(0, tf.identity(images))()
        return tf.switch_case(index, [self._branch(k, images) for k in range(len(self.buckets))])

    def output_signature(self) -> dict[str, tf.TensorSpec]:
        """Per-image specs of the outputs (for `tf.map_fn`)."""
        d, p = self.config.detections_per_image, self.config.mask_resolution
        return {"detection_boxes": tf.TensorSpec([d, 4], tf.float32),
                "detection_scores": tf.TensorSpec([d], tf.float32),
                "detection_classes": tf.TensorSpec([d], tf.int32),
                "num_detections": tf.TensorSpec([], tf.int32),
                "detection_masks": tf.TensorSpec([d, p, p], tf.float32),
                "image_shape": tf.TensorSpec([2], tf.float32),
                "original_shape": tf.TensorSpec([2], tf.int32)}


class PerImageDetector(BucketDetector):
    """The shape-polymorphic inference graph (`MaskRCNN.dynamic_inference_function`): each
    image padded only to a multiple of 32 (`transform.canvas_for` with `canvas="per_image"`),
    exactly the Keras `predict_images` path, one graph for every size. Same call as
    `BucketDetector`."""

    def __init__(self, model: MaskRCNN):  # no super().__init__: it builds bucket graphs
        self.config = model.config
        self.buckets = []
        self.function = model.dynamic_inference_function()

    def __call__(self, images: tf.Tensor, what: str) -> dict[str, tf.Tensor]:
        c = self.config
        resized = resized_shape_tf(tf.shape(images)[1:3], c.min_size, c.max_size)
        canvas = (resized + SIZE_MULTIPLE - 1) // SIZE_MULTIPLE * SIZE_MULTIPLE
        image_shape = tf.cast(resized, tf.float32)

        def letterbox(image):
            image, _ = resize_image_tf(image, c.min_size, c.max_size)
            return tf.pad(image, [[0, canvas[0] - resized[0]], [0, canvas[1] - resized[1]],
                                  [0, 0]])

        padded = tf.map_fn(letterbox, images,
                           fn_output_signature=tf.TensorSpec([None, None, 3], tf.float32))
        image_shape = tf.tile(image_shape[None], [tf.shape(images)[0], 1])
        outputs = self.function({"images": padded, "image_shape": image_shape})
        result = {name: outputs[name] for name in OUTPUT_NAMES}
        result["image_shape"] = image_shape
        return result


def make_detector(model: MaskRCNN, buckets) -> BucketDetector:
    """`PerImageDetector` for the spec "per_image", else a `BucketDetector` on the canvases of
    the spec (`export.buckets.parse_buckets`)."""
    if isinstance(buckets, str) and buckets.strip().lower() == PER_IMAGE:
        return PerImageDetector(model)
    return BucketDetector(model, parse_buckets(buckets, model.config.min_size,
                                               model.config.max_size))


def _decode(data, index, max_pixels: int | None):
    """Encoded image (scalar string) -> uint8 [h, w, 3], checked (not empty, pixel limit)."""
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    hw = tf.shape(image)[:2]
    what = tf.strings.format(SERVING_BYTES + ": image_bytes[{}]", (index,))
    message = tf.strings.join([what, ": empty image: height and width must be > 0"])
    checks = [tf.debugging.Assert(tf.reduce_min(hw) > 0, [message])]
    checks += _check_pixels(hw, max_pixels, what)  # the decoded size too
    with tf.control_dependencies(checks):
        return tf.identity(image)


def _to_original_pixels(boxes, image_shape, original_shape):
    """boxes [B, D, 4] input pixels -> original pixels (`transform.boxes_to_original_tf`: the
    per-axis inverse map, clipped to the image); image_shape [B, 2], original_shape [B, 2]."""
    return boxes_to_original_tf(boxes, image_shape[:, None, :], original_shape[:, None, :])


def _full_image_masks(masks, boxes, original_shape, threshold: float):
    """masks [B, D, P, P], boxes [B, D, 4] original pixels -> [B, D, Hmax, Wmax] uint8."""
    batch, num = tf.shape(masks)[0], tf.shape(masks)[1]
    size = tf.reduce_max(original_shape, axis=0)  # (Hmax, Wmax)
    pasted = paste_masks_tf(
        tf.reshape(masks, [-1, masks.shape[2], masks.shape[3]]), tf.reshape(boxes, [-1, 4]),
        size, threshold=threshold)
    pasted = tf.reshape(pasted, [batch, num, size[0], size[1]])
    rows = tf.range(size[0])[None, :, None] < original_shape[:, 0, None, None]
    cols = tf.range(size[1])[None, None, :] < original_shape[:, 1, None, None]
    return pasted * tf.cast(rows & cols, tf.uint8)[:, None]


def _finish(outputs, original_shape, config: MaskRCNNConfig, full_image_masks: bool):
    """Model outputs (input pixels) -> the signature's outputs (original pixels)."""
    boxes = _to_original_pixels(outputs["detection_boxes"], outputs["image_shape"],
                                original_shape)
    result = {
        "detection_boxes": boxes,
        "detection_scores": outputs["detection_scores"],
        "detection_classes": outputs["detection_classes"],
        "num_detections": outputs["num_detections"],
        "detection_masks": outputs["detection_masks"],
        "original_shape": original_shape,
    }
    if full_image_masks:
        result["detection_full_masks"] = _full_image_masks(
            outputs["detection_masks"], boxes, original_shape, config.mask_threshold)
    return result


# --------------------------------------------------------------------------------- module
def build_serving_module(
    model: MaskRCNN, full_image_masks: bool = False, buckets=DEFAULT_BUCKETS,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> tuple[tf.Module, dict[str, tf.types.experimental.ConcreteFunction]]:
    """The module to save (it holds the model's variables) and the concrete functions of the
    `serving_default` and `serving_bytes` signatures (module doc).

    `model` must use the "gather" RoIAlign (`export_ready_model`). `buckets`: a spec of
    `export.buckets.parse_buckets` ("auto", "square", "HxW,...") or a list of (H, W).
    The tf.functions are not attributes of the module: `tf.saved_model.save` would trace them
    once more.
    """
    config = require_portable(model).config
    max_pixels = check_max_image_pixels(max_image_pixels)
    detector = make_detector(model, buckets)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
                 autograph=False)
    def serve_images(images):
        checks = _check_batch(images, SERVING_DEFAULT)
        checks += _check_pixels(tf.shape(images)[1:3], max_pixels,
                                f"{SERVING_DEFAULT}: each image")
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        shape = tf.shape(images)
        original_shape = tf.tile(shape[None, 1:3], [shape[0], 1])
        outputs = detector(images, f"{SERVING_DEFAULT}: images")
        return _finish(outputs, original_shape, config, full_image_masks)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
                 autograph=False)
    def serve_bytes(image_bytes):
        checks = _check_batch(image_bytes, SERVING_BYTES)
        # Every header is read and checked before the first image is decoded.
        checks += check_encoded_images(image_bytes, max_pixels, SERVING_BYTES)
        with tf.control_dependencies(checks):
            image_bytes = tf.identity(image_bytes)

        def detect_one(args):
            index, data = args
            image = _decode(data, index, max_pixels)
            what = tf.strings.format(SERVING_BYTES + ": image_bytes[{}]", (index,))
            outputs = detector(image[None], what)
            result = {name: value[0] for name, value in outputs.items()}
            result["original_shape"] = tf.shape(image)[:2]
            return result

        # One image at a time (each on its own canvas; one decoded image in memory at once).
        outputs = tf.map_fn(detect_one, (tf.range(tf.shape(image_bytes)[0]), image_bytes),
                            fn_output_signature=detector.output_signature(),
                            parallel_iterations=1)
        return _finish(outputs, outputs["original_shape"], config, full_image_masks)

    module = tf.Module(name="keras_maskrcnn_serving")
    module.model_variables = model_variables(model)
    signatures = {SERVING_DEFAULT: serve_images.get_concrete_function(),
                  SERVING_BYTES: serve_bytes.get_concrete_function()}
    return module, signatures


def export_saved_model(
    model_or_dir: MaskRCNN | str | Path, output: str | Path, full_image_masks: bool = False,
    buckets=DEFAULT_BUCKETS, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    precision: str = "float32",
) -> Path:
    """Writes a SavedModel for TF Serving with the `serving_default` and `serving_bytes`
    signatures (module doc); `assets.extra/config.json` keeps the model's config and
    `assets.extra/export.json` the options below.

    Args:
        model_or_dir: a `MaskRCNN` or a model directory; exported with the pure-TF RoIAlign.
        output: the SavedModel directory (TF Serving wants `<model_base_path>/<version>/`).
        full_image_masks: also output `detection_full_masks [B, D, Hmax, Wmax]` uint8.
        buckets: the canvases (`export.buckets.parse_buckets`): "auto" (default), "square",
            "HxW,HxW,..." or a list of (H, W); or "per_image": one shape-polymorphic graph,
            each image padded only to a multiple of 32 (the Keras per-image path exactly).
        max_image_pixels: images with more pixels are refused (None: no limit).
        precision: "float32" (default), "bfloat16" or "auto" (`export.precision`).

    Returns:
        The SavedModel directory.
    """
    if not isinstance(full_image_masks, bool):
        raise TypeError(f"full_image_masks must be a bool, got {full_image_masks!r}")
    require_replaceable_folder(output, "saved_model.pb", "SavedModel")
    max_pixels = check_max_image_pixels(max_image_pixels)
    model = export_ready_model(model_or_dir)
    per_image = isinstance(buckets, str) and buckets.strip().lower() == PER_IMAGE
    if per_image:
        canvases = PER_IMAGE
    else:
        canvases = parse_buckets(buckets, model.config.min_size, model.config.max_size)
        missing = missing_coverage(canvases, model.config.min_size, model.config.max_size)
        if missing:
            logger.warning("export: no bucket holds %s: images whose resized size needs it "
                           "are refused (InvalidArgumentError)",
                           ", ".join(map(format_canvas, missing)))
    model = with_precision(model, precision)
    module, signatures = build_serving_module(model, full_image_masks, canvases, max_pixels)
    metadata = {"buckets": PER_IMAGE if per_image else [list(c) for c in canvases],
                "max_image_pixels": max_pixels,
                "precision": model_precision(model), "min_size": model.config.min_size,
                "max_size": model.config.max_size, "full_image_masks": full_image_masks,
                "signatures": [SERVING_DEFAULT, SERVING_BYTES]}
    output = Path(output)
    with atomic_path(output) as tmp:  # written aside, then renamed over `output`
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        model.config.to_json(extra / CONFIG_FILE)
        (extra / EXPORT_METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return output
