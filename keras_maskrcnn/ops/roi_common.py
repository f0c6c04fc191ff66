"""Internal: the pieces shared by the RoI ops (`ops.roi_align_ops`, `ops.roi_pool_ops`,
`ops.poolers`, `ops.custom_roi_align`, `ops.masks`, `ops.paste`). Not part of the public API.

The names here have no leading underscore because they cross module boundaries; import them
only from inside `keras_maskrcnn.ops`. Every RoI op validates its arguments with these checks
(one error message per argument), flattens its feature maps with `flat_geometry` and picks its
RoIAlign implementation with `resolve_implementation`.

Written in `keras.ops` (TensorFlow, JAX, PyTorch). TensorFlow is imported only inside the
TensorFlow branches (`no_autograph`, `in_xla_context`, `scatter_add_rows`, the "auto" choice of
the compiled op), through `keras_maskrcnn.backend`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from types import ModuleType

import keras
from keras import ops

from keras_maskrcnn import backend

IMPLEMENTATIONS = ("auto", "gather", "static", "crop_and_resize", "custom_op")
TF_ONLY_IMPLEMENTATIONS = ("crop_and_resize", "custom_op")
CUSTOM_MODULE = "keras_maskrcnn.ops.custom_roi_align"
BUILD_HINT = "python -m keras_maskrcnn.ops.custom_roi_align --build"


def no_autograph(func: Callable) -> Callable:
    """On TensorFlow, marks `func` for AutoGraph not to convert: the RoI ops have no
    data-dependent Python control flow, and skipping the source conversion saves seconds of
    tracing per tf.function. Other backends get `func` unchanged."""
    if backend.is_tensorflow():
        return backend.tensorflow().autograph.experimental.do_not_convert(func)
    return func


def dtype_name(x) -> str:
    """The standardized dtype name of a tensor ("float32", "int32", ...)."""
    return keras.backend.standardize_dtype(x.dtype)


def tensor_rank(x) -> int | None:
    """The rank of `x`, None when unknown (TensorFlow graphs)."""
    try:
        return len(x.shape)
    except (TypeError, ValueError):
        return None


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


def check_features(features, name: str = "features"):
    """A floating-point tensor of rank 4 (NHWC) when the rank is known."""
    features = ops.convert_to_tensor(features)
    if "float" not in dtype_name(features):
        raise TypeError(f"`{name}` must be a floating-point tensor, got {dtype_name(features)}")
    if tensor_rank(features) not in (None, 4):
        raise ValueError(
            f"`{name}` must have shape [B, H, W, C] (NHWC), got {tuple(features.shape)}"
        )
    return features


def check_boxes(boxes, rank: int, name: str = "boxes"):
    """[N, 4] (rank 2) or [B, R, 4] (rank 3) boxes as float32, with the gradient stopped."""
    boxes = ops.convert_to_tensor(boxes)
    dtype = dtype_name(boxes)
    if not ("float" in dtype or "int" in dtype):
        raise TypeError(f"`{name}` must be a real-valued tensor, got dtype {dtype}")
    found = tensor_rank(boxes)
    if found is not None and (found != rank or boxes.shape[-1] not in (None, 4)):
        shape = "[N, 4]" if rank == 2 else "[B, R, 4]"
        raise ValueError(
            f"`{name}` must have shape {shape} (y1, x1, y2, x2), got {tuple(boxes.shape)}"
        )
    return ops.stop_gradient(ops.cast(boxes, "float32"))


def check_box_indices(box_indices):
    """[N] integer image indices as int32."""
    box_indices = ops.convert_to_tensor(box_indices)
    if "int" not in dtype_name(box_indices):
        raise TypeError(f"`box_indices` must be an integer tensor, got {dtype_name(box_indices)}")
    if tensor_rank(box_indices) not in (None, 1):
        raise ValueError(f"`box_indices` must have shape [N], got {tuple(box_indices.shape)}")
    return ops.cast(box_indices, "int32")


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


def axis_bilinear(points, used, size):
    """RoIAlign's border rules on one axis (torchvision's `bilinear_interpolate`): the (low,
    high) int32 rows of each sample point and their weights, shaped like `points`. `size` is
    the axis length, broadcastable to `points` (an int, a scalar or a per-RoI tensor). A point
    outside [-1, size] or not `used` gets weight 0."""
    inside = used & (points >= -1.0) & (points <= ops.cast(size, "float32"))
    coord = ops.maximum(ops.where(inside, points, 0.0), 0.0)
    low = ops.cast(ops.floor(coord), "int32")
    last = size - 1
    at_end = low >= last
    low = ops.where(at_end, last, low)
    high = ops.where(at_end, last, low + 1)
    frac = ops.where(at_end, 0.0, coord - ops.cast(low, "float32"))
    w_high = ops.where(inside, frac, 0.0)
    w_low = ops.where(inside, 1.0 - frac, 0.0)
    return low, high, w_low, w_high


def flat_geometry(features, box_indices):
    """Flattens `features` [B, H, W, C] to [B*H*W, C], with per-box base / H / W [N] int32."""
    height, width = backend.static_dim(features, 1), backend.static_dim(features, 2)
    flat = ops.reshape(features, (-1, backend.static_dim(features, 3)))
    ones = ops.ones_like(box_indices)
    return flat, box_indices * height * width, height * ones, width * ones


def gather_rows(table, index):
    """`table[index]`: rows of a [T, C] table at int32 indices of any shape -> [..., C]."""
    if backend.is_tensorflow():  # the plain gather (no negative-index fix-up: exported graphs)
        return backend.tensorflow().gather(table, index)
    if backend.name() == "jax":  # indexing gathers with clamped indices: no NaN-fill masking
        return table[index]
    return ops.take(table, index, axis=0)


def scatter_add_rows(target, index, updates):
    """`target` [T, ...] with `updates` [*index.shape, ...] added at rows `index` (int32, any
    shape; repeated rows accumulate). TensorFlow: one `tensor_scatter_nd_add`; elsewhere
    `target + ops.scatter(...)` (static shapes)."""
    if backend.is_tensorflow():
        return backend.tensorflow().tensor_scatter_nd_add(target, index[..., None], updates)
    rows = ops.reshape(index, (-1, 1))
    values = ops.reshape(updates, (-1, *target.shape[1:]))
    return target + ops.scatter(rows, values, tuple(target.shape))


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
    """True while TensorFlow traces for XLA (jit_compile=True), where a custom op cannot compile
    and the adaptive RoIAlign takes its static formulation. False on other backends (JAX and
    PyTorch take the static formulation by themselves, see `ops.roi_align_ops`)."""
    if not backend.is_tensorflow():
        return False
    try:
        from tensorflow.python.framework import ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # private API moved: assume no XLA
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph()))


def check_backend(implementation: str) -> str:
    """`implementation` unchanged when the Keras backend can run it; "crop_and_resize" and
    "custom_op" are TensorFlow ops (ValueError on JAX / PyTorch)."""
    if implementation in TF_ONLY_IMPLEMENTATIONS and not backend.is_tensorflow():
        raise ValueError(
            f"implementation={implementation!r} is TensorFlow-only and the Keras backend is "
            f"{backend.name()!r}; use implementation='auto' or 'gather'"
        )
    return implementation


def resolve_implementation(implementation: str, dtype) -> str:
    """Maps "auto" to "custom_op" when the compiled op is built and suits the call, else "gather".

    The op has CPU kernels only, for float32 / bfloat16 / float16, and XLA cannot compile it:
    "auto" keeps "gather" under jit_compile (where "gather" takes its static formulation for
    the adaptive ratio), when a GPU is visible, for other dtypes, and on JAX / PyTorch. Explicit
    choices, "static" included, are returned unchanged (the TensorFlow-only ones raise
    ValueError on another backend, see `check_backend`).
    """
    if implementation != "auto":
        return check_backend(implementation)
    if not backend.is_tensorflow():
        return "gather"
    if keras.backend.standardize_dtype(dtype) not in ("float32", "bfloat16", "float16"):
        return "gather"
    if in_xla_context() or backend.tensorflow().config.list_logical_devices("GPU"):
        return "gather"
    return "custom_op" if custom_module(required=False) is not None else "gather"
