"""Internal: the pieces shared by the RoI ops (`ops.roi_align_ops`, `ops.roi_pool_ops`,
`ops.poolers`, `ops.custom_roi_align`, `ops.masks`). Not part of the public API.

The names here have no leading underscore because they cross module boundaries; import them
only from inside `keras_maskrcnn.ops`. Every RoI op validates its arguments with these checks
(one error message per argument), flattens its feature maps with `flat_geometry` and picks its
RoIAlign implementation with `resolve_implementation`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from types import ModuleType

import tensorflow as tf

IMPLEMENTATIONS = ("auto", "gather", "static", "crop_and_resize", "custom_op")
CUSTOM_MODULE = "keras_maskrcnn.ops.custom_roi_align"
BUILD_HINT = "python -m keras_maskrcnn.ops.custom_roi_align --build"

# No data-dependent Python control flow in the RoI ops: skipping AutoGraph's source conversion
# saves seconds of tracing per tf.function.
no_autograph = tf.autograph.experimental.do_not_convert


# --------------------------------------------------------------------------- argument checks


def pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    """Normalizes `output_size` (int or (ph, pw)) to a pair of positive ints.

    Raises:
        TypeError: not an int or a pair of numbers.
        ValueError: a value is not a positive integer.
    """
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        output_size = (output_size, output_size)
    try:
        ph, pw = (int(v) for v in output_size)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"`output_size` must be an int or a pair (ph, pw), got {output_size!r}"
        ) from err
    if ph <= 0 or pw <= 0 or (ph, pw) != tuple(output_size):
        raise ValueError(f"`output_size` must hold positive integers, got {output_size!r}")
    return ph, pw


def check_sampling_ratio(sampling_ratio: int) -> int:
    """An int >= 0 (0 = adaptive); TypeError / ValueError otherwise."""
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise TypeError(f"`sampling_ratio` must be an int >= 0, got {sampling_ratio!r}")
    if sampling_ratio < 0:
        raise ValueError(f"`sampling_ratio` must be >= 0 (0 = adaptive), got {sampling_ratio}")
    return sampling_ratio


def check_scale(spatial_scale: float) -> float:
    """A positive finite float; ValueError otherwise."""
    scale = float(spatial_scale)
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"`spatial_scale` must be a positive finite number, got {spatial_scale!r}")
    return scale


def check_features(features: tf.Tensor, name: str = "features") -> tf.Tensor:
    """A floating-point tensor of rank 4 (NHWC) when the rank is known."""
    features = tf.convert_to_tensor(features)
    if not features.dtype.is_floating:
        raise TypeError(f"`{name}` must be a floating-point tensor, got {features.dtype.name}")
    if features.shape.rank is not None and features.shape.rank != 4:
        raise ValueError(f"`{name}` must have shape [B, H, W, C] (NHWC), got {features.shape}")
    return features


def check_boxes(boxes: tf.Tensor, rank: int, name: str = "boxes") -> tf.Tensor:
    """[N, 4] (rank 2) or [B, R, 4] (rank 3) boxes as float32, with the gradient stopped."""
    boxes = tf.convert_to_tensor(boxes)
    if not (boxes.dtype.is_floating or boxes.dtype.is_integer):
        raise TypeError(f"`{name}` must be a real-valued tensor, got dtype {boxes.dtype.name}")
    if boxes.shape.rank is not None and (
        boxes.shape.rank != rank or boxes.shape[-1] not in (None, 4)
    ):
        shape = "[N, 4]" if rank == 2 else "[B, R, 4]"
        raise ValueError(f"`{name}` must have shape {shape} (y1, x1, y2, x2), got {boxes.shape}")
    return tf.stop_gradient(tf.cast(boxes, tf.float32))


def check_box_indices(box_indices: tf.Tensor) -> tf.Tensor:
    """[N] integer image indices as int32."""
    box_indices = tf.convert_to_tensor(box_indices)
    if not box_indices.dtype.is_integer:
        raise TypeError(f"`box_indices` must be an integer tensor, got {box_indices.dtype.name}")
    if box_indices.shape.rank is not None and box_indices.shape.rank != 1:
        raise ValueError(f"`box_indices` must have shape [N], got {box_indices.shape}")
    return tf.cast(box_indices, tf.int32)


def check_max_samples(max_samples: int | None, sampling_ratio: int) -> int | None:
    """None or a positive int (the adaptive ratio's optional per-axis cap); it needs
    sampling_ratio=0. TypeError / ValueError otherwise."""
    if max_samples is None:
        return None
    if isinstance(max_samples, bool) or not isinstance(max_samples, int):
        raise TypeError(f"`max_samples` must be None or an int >= 1, got {max_samples!r}")
    if max_samples < 1:
        raise ValueError(f"`max_samples` must be None or an int >= 1, got {max_samples}")
    if sampling_ratio != 0:
        raise ValueError(
            f"`max_samples` caps the adaptive ratio: it needs sampling_ratio=0, got "
            f"{sampling_ratio}"
        )
    return max_samples


def check_max_bin_size(max_bin_size: int | None) -> int | None:
    """None or a positive int (RoIPool's fixed window)."""
    if max_bin_size is None:
        return None
    if isinstance(max_bin_size, bool) or not isinstance(max_bin_size, int) or max_bin_size < 1:
        raise ValueError(f"`max_bin_size` must be None or a positive int, got {max_bin_size!r}")
    return max_bin_size


def check_implementation(implementation: str) -> str:
    """One of `IMPLEMENTATIONS`."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"`implementation` must be one of {IMPLEMENTATIONS}, got {implementation!r}"
        )
    return implementation


# --------------------------------------------------------------------------- geometry


def flat_geometry(features: tf.Tensor, box_indices: tf.Tensor):
    """Flattens `features` [B, H, W, C] to [B*H*W, C], with per-box base / H / W [N] int32."""
    shape = tf.shape(features, out_type=tf.int32)
    height, width = shape[1], shape[2]
    channels = features.shape[3] if features.shape[3] is not None else shape[3]
    flat = tf.reshape(features, [-1, channels])
    ones = tf.ones_like(box_indices)
    return flat, box_indices * height * width, height * ones, width * ones


# --------------------------------------------------------------------------- implementation


def custom_module(required: bool) -> ModuleType | None:
    """Returns the custom-op module if it imports and is built, else None (or raises)."""
    try:
        module = importlib.import_module(CUSTOM_MODULE)
    except ImportError as err:
        if required:
            raise RuntimeError(
                f"implementation='custom_op' needs {CUSTOM_MODULE}, which could not be "
                f"imported ({err}); build the op with `{BUILD_HINT}`"
            ) from err
        return None
    if not module.is_available():
        if required:
            raise RuntimeError(
                f"the RoIAlign custom op is not built or cannot be loaded; build it with "
                f"`{BUILD_HINT}`"
            )
        return None
    return module


def in_xla_context() -> bool:
    """True while tracing for XLA (jit_compile=True), where a custom op cannot compile and the
    adaptive RoIAlign takes its static formulation."""
    try:
        from tensorflow.python.framework import ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # private API moved: assume no XLA
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph()))


def resolve_implementation(implementation: str, dtype: tf.DType) -> str:
    """Maps "auto" to "custom_op" when the compiled op is built and suits the call, else "gather".

    The op has CPU kernels only, for float32 / bfloat16 / float16, and XLA cannot compile it:
    "auto" keeps "gather" under jit_compile (where "gather" takes its static formulation for
    the adaptive ratio), when a GPU is visible, or for other dtypes. Explicit choices,
    "static" included, are returned unchanged.
    """
    if implementation != "auto":
        return implementation
    if dtype not in (tf.float32, tf.bfloat16, tf.float16) or in_xla_context():
        return "gather"
    if tf.config.list_logical_devices("GPU"):
        return "gather"
    return "custom_op" if custom_module(required=False) is not None else "gather"
