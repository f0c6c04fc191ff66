"""Importing single modules of `keras_maskrcnn` on JAX / PyTorch while the package's
`__init__` files still import TensorFlow (issue 21: the package import is being made lazy).

`import_module("keras_maskrcnn.ops.nms")` is `importlib.import_module` when the package imports;
when it fails (TensorFlow blocked), the parent packages are registered as bare namespace modules
(their `__init__` not run) and the module itself is imported, so that a test still fails if THAT
module (or what it imports) needs TensorFlow. Remove once `import keras_maskrcnn` works everywhere.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        if "blocked" not in str(err):
            raise
    parts = name.split(".")
    for depth in range(1, len(parts)):
        package = ".".join(parts[:depth])
        if package in sys.modules:
            continue
        stub = types.ModuleType(package)
        stub.__path__ = [str(ROOT.joinpath(*parts[:depth]))]
        sys.modules[package] = stub
        if depth > 1:
            setattr(sys.modules[".".join(parts[:depth - 1])], parts[depth - 1], stub)
    return importlib.import_module(name)
