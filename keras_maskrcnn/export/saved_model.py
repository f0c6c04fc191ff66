"""SavedModel export for TF Serving: raw images in, detections in original pixels out.

The exported `tf.Module` has two signatures; the resize rule (`keras_maskrcnn.transform`),
normalization, padding and anchors all run inside the graph, so a client sends plain pixels:

- `serving_default(images)`: `images [B, H, W, 3]` uint8 RGB, any H and W (one size per batch).
- `serving_bytes(image_bytes)`: `image_bytes [B]` tf.string, each an encoded JPEG / PNG / BMP /
  GIF (first frame); images may differ in size.

Outputs (dict, D = `config.detections_per_image`, rows past `num_detections` are zeros):
`detection_boxes [B, D, 4]` float32 (y1, x1, y2, x2) in original-image pixels (the inverse box
map `transform.boxes_to_original_tf`: per axis by original / resized size, clipped to the image,
as `inference.postprocess` does),
`detection_scores [B, D]` float32, `detection_classes [B, D]` int32 (1..K, 0 on padding),
`num_detections [B]` int32, `detection_masks [B, D, 28, 28]` float32 probabilities of the
detected class inside its box, `original_shape [B, 2]` int32 (h, w) of each input image, and
with `full_image_masks=True` `detection_full_masks [B, D, Hmax, Wmax]` uint8 {0, 1}: each mask
pasted into its image (`ops.masks.paste_masks_tf`, Detectron2 "exact", `>= mask_threshold`);
Hmax, Wmax are the largest height and width in the batch, image b fills the top-left
`original_shape[b]` block and is zero elsewhere.

Bad requests fail with an InvalidArgumentError naming the problem: the signature enforces dtype,
rank and the 3 channels; an empty batch or an empty image (height or width 0) fails a
`tf.debugging` assertion; undecodable bytes fail in `tf.io.decode_image`.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from keras_maskrcnn.atomic import atomic_path
from keras_maskrcnn.config import MaskRCNNConfig
from keras_maskrcnn.model import CONFIG_FILE, MaskRCNN, load_model_dir, read_model_config
from keras_maskrcnn.ops.masks import paste_masks_tf
from keras_maskrcnn.transform import boxes_to_original_tf, resize_and_pad_image

SERVING_DEFAULT = "serving_default"
SERVING_BYTES = "serving_bytes"
EXPORT_ROI_ALIGN = "gather"  # pure TF: no compiled custom op may end up in an export


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
        return model_or_dir.rebuilt(roi_align_implementation=EXPORT_ROI_ALIGN, **config_changes)
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
    return [w.value for w in model.inference_model.weights]


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


def _letterbox_fn(config: MaskRCNNConfig):
    """image [h, w, 3] -> (canvas [H, W, 3] float32, image_shape [2] float32, (h, w) int32)."""
    def letterbox(image):
        padded, image_shape, _ = resize_and_pad_image(
            image, config.image_size, config.min_size, config.max_size)
        return padded, image_shape, tf.shape(image)[:2]
    return letterbox


def _letterbox_signature(config: MaskRCNNConfig):
    h, w = config.image_size
    return (tf.TensorSpec([h, w, 3], tf.float32), tf.TensorSpec([2], tf.float32),
            tf.TensorSpec([2], tf.int32))


def _decode_fn(config: MaskRCNNConfig):
    """Encoded image (scalar string) -> the letterboxed canvas of `_letterbox_fn`."""
    letterbox = _letterbox_fn(config)

    def decode(data):
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        image = tf.ensure_shape(image, [None, None, 3])
        check = tf.debugging.assert_greater(
            tf.reduce_min(tf.shape(image)[:2]), 0,
            message=f"{SERVING_BYTES}: empty image: height and width must be > 0")
        with tf.control_dependencies([check]):
            image = tf.identity(image)
        return letterbox(image)
    return decode


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


def _detect(model: MaskRCNN, padded, image_shape, original_shape, full_image_masks: bool):
    outputs = model.inference_model({"images": padded, "image_shape": image_shape},
                                    training=False)
    boxes = _to_original_pixels(outputs["detection_boxes"], image_shape, original_shape)
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
            outputs["detection_masks"], boxes, original_shape, model.config.mask_threshold)
    return result


# --------------------------------------------------------------------------------- module
def build_serving_module(
    model: MaskRCNN, full_image_masks: bool = False,
) -> tuple[tf.Module, dict[str, tf.types.experimental.ConcreteFunction]]:
    """The module to save (it holds the model's variables) and the concrete functions of the
    `serving_default` and `serving_bytes` signatures (module doc).

    `model` must use the "gather" RoIAlign (`export_ready_model`). The tf.functions are not
    attributes of the module: `tf.saved_model.save` would trace them once more.
    """
    config = require_portable(model).config
    letterbox, decode = _letterbox_fn(config), _decode_fn(config)
    spec = _letterbox_signature(config)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
                 autograph=False)
    def serve_images(images):
        with tf.control_dependencies(_check_batch(images, SERVING_DEFAULT)):
            images = tf.identity(images)
        padded, image_shape, original_shape = tf.map_fn(
            letterbox, images, fn_output_signature=spec)
        return _detect(model, padded, image_shape, original_shape, full_image_masks)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
                 autograph=False)
    def serve_bytes(image_bytes):
        with tf.control_dependencies(_check_batch(image_bytes, SERVING_BYTES)):
            image_bytes = tf.identity(image_bytes)
        padded, image_shape, original_shape = tf.map_fn(
            decode, image_bytes, fn_output_signature=spec)
        return _detect(model, padded, image_shape, original_shape, full_image_masks)

    module = tf.Module(name="keras_maskrcnn_serving")
    module.model_variables = model_variables(model)
    signatures = {SERVING_DEFAULT: serve_images.get_concrete_function(),
                  SERVING_BYTES: serve_bytes.get_concrete_function()}
    return module, signatures


def export_saved_model(
    model_or_dir: MaskRCNN | str | Path, output: str | Path, full_image_masks: bool = False,
) -> Path:
    """Writes a SavedModel for TF Serving with the `serving_default` and `serving_bytes`
    signatures (module doc); `assets.extra/config.json` keeps the model's config.

    Args:
        model_or_dir: a `MaskRCNN` or a model directory; exported with the pure-TF RoIAlign.
        output: the SavedModel directory (TF Serving wants `<model_base_path>/<version>/`).
        full_image_masks: also output `detection_full_masks [B, D, Hmax, Wmax]` uint8.

    Returns:
        The SavedModel directory.
    """
    if not isinstance(full_image_masks, bool):
        raise TypeError(f"full_image_masks must be a bool, got {full_image_masks!r}")
    model = export_ready_model(model_or_dir)
    module, signatures = build_serving_module(model, full_image_masks)
    output = Path(output)
    with atomic_path(output) as tmp:  # written aside, then renamed over `output`
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        model.config.to_json(extra / CONFIG_FILE)
    return output
