"""The image transform between original and input pixels: the one definition of the resize
rule, the box maps both ways, the canvas, and the letterboxing of an image.

Training (`data.pipeline`), inference (`inference`) and the exports (`export.saved_model`,
`export.tflite`) all use these functions; nothing else restates the rule. This module imports only
numpy and tensorflow.

Frames (docs/CONVENTIONS.md): "original pixels" are the user's image, `h x w`; "input pixels" are
the resized image, `h' x w'`, placed top-left on the zero-padded model canvas `H x W` (multiples of
32). Boxes are `(y1, x1, y2, x2)` in continuous pixel coordinates (a pixel `i` spans `[i, i + 1)`).

Resize rule (torchvision `GeneralizedRCNNTransform`, eager; Detectron2 `ResizeShortestEdge`):
`scale = min(min_size / min(h, w), max_size / max(h, w))` in Python floats (float64), and
`(h', w') = (floor(h * scale), floor(w * scale))` (torchvision's `F.interpolate(scale_factor=scale,
recompute_scale_factor=True)` floors). The image is resized bilinearly with half-pixel centres and
no antialias (`tf.image.resize`), placed top-left on the canvas, and zero-padded bottom/right.

Box maps (torchvision's `resize_boxes`): because of the floor, the image is stretched by slightly
different factors per axis, `h' / h` and `w' / w`, not by `scale`. `tf.image.resize` with
half-pixel centres reads input pixel index `p` at original index `(p + 0.5) * h / h' - 0.5`, i.e.
the continuous coordinate `u` maps to `u * h' / h`. The box maps use exactly these factors:

- forward (original -> input): `y * h' / h`, `x * w' / w`, clipped to `[0, h'] x [0, w']`
  (`boxes_to_input`, `boxes_to_input_tf`; training ground truth);
- inverse (input -> original): `y * h / h'`, `x * w / w'`, clipped to `[0, h] x [0, w]`
  (`boxes_to_original`, `boxes_to_original_tf`; detections, in `inference.postprocess` and the
  SavedModel graph).

Each ratio is computed in float32 as `float32(to) / float32(from)` and multiplies the float32
boxes, so the NumPy and TF versions agree exactly. `scale` itself is bookkeeping only (the batch
key `scale`); no box is multiplied by it.

Mini masks do not depend on the resize: a box-relative point (`y1 + t * (y2 - y1)`, `t` in
[0, 1]) of the original box lands, under the forward map, at the same box-relative point of the
input box, and the resized image samples the original at that point too. So mini masks are
computed once from the original-resolution mask and the original box
(`data.pipeline.make_mini_masks`), and they are valid for the input-frame box unchanged.

Canvas: `config.canvas == "fixed"` uses `config.image_size`; `"per_image"` pads each resized image
only up to a multiple of 32 (`canvas_for`, torchvision's `size_divisible=32`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from keras_maskrcnn import backend

if TYPE_CHECKING:
    from keras_maskrcnn.config import MaskRCNNConfig

tf = backend.lazy_tensorflow()  # the tf.data and graph functions (`*_tf`) only
SIZE_MULTIPLE = 32


# --------------------------------------------------------------------------------- checks
def check_positive_int(name: str, value) -> int:
    """`value` as an int; TypeError unless an int (not bool), ValueError unless > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return int(value)


def check_canvas_size(canvas_size, multiple: int = 1) -> tuple[int, int]:
    """(H, W) as ints; ValueError unless a pair of positive multiples of `multiple`."""
    if not isinstance(canvas_size, (tuple, list)) or len(canvas_size) != 2:
        raise ValueError(f"canvas_size must be a (height, width) pair, got {canvas_size!r}")
    hw = tuple(check_positive_int("canvas_size", v) for v in canvas_size)
    if any(v % multiple for v in hw):
        raise ValueError(f"canvas_size must be multiples of {multiple}, got {hw}")
    return hw


def letterbox_canvas_size(input_size) -> tuple[int, int]:
    """A letterbox export's canvas (`export.tflite`, `export.onnx`, `export.openvino`): S (an
    S x S canvas) or (H, W) -> (H, W) ints; TypeError / ValueError naming `input_size` unless
    each side is a positive multiple of `SIZE_MULTIPLE`."""
    if isinstance(input_size, (tuple, list)):
        if len(input_size) != 2:
            raise ValueError(f"`input_size` must be S or (height, width), got {input_size!r}")
        return _canvas_side(input_size[0]), _canvas_side(input_size[1])
    side = _canvas_side(input_size)
    return side, side


def _canvas_side(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`input_size` must be an int or a (height, width) pair of ints, got "
                        f"{value!r}")
    if value <= 0 or value % SIZE_MULTIPLE:
        raise ValueError(f"`input_size` must be a positive multiple of {SIZE_MULTIPLE}, got "
                         f"{value}")
    return int(value)


def check_resize_sizes(min_size, max_size) -> None:
    """TypeError / ValueError unless `min_size` and `max_size` are positive numbers."""
    for name, value in (("min_size", min_size), ("max_size", max_size)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


# --------------------------------------------------------------------------------- resize rule
def compute_resize_scale(height: int, width: int, min_size: float, max_size: float) -> float:
    """Scale (input pixels / original pixels) that brings the short side to `min_size`, reduced
    so that the long side is at most `max_size`. Python (float64) arithmetic, as torchvision's
    eager transform computes it.

    Args:
        height, width: original image size (h, w) in pixels, > 0.
        min_size, max_size: target short side and cap on the long side, input pixels.

    Returns:
        The Python float `min(min_size / min(h, w), max_size / max(h, w))`.
    """
    check_resize_sizes(min_size, max_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be > 0, got {height} x {width}")
    short, long = float(min(height, width)), float(max(height, width))
    return min(float(min_size) / short, float(max_size) / long)


def compute_resized_shape(height: int, width: int, min_size: float,
                          max_size: float) -> tuple[int, int]:
    """(h', w') = (floor(height * scale), floor(width * scale)) ints, with
    `compute_resize_scale` (Python float64 arithmetic)."""
    scale = compute_resize_scale(height, width, min_size, max_size)
    return math.floor(height * scale), math.floor(width * scale)


def resize_scale_tf(hw, min_size, max_size) -> tf.Tensor:
    """TF twin of `compute_resize_scale`: `hw [2]` int (h, w) -> float64 scalar scale, the same
    float64 arithmetic. `min_size` / `max_size` may be numbers or scalar tensors."""
    hw = tf.cast(hw, tf.float64)
    short, long = tf.reduce_min(hw), tf.reduce_max(hw)
    return tf.minimum(tf.cast(min_size, tf.float64) / short, tf.cast(max_size, tf.float64) / long)


def resized_shape_tf(hw, min_size, max_size) -> tf.Tensor:
    """TF twin of `compute_resized_shape`: `hw [2]` int (h, w) -> `[2]` int32 (h', w'), floored
    in float64 (and at least 1, so that a tiny side never resizes to zero)."""
    scale = resize_scale_tf(hw, min_size, max_size)
    new_hw = tf.cast(tf.floor(tf.cast(hw, tf.float64) * scale), tf.int32)
    return tf.maximum(new_hw, 1)


def resize_image_tf(image, min_size, max_size) -> tuple[tf.Tensor, tf.Tensor]:
    """Resizes `image [h, w, 3]` (any numeric dtype, 0..255) by the resize rule.

    Returns:
        resized `[h', w', 3]` float32 (bilinear, half-pixel centres, no antialias) and the scale
        as a float32 scalar (input pixels / original pixels).
    """
    hw = tf.shape(image)[:2]
    scale = resize_scale_tf(hw, min_size, max_size)
    resized = tf.image.resize(tf.cast(image, tf.float32), resized_shape_tf(hw, min_size, max_size),
                              method="bilinear", antialias=False)
    return resized, tf.cast(scale, tf.float32)


# --------------------------------------------------------------------------------- canvas
def round_up_to_multiple(value: int, multiple: int = SIZE_MULTIPLE) -> int:
    """The smallest multiple of `multiple` that is >= `value` (ints)."""
    return -(-int(value) // multiple) * multiple


def padded_canvas_size(height: int, width: int, min_size: float, max_size: float,
                       multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """The smallest canvas (H, W), multiples of `multiple`, that holds the resized image of an
    `height x width` original (torchvision's per-image padding, `size_divisible`)."""
    return tuple(round_up_to_multiple(s, multiple)
                 for s in compute_resized_shape(height, width, min_size, max_size))


def canvas_for(height: int, width: int, config: MaskRCNNConfig) -> tuple[int, int]:
    """The canvas (H, W) ints of an `height x width` original under `config`:
    `config.image_size` when `config.canvas == "fixed"`, else (`"per_image"`) the resized image
    rounded up to multiples of 32 (`padded_canvas_size`)."""
    if config.canvas == "per_image":
        return padded_canvas_size(height, width, config.min_size, config.max_size)
    return tuple(int(v) for v in config.image_size)


def pad_to_canvas(image: tf.Tensor, canvas: tuple[int, int]) -> tf.Tensor:
    """Zero-pads `[h', w', C]` bottom/right to `[H, W, C]` (same dtype).

    A resized image larger than the canvas raises ValueError when its shape is static (eagerly,
    or in graphs of static-shape inputs) and fails a `tf.debugging` assertion otherwise.
    """
    hw = tf.shape(image)[:2]
    message = (f"the resized image does not fit the canvas {canvas} (height, width); enlarge "
               "canvas_size or lower min_size/max_size")
    static_hw = tf.get_static_value(hw)
    if static_hw is not None:
        h, w = (int(v) for v in static_hw)
        if h > canvas[0] or w > canvas[1]:
            raise ValueError(f"{message} (resized image {h} x {w})")
        checks = []
    else:
        checks = [tf.debugging.assert_less_equal(hw, tf.constant(canvas, tf.int32),
                                                 message=message)]
    with tf.control_dependencies(checks):
        padded = tf.pad(image, [[0, canvas[0] - hw[0]], [0, canvas[1] - hw[1]], [0, 0]])
    padded.set_shape([canvas[0], canvas[1], image.shape[-1]])
    return padded


def _check_image_tensor(image) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    rank = image.shape.rank
    if rank is not None and (rank != 3 or image.shape[-1] not in (3, None)):
        raise ValueError(f"image must be [height, width, 3], got shape {image.shape}")
    if not (image.dtype.is_integer or image.dtype.is_floating):
        raise TypeError(f"image must be uint8 or float, got {image.dtype.name}")
    return image


def resize_and_pad_image(
    image, canvas_size: tuple[int, int], min_size, max_size
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Resizes an image by the resize rule and zero-pads it onto the canvas.

    Works eagerly and inside `tf.function` / `tf.data` (then a too-small canvas fails a
    `tf.debugging` assertion instead of the eager ValueError).

    Args:
        image: `[h, w, 3]` uint8 or float RGB, 0..255.
        canvas_size: (H, W) ints.
        min_size, max_size: target short side and cap on the long side (numbers or scalar
            tensors).

    Returns:
        padded `[H, W, 3]` float32 0..255, image_shape `[2]` float32 (h', w') of the resized
        image, scale float32 scalar (input pixels / original pixels).
    """
    canvas = check_canvas_size(canvas_size)
    if not isinstance(min_size, tf.Tensor) and not isinstance(max_size, tf.Tensor):
        check_resize_sizes(min_size, max_size)
    image = _check_image_tensor(image)
    resized, scale = resize_image_tf(image, min_size, max_size)
    image_shape = tf.cast(tf.shape(resized)[:2], tf.float32)
    return pad_to_canvas(resized, canvas), image_shape, scale


def letterbox(image, canvas_size: tuple[int, int], min_size: float,
              max_size: float) -> dict[str, np.ndarray]:
    """One image's inference inputs as NumPy (`resize_and_pad_image`, run eagerly).

    Args:
        image: `[h, w, 3]` RGB (or `[h, w]` grayscale, repeated to 3 channels), uint8 or float
            0..255.
        canvas_size: (H, W) ints; min_size, max_size: the resize rule.

    Returns:
        dict: `images [H, W, 3]` float32, `image_shape [2]` float32 (h', w'), `scale []` float32
        (input / original pixels), `original_shape [2]` int32 (h, w).
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if not backend.is_tensorflow():
        return _letterbox_np(image, canvas_size, min_size, max_size)
    padded, image_shape, scale = resize_and_pad_image(image, canvas_size, min_size, max_size)
    return {
        "images": padded.numpy().astype(np.float32),
        "image_shape": image_shape.numpy().astype(np.float32),
        "scale": np.asarray(scale.numpy(), np.float32),
        "original_shape": np.array(image.shape[:2], np.int32),
    }


def _letterbox_np(image: np.ndarray, canvas_size, min_size: float,
                  max_size: float) -> dict[str, np.ndarray]:
    """`letterbox` in NumPy (JAX and PyTorch backends: no TensorFlow), the same resize rule
    and bilinear interpolation as `tf.image.resize`."""
    canvas = check_canvas_size(canvas_size)
    check_resize_sizes(min_size, max_size)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [height, width, 3], got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"image must be uint8 or float, got {image.dtype}")
    h, w = image.shape[:2]
    scale = min(float(min_size) / min(h, w), float(max_size) / max(h, w))
    new_h, new_w = max(int(math.floor(h * scale)), 1), max(int(math.floor(w * scale)), 1)
    if new_h > canvas[0] or new_w > canvas[1]:
        raise ValueError(f"the resized image does not fit the canvas {canvas} (height, width); "
                         "enlarge canvas_size or lower min_size/max_size (resized image "
                         f"{new_h} x {new_w})")
    padded = np.zeros((*canvas, 3), np.float32)
    padded[:new_h, :new_w] = resize_bilinear_np(image.astype(np.float32), (new_h, new_w))
    return {"images": padded, "image_shape": np.array([new_h, new_w], np.float32),
            "scale": np.asarray(scale, np.float32),
            "original_shape": np.array(image.shape[:2], np.int32)}


def _bilinear_axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower / upper source indices and weights of one axis, half-pixel centres (as
    `tf.image.resize` bilinear without antialiasing)."""
    ratio = np.float32(size_in / size_out)
    src = (np.arange(size_out, dtype=np.float32) + 0.5) * ratio - 0.5
    floor = np.floor(src)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(src), size_in - 1).astype(np.int64)
    return lower, upper, (src - floor).astype(np.float32)


def resize_bilinear_np(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`[h, w, C]` float32 -> `[H, W, C]` bilinear (half-pixel centres, no antialias)."""
    top, bottom, wy = _bilinear_axis(image.shape[0], size[0])
    left, right, wx = _bilinear_axis(image.shape[1], size[1])
    rows = image[top] + (image[bottom] - image[top]) * wy[:, None, None]
    return rows[:, left] + (rows[:, right] - rows[:, left]) * wx[None, :, None]


# --------------------------------------------------------------------------------- box maps
def _ratios_np(from_shape, to_shape) -> tuple[np.ndarray, np.ndarray]:
    from_shape = np.asarray(from_shape, np.float32)
    to_shape = np.asarray(to_shape, np.float32)
    ratio = to_shape / from_shape
    return np.concatenate([ratio, ratio], axis=-1), np.concatenate([to_shape, to_shape], axis=-1)


def _map_np(boxes, from_shape, to_shape) -> np.ndarray:
    ratio, limit = _ratios_np(from_shape, to_shape)
    mapped = np.asarray(boxes, np.float32) * ratio
    return np.minimum(np.maximum(mapped, np.float32(0.0)), limit).astype(np.float32)


def _map_tf(boxes, from_shape, to_shape) -> tf.Tensor:
    from_shape = tf.cast(from_shape, tf.float32)
    to_shape = tf.cast(to_shape, tf.float32)
    ratio = to_shape / from_shape
    ratio = tf.concat([ratio, ratio], axis=-1)
    limit = tf.concat([to_shape, to_shape], axis=-1)
    mapped = tf.cast(boxes, tf.float32) * ratio
    return tf.minimum(tf.maximum(mapped, 0.0), limit)


def boxes_to_input(boxes, original_shape, image_shape) -> np.ndarray:
    """Forward map, NumPy: boxes in original pixels -> input pixels, per axis
    (`y * h' / h`, `x * w' / w`), clipped to `[0, h'] x [0, w']`.

    Args:
        boxes: `[..., 4]` (y1, x1, y2, x2) float.
        original_shape: `[..., 2]` (h, w) of the original image, int or float.
        image_shape: `[..., 2]` (h', w') of the resized image, int or float.
        The shapes broadcast against the boxes' leading dimensions: `[2]` for the boxes of one
        image, `[B, 1, 2]` for boxes `[B, D, 4]`.

    Returns:
        `[..., 4]` float32 input pixels.
    """
    return _map_np(boxes, original_shape, image_shape)


def boxes_to_original(boxes, image_shape, original_shape) -> np.ndarray:
    """Inverse map, NumPy: boxes in input pixels -> original pixels, per axis
    (`y * h / h'`, `x * w / w'`), clipped to `[0, h] x [0, w]`.

    Args:
        boxes: `[..., 4]` (y1, x1, y2, x2) float.
        image_shape: `[..., 2]` (h', w') of the resized image, int or float.
        original_shape: `[..., 2]` (h, w) of the original image, int or float.
        The shapes broadcast against the boxes' leading dimensions: `[2]` for the boxes of one
        image, `[B, 1, 2]` for boxes `[B, D, 4]`.

    Returns:
        `[..., 4]` float32 original pixels.
    """
    return _map_np(boxes, image_shape, original_shape)


def boxes_to_input_tf(boxes, original_shape, image_shape) -> tf.Tensor:
    """Forward map, TF (graph-safe; equals `boxes_to_input` exactly): original -> input pixels.

    Args:
        boxes: `[..., 4]` (y1, x1, y2, x2) float.
        original_shape: `[..., 2]` (h, w) of the original image, int or float.
        image_shape: `[..., 2]` (h', w') of the resized image, int or float.
        The shapes broadcast against the boxes' leading dimensions: `[2]` for the boxes of one
        image, `[B, 1, 2]` for boxes `[B, D, 4]`.

    Returns:
        `[..., 4]` float32 tensor, input pixels.
    """
    return _map_tf(boxes, original_shape, image_shape)


def boxes_to_original_tf(boxes, image_shape, original_shape) -> tf.Tensor:
    """Inverse map, TF (graph-safe; equals `boxes_to_original` exactly): input -> original
    pixels.

    Args:
        boxes: `[..., 4]` (y1, x1, y2, x2) float.
        image_shape: `[..., 2]` (h', w') of the resized image, int or float.
        original_shape: `[..., 2]` (h, w) of the original image, int or float.
        The shapes broadcast against the boxes' leading dimensions: `[2]` for the boxes of one
        image, `[B, 1, 2]` for boxes `[B, D, 4]`.

    Returns:
        `[..., 4]` float32 tensor, original pixels.
    """
    return _map_tf(boxes, image_shape, original_shape)

