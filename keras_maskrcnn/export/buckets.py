"""Canvas buckets of the exports: a few canvases chosen by aspect ratio instead of one square.

The Keras path pads each resized image only to a multiple of 32 (`config.canvas == "per_image"`,
`transform.canvas_for`), rebuilding the model per canvas; a graph for TF Serving or TFLite has
static canvases. A bucket set is a small list of canvases (H, W), multiples of 32; an image goes
into the smallest-area bucket that holds its resized size (the resize rule of the config,
`transform.compute_resized_shape`, unchanged), so that the common photo shapes run on exactly the
canvas the Keras path uses, and any other shape on a canvas at most a few rows larger.

Bucket specs (`export --buckets`):

- `"auto"` (default): for the config's `min_size` / `max_size`, the padded canvas of a square, a
  4:3 and a 3:2 photo, and the catch-all of each orientation (short side `min(min_size,
  max_size)`, long side `max_size`, each rounded up to 32: it holds every resized image of that
  orientation), landscape and portrait (transposed), duplicates dropped. At 800 / 1333:
  800x800, 800x1088, 1088x800, 800x1216, 1216x800, 800x1344, 1344x800.
- `"square"`: one square canvas of side `max(min_size, max_size)` rounded up to 32 (the
  pre-bucket export: 1344x1344 at 800 / 1333).
- `"HxW,HxW,..."`: these canvases. An image that fits none of them is rejected at run time with
  an InvalidArgumentError naming its resized size (`missing_coverage` tells at export time).
- `"per_image"` (SavedModel only, no bucket set): one shape-polymorphic graph, each image padded
  to its own multiple of 32.

`canvas_inference_model(model, canvas)` is the model's inference graph on another canvas that
shares every layer, and so every variable, with `model` (`builder.model_for_canvas`): all
buckets of one export hold the weights once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import keras
import tensorflow as tf

from keras_maskrcnn.builder import model_for_canvas
from keras_maskrcnn.transform import (
    SIZE_MULTIPLE,
    check_canvas_size,
    compute_resized_shape,
    padded_canvas_size,
    round_up_to_multiple,
)

BUCKET_SPECS = ("auto", "square", "per_image")
# Not a bucket set: the SavedModel's shape-polymorphic graph (export.saved_model).
PER_IMAGE = "per_image"
DEFAULT_BUCKETS = "auto"
# Photo shapes (height, width) of the auto buckets: square, 4:3 and 3:2 (landscape).
AUTO_PHOTO_SHAPES = ((480, 480), (480, 640), (400, 600))
_BUCKET_PATTERN = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")

Canvas = tuple[int, int]


def format_canvas(canvas: Canvas) -> str:
    """(800, 1088) -> "800x1088"."""
    return f"{int(canvas[0])}x{int(canvas[1])}"


def sort_buckets(buckets: Sequence[Canvas]) -> list[Canvas]:
    """Distinct canvases, smallest area first (ties: lower height first)."""
    unique = {(int(h), int(w)) for h, w in buckets}
    return sorted(unique, key=lambda hw: (hw[0] * hw[1], hw[0], hw[1]))


def catch_all_buckets(min_size: float, max_size: float) -> list[Canvas]:
    """The landscape and portrait canvases that hold every resized image of their orientation:
    the resize rule never makes the short side longer than `min(min_size, max_size)` nor the
    long side longer than `max_size`."""
    short = round_up_to_multiple(math.ceil(min(min_size, max_size)))
    long = round_up_to_multiple(math.ceil(max_size))
    return sort_buckets([(short, long), (long, short)])


def auto_buckets(min_size: float, max_size: float) -> list[Canvas]:
    """The `"auto"` bucket set (module doc) for a resize rule."""
    buckets = list(catch_all_buckets(min_size, max_size))
    for height, width in AUTO_PHOTO_SHAPES:
        h, w = padded_canvas_size(height, width, min_size, max_size)
        buckets += [(h, w), (w, h)]
    return sort_buckets(buckets)


def square_bucket(min_size: float, max_size: float) -> list[Canvas]:
    """The `"square"` bucket set: one square holding every resized image."""
    side = max(catch_all_buckets(min_size, max_size)[0])
    return [(side, side)]


def parse_buckets(spec, min_size: float, max_size: float) -> list[Canvas]:
    """The canvases of a bucket spec: "auto", "square", "HxW,HxW,..." or a sequence of (H, W).

    Returns:
        Distinct (H, W) int pairs, multiples of 32, smallest area first.
    """
    if spec is None:
        spec = DEFAULT_BUCKETS
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name == "auto":
            return auto_buckets(min_size, max_size)
        if name == "square":
            return square_bucket(min_size, max_size)
        if name == PER_IMAGE:
            raise ValueError("buckets 'per_image' is a shape-polymorphic graph, not a bucket set: "
                             "the SavedModel export takes it, TFLite needs static canvases")
        parts = [p for p in spec.split(",") if p.strip()]
        matches = [_BUCKET_PATTERN.match(p) for p in parts]
        if not parts or not all(matches):
            raise ValueError(
                f"buckets must be 'auto', 'square' or canvases 'HxW,HxW,...' (multiples of "
                f"{SIZE_MULTIPLE}), got {spec!r}")
        spec = [(int(m.group(1)), int(m.group(2))) for m in matches]
    if not isinstance(spec, Sequence) or not spec:
        raise ValueError(f"buckets must be a non-empty list of (height, width), got {spec!r}")
    canvases = []
    for canvas in spec:
        try:
            canvases.append(check_canvas_size(tuple(canvas), SIZE_MULTIPLE))
        except (TypeError, ValueError) as err:
            raise ValueError(f"bucket {canvas!r}: {err}") from None
    return sort_buckets(canvases)


def missing_coverage(buckets: Sequence[Canvas], min_size: float,
                     max_size: float) -> list[Canvas]:
    """The catch-all canvases (`catch_all_buckets`) that no bucket holds: empty when every
    image fits some bucket."""
    return [c for c in catch_all_buckets(min_size, max_size)
            if not any(h >= c[0] and w >= c[1] for h, w in buckets)]


def bucket_for(height: int, width: int, buckets: Sequence[Canvas], min_size: float,
               max_size: float) -> Canvas | None:
    """The bucket of an `height x width` original (None when none holds its resized size):
    the first of `buckets` (sorted by `sort_buckets`) that holds it."""
    h, w = compute_resized_shape(height, width, min_size, max_size)
    for canvas in sort_buckets(buckets):
        if canvas[0] >= h and canvas[1] >= w:
            return canvas
    return None


def bucket_index_tf(resized_hw: tf.Tensor, buckets: Sequence[Canvas],
                    what="image") -> tf.Tensor:
    """In-graph `bucket_for`: `resized_hw [2]` int32 (h', w') -> int32 index into `buckets`
    (sorted by `sort_buckets`); fails an assertion naming the size when no bucket holds it
    (the message starts with `what`, a string or a scalar string tensor)."""
    table = tf.constant([list(c) for c in buckets], tf.int32)  # [K, 2]
    fits = tf.reduce_all(table >= resized_hw[None, :], axis=1)
    names = ", ".join(format_canvas(c) for c in buckets)
    message = tf.strings.join([what, tf.strings.format(
        ": the resized image {} x {} (height x width) fits none of the canvases of this "
        "export (" + names + "; export's `buckets`)", (resized_hw[0], resized_hw[1]))])
    check = tf.debugging.Assert(tf.reduce_any(fits), [message])
    with tf.control_dependencies([check]):
        return tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)


# --------------------------------------------------------------------------------- graphs
def canvas_inference_model(model, canvas: Canvas) -> keras.Model:
    """`model.inference_graph()` on the canvas (H, W), sharing all layers and variables with it
    (`builder.model_for_canvas`: all buckets of one export hold the weights once)."""
    canvas = check_canvas_size(tuple(canvas), SIZE_MULTIPLE)
    return model_for_canvas(model, canvas).inference_graph()
