"""Which Keras backend runs the model, and lazy access to TensorFlow for its fast paths.

The model body (`ops/`, `layers/`, `heads/`, `parts/`, `model.py`) is written in `keras.ops` and
runs on TensorFlow, JAX and PyTorch. A TensorFlow-only fast path (the compiled RoIAlign op,
`tf.image.non_max_suppression_padded`, the tf.data pipeline, exporters) imports TensorFlow inside
the function that uses it, through `tensorflow()`, so that importing the package with another
backend never imports TensorFlow.
"""

from __future__ import annotations

import importlib
import os
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


# XLA:CPU flags the package sets for JAX, unless XLA_FLAGS already names them. jaxlib 0.10's
# YNNPACK fusions run this model's convolution gradients about 2x slower than XLA's Eigen
# convolutions (`jax.jit(jax.grad)` of the R50-FPN losses at 256 x 256 on 2 cores: 6.8 s with
# them, 4.0 s without). Only for the jaxlib versions measured: XLA aborts on a flag it does
# not know.
JAX_CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": ""}
JAX_CPU_FLAGS_JAXLIB = ("0.10.",)


def tune_jax_cpu() -> list[str]:
    """Adds `JAX_CPU_FLAGS` to XLA_FLAGS (JAX backend, measured jaxlib, flag not set by the
    user, KERAS_MASKRCNN_JAX_CPU_FLAGS not "0"); call before JAX creates its devices. Returns
    the flags added."""
    if name() != "jax" or os.environ.get("KERAS_MASKRCNN_JAX_CPU_FLAGS") == "0":
        return []
    try:
        from importlib.metadata import version

        if not version("jaxlib").startswith(JAX_CPU_FLAGS_JAXLIB):
            return []
    except Exception:  # no jaxlib metadata: leave XLA as it is
        return []
    current = os.environ.get("XLA_FLAGS", "")
    added = [f"--{flag}={value}" for flag, value in JAX_CPU_FLAGS.items() if flag not in current]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
