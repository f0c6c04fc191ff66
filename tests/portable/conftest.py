"""Backend-agnostic tests: they run in-process on the suite's backend (TensorFlow) and, through
`tests/test_backends.py`, in a subprocess on each other backend (`KERAS_BACKEND=jax|torch`)
with TensorFlow blocked (`KERAS_MASKRCNN_BLOCK_TENSORFLOW=1`), so that a stray TensorFlow
import in the model body fails here as it would on a machine without TensorFlow."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

import pytest


class _BlockedLoader(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError(f"{spec.name} is blocked: this test runs as on a machine without "
                          "TensorFlow")

    def exec_module(self, module):  # never reached: create_module raises
        raise ImportError(f"{module.__name__} is blocked")


class _BlockTensorFlow(importlib.abc.MetaPathFinder):
    """`import tensorflow` raises ImportError; `importlib.util.find_spec("tensorflow")` (which
    torch._dynamo calls for its trace rules) gets a spec without origin instead of an error."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "tensorflow" or fullname.startswith(("tensorflow.", "tf_keras")):
            return importlib.machinery.ModuleSpec(fullname, _BlockedLoader())
        return None


if os.environ.get("KERAS_MASKRCNN_BLOCK_TENSORFLOW") == "1":
    sys.meta_path.insert(0, _BlockTensorFlow())


@pytest.fixture(scope="session")
def backend() -> str:
    import keras

    return keras.backend.backend()
