"""Backend-agnostic tests: they run in-process on the suite's backend (TensorFlow) and, through
`tests/test_backends.py`, in a subprocess on each other backend (`KERAS_BACKEND=jax|torch`)
with TensorFlow blocked (`KERAS_MASKRCNN_BLOCK_TENSORFLOW=1`), so that a stray TensorFlow
import in the model body fails here as it would on a machine without TensorFlow."""

from __future__ import annotations

import importlib.abc
import os
import sys

import pytest


class _BlockTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "tensorflow" or fullname.startswith(("tensorflow.", "tf_keras")):
            raise ImportError(f"{fullname} is blocked: this test runs as on a machine without "
                              "TensorFlow")
        return None


if os.environ.get("KERAS_MASKRCNN_BLOCK_TENSORFLOW") == "1":
    sys.meta_path.insert(0, _BlockTensorFlow())


@pytest.fixture(scope="session")
def backend() -> str:
    import keras

    return keras.backend.backend()
