"""Anchor boxes for a feature pyramid (numpy, computed once when the model is built).

Anchors are ``(y1, x1, y2, x2)`` float32 in input pixels. Levels are concatenated in level
order; within a level anchors are location-major (row-major over the feature grid: y, then
x), then one anchor per aspect ratio in the order given. This is the order of a
``[B, Hl, Wl, A * 4]`` head output reshaped to ``[B, Hl * Wl * A, 4]``.

For a size s and ratio r (= height / width) the anchor has h = s * sqrt(r), w = s / sqrt(r).
The cell (i, j) of a level with stride t is centred at ((i + offset) * t, (j + offset) * t).

torchvision (`AnchorGenerator`) rounds the zero-centred base anchors to integers
(``round_base=True``; round half to even, before adding the shifts) and takes the stride of
a level as ``image_size // feature_size`` per axis (``stride_from_grid=True``): that differs
from the nominal stride only when the image size is not divisible by it, e.g. P6 (stride 64)
of an 800-pixel side has 13 cells and a torchvision stride of 61. Detectron2
(`DefaultAnchorGenerator`) uses neither: unrounded base anchors and nominal strides.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
from keras import ops

DEFAULT_STRIDES = (4, 8, 16, 32, 64)
DEFAULT_SIZES = (32, 64, 128, 256, 512)
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = image_size
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`image_size` must be (height, width) of two positive ints, got {image_size!r}"
        ) from err
    if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
        raise ValueError(
            f"`image_size` must be (height, width) of two positive ints, got {image_size!r}"
        )
    return int(height), int(width)


def _check_strides(strides: Sequence[int]) -> tuple[int, ...]:
    if isinstance(strides, (str, bytes)) or not isinstance(strides, Sequence) or not strides:
        raise ValueError(
            f"`strides` must be a non-empty sequence of positive ints, got {strides!r}"
        )
    if not all(_is_int(s) and s > 0 for s in strides):
        raise ValueError(
            f"`strides` must be a non-empty sequence of positive ints, got {strides!r}"
        )
    return tuple(int(s) for s in strides)


def _check_positive_reals(values: Sequence[float], name: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(
            f"`{name}` must be a non-empty sequence of positive numbers, got {values!r}"
        )
    if not all(_is_real(v) and math.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            f"`{name}` must be a non-empty sequence of positive numbers, got {values!r}"
        )
    return tuple(float(v) for v in values)


def feature_sizes(
    image_size: Sequence[int], strides: Sequence[int] = DEFAULT_STRIDES
) -> list[tuple[int, int]]:
    """Feature-map sizes of the pyramid levels.

    Args:
        image_size: (height, width) of the input canvas in pixels, positive ints.
        strides: stride of each level in pixels, positive ints.

    Returns:
        One (ceil(height / stride), ceil(width / stride)) per level.
    """
    height, width = _check_image_size(image_size)
    return [(-(-height // s), -(-width // s)) for s in _check_strides(strides)]


def num_anchors_per_location(aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS) -> int:
    """Number of anchors A at each feature-map location (one size per level)."""
    return len(_check_positive_reals(aspect_ratios, "aspect_ratios"))


def base_anchors(
    size: float, aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS, round_base: bool = False
) -> np.ndarray:
    """Zero-centred anchors of one size, one per aspect ratio.

    Args:
        size: anchor size in pixels (sqrt of the area), positive.
        aspect_ratios: height / width ratios, positive.
        round_base: round the corners to integers (np.round, half to even) like torchvision.

    Returns:
        `[A, 4]` float32 (-h/2, -w/2, h/2, w/2) with h = size * sqrt(r), w = size / sqrt(r).
    """
    (size,) = _check_positive_reals([size], "size")
    ratios = np.asarray(_check_positive_reals(aspect_ratios, "aspect_ratios"), np.float64)
    half_h = 0.5 * size * np.sqrt(ratios)
    half_w = 0.5 * size / np.sqrt(ratios)
    anchors = np.stack([-half_h, -half_w, half_h, half_w], axis=1)
    if round_base:
        anchors = np.round(anchors)
    return anchors.astype(np.float32)


def anchors_per_level(
    image_size: Sequence[int],
    strides: Sequence[int] = DEFAULT_STRIDES,
    sizes: Sequence[float] = DEFAULT_SIZES,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
    offset: float = 0.0,
    round_base: bool = False,
    stride_from_grid: bool = False,
) -> list[np.ndarray]:
    """Anchors of each pyramid level.

    Args:
        image_size: (height, width) of the input canvas in pixels, positive ints.
        strides: stride of each level in pixels, positive ints.
        sizes: anchor size of each level in pixels (one per level).
        aspect_ratios: height / width ratios, the same at every level.
        offset: cell-centre offset in units of the stride (0 for torchvision / Detectron2).
        round_base: round the zero-centred base anchors to integers before shifting them
            (torchvision).
        stride_from_grid: shift by `image_size // feature_size` per axis instead of the
            nominal stride (torchvision's rule; equal unless the size is not divisible).

    Returns:
        One `[Hl * Wl * A, 4]` float32 array per level, (y1, x1, y2, x2) in input pixels,
        location-major (y, then x), then aspect ratio.
    """
    strides = _check_strides(strides)
    sizes = _check_positive_reals(sizes, "sizes")
    if len(sizes) != len(strides):
        raise ValueError(
            f"`sizes` and `strides` must have one entry per level, got {len(sizes)} sizes and "
            f"{len(strides)} strides"
        )
    if not (_is_real(offset) and math.isfinite(offset)):
        raise ValueError(f"`offset` must be a finite number, got {offset!r}")
    height, width = _check_image_size(image_size)
    levels = []
    for stride, size, (grid_h, grid_w) in zip(
        strides, sizes, feature_sizes(image_size, strides), strict=True
    ):
        stride_y, stride_x = (stride, stride)
        if stride_from_grid:
            stride_y, stride_x = height // grid_h, width // grid_w
        centre_y = (np.arange(grid_h, dtype=np.float64) + offset) * stride_y
        centre_x = (np.arange(grid_w, dtype=np.float64) + offset) * stride_x
        cy, cx = np.meshgrid(centre_y, centre_x, indexing="ij")
        shifts = np.stack([cy, cx, cy, cx], axis=-1).reshape(-1, 1, 4)
        base = base_anchors(size, aspect_ratios, round_base).astype(np.float64)
        levels.append((shifts + base[None]).reshape(-1, 4).astype(np.float32))
    return levels


def generate_anchors(
    image_size: Sequence[int],
    strides: Sequence[int] = DEFAULT_STRIDES,
    sizes: Sequence[float] = DEFAULT_SIZES,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
    offset: float = 0.0,
    round_base: bool = False,
    stride_from_grid: bool = False,
) -> np.ndarray:
    """Anchors of all pyramid levels, concatenated in level order.

    Same arguments as `anchors_per_level`.

    Returns:
        `[N, 4]` float32 (y1, x1, y2, x2) in input pixels,
        N = sum over levels of ceil(H / stride) * ceil(W / stride) * len(aspect_ratios).
    """
    levels = anchors_per_level(
        image_size, strides, sizes, aspect_ratios, offset, round_base, stride_from_grid
    )
    return np.concatenate(levels, axis=0)


def generate_anchors_tf(
    height,
    width,
    strides: Sequence[int] = DEFAULT_STRIDES,
    sizes: Sequence[float] = DEFAULT_SIZES,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
    offset: float = 0.0,
    round_base: bool = False,
    stride_from_grid: bool = False,
) -> tuple:
    """`generate_anchors` for a canvas size known only when the graph runs (TensorFlow's
    shape-polymorphic inference graph); the same float64 arithmetic, so the anchors are
    bit-identical there.

    Written in `keras.ops`; only TensorFlow calls it (JAX and PyTorch always know the canvas
    size, so `AnchorGenerator` takes the numpy anchors; JAX without x64 would compute in float32).

    Args:
        height, width: int32 scalar tensors, the canvas size in pixels.
        Others as `anchors_per_level`.

    Returns:
        anchors `[N, 4]` float32 (y1, x1, y2, x2) input pixels, level order as
        `generate_anchors`; level_sizes `[L]` int32, the anchor count of each level.
    """
    strides = _check_strides(strides)
    sizes = _check_positive_reals(sizes, "sizes")
    height = ops.cast(height, "int32")
    width = ops.cast(width, "int32")
    levels, counts = [], []
    for stride, size in zip(strides, sizes, strict=True):
        grid_h = ops.floor_divide(height + stride - 1, stride)
        grid_w = ops.floor_divide(width + stride - 1, stride)
        if stride_from_grid:
            stride_y = ops.cast(ops.floor_divide(height, grid_h), "float64")
            stride_x = ops.cast(ops.floor_divide(width, grid_w), "float64")
        else:
            stride_y = stride_x = ops.convert_to_tensor(float(stride), "float64")
        centre_y = (ops.cast(ops.arange(grid_h, dtype="int32"), "float64") + offset) * stride_y
        centre_x = (ops.cast(ops.arange(grid_w, dtype="int32"), "float64") + offset) * stride_x
        cy, cx = ops.meshgrid(centre_y, centre_x, indexing="ij")
        shifts = ops.reshape(ops.stack([cy, cx, cy, cx], axis=-1), [-1, 1, 4])
        base = ops.convert_to_tensor(base_anchors(size, aspect_ratios, round_base).astype(np.float64))
        levels.append(ops.cast(ops.reshape(shifts + base[None], [-1, 4]), "float32"))
        counts.append(grid_h * grid_w * len(aspect_ratios))
    return ops.concatenate(levels, axis=0), ops.stack(counts)
