"""Backend-agnostic tests: they run in-process on the suite's backend (TensorFlow) and, through
`tests/test_backends.py`, in a subprocess on each other backend (`KERAS_BACKEND=jax|torch`)
with TensorFlow blocked (`KERAS_MASKRCNN_BLOCK_TENSORFLOW=1`), so that a stray TensorFlow
import in the model body fails here as it would on a machine without TensorFlow."""

from __future__ import annotations

import os

import pytest

if os.environ.get("KERAS_MASKRCNN_BLOCK_TENSORFLOW") == "1":
    from helpers import block_tensorflow

    block_tensorflow()


@pytest.fixture(scope="session")
def backend() -> str:
    import keras

    return keras.backend.backend()
