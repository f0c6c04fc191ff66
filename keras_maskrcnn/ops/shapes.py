"""Sizes for reshapes in the ported layers: the graph TensorFlow had before the port.

Internal helper of `layers/` and `heads/`.
"""

from __future__ import annotations

from typing import Any

from keras_maskrcnn import backend


def run_time_dims(x: Any, count: int) -> tuple:
    """The first `count` sizes of `x` for a reshape.

    On TensorFlow run-time sizes (`tf.shape(x)[i]`) even where the static size is known, as the
    layers computed them before the port to `keras.ops`: exported graphs keep their Shape ->
    Reshape structure (OpenVINO's transpose sinking fails on the mask selection's Gather when the
    mask head's reshape is constant). On JAX and PyTorch static Python ints.
    """
    if backend.is_tensorflow():
        shape = backend.tensorflow().shape(x)
        return tuple(shape[i] for i in range(count))
    return tuple(backend.static_dim(x, i) for i in range(count))
