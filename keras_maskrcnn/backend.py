"""Which Keras backend runs the model, and lazy access to TensorFlow for its fast paths.

The model body (`ops/`, `layers/`, `heads/`, `parts/`, `model.py`) is written in `keras.ops` and
runs on TensorFlow, JAX and PyTorch. A TensorFlow-only fast path (the compiled RoIAlign op,
`tf.image.non_max_suppression_padded`, the tf.data pipeline, exporters) imports TensorFlow inside
the function that uses it, through `tensorflow()`, so that importing the package with another
backend never imports TensorFlow.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import keras

BACKENDS = ("tensorflow", "jax", "torch")


def name() -> str:
    """The Keras backend in use: "tensorflow", "jax" or "torch"."""
    return keras.backend.backend()


def is_tensorflow() -> bool:
    """True when Keras runs on TensorFlow (the TensorFlow fast paths apply)."""
    return name() == "tensorflow"


def tensorflow() -> ModuleType:
    """The `tensorflow` module, imported on first use (TensorFlow-only code paths)."""
    return importlib.import_module("tensorflow")


def static_dim(x, axis: int):
    """`x.shape[axis]` as a Python int when known at trace time, else the run-time size (on
    JAX, while Keras infers output shapes, a symbolic dimension: usable in reshapes)."""
    dim = x.shape[axis]
    if dim is None:
        return keras.ops.shape(x)[axis]
    try:
        return int(dim)
    except Exception:  # a JAX symbolic dimension (shape polymorphism) has no int value
        return dim


class LazyModule(ModuleType):
    """A module imported on first attribute access: `tf = LazyModule("tensorflow")` at the top
    of a module whose TensorFlow-only functions (tf.data, exporters) sit beside portable ones,
    so that importing it on another backend does not import TensorFlow."""

    def __init__(self, module_name: str) -> None:
        super().__init__(module_name)
        self._module_name = module_name

    def __getattr__(self, attribute: str):
        return getattr(importlib.import_module(self._module_name), attribute)


def lazy_tensorflow() -> ModuleType:
    """`tensorflow`, imported when first used (see `LazyModule`)."""
    return LazyModule("tensorflow")
