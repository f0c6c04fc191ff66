"""Per-image gathers in `keras.ops` (TensorFlow, JAX, PyTorch): the portable form of
`tf.gather(x, indices, batch_dims=1)`.

The batch is flattened into the row axis and the indices offset by `image * N`, so that every
backend and exporter sees one plain gather on axis 0 (no `batch_dims`, which some converters
handle badly). B may be dynamic on TensorFlow.
"""

from __future__ import annotations

from typing import Any

from keras import ops

from keras_maskrcnn import backend

Tensor = Any


def batch_gather(x: Tensor, indices: Tensor) -> Tensor:
    """Rows of each image: `out[b, k] = x[b, indices[b, k]]`.

    Args:
        x: `[B, N, ...]` any dtype; the trailing dims must be static.
        indices: `[B, K]` integer, in `[0, N)` (not checked).

    Returns:
        `[B, K, ...]` with x's dtype.
    """
    batch = backend.static_dim(x, 0)
    num = backend.static_dim(x, 1)
    offsets = ops.arange(batch, dtype="int32")[:, None] * num
    flat = ops.reshape(x, (-1,) + tuple(x.shape[2:]))
    return ops.take(flat, ops.cast(indices, "int32") + offsets, axis=0)
