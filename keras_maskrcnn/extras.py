"""Optional dependencies: which extra brings which module, and the one-line refusal when absent.

| extra | brings | enables |
|---|---|---|
| `onnx` | tf2onnx, onnx, onnxruntime | `export --format onnx` and running the .onnx |
| `parity` | torch, torchvision | reading torchvision `.pth` files (`convert`); the parity tests |
| `litert` | ai-edge-litert | the LiteRT interpreter of `examples/tflite_predict.py` |
| `plots` | matplotlib | PR curves drawn by matplotlib (Pillow draws them without it) |
| `openvino` | openvino | `export --format openvino` |
| `test` | pytest, ruff, and the above but torch and matplotlib | the test suite |

The core install (`pip install -e .`) trains, evaluates, predicts, writes TensorBoard logs and
exports SavedModel and TFLite.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def install_hint(extra: str) -> str:
    """The command that installs `extra` from a checkout, e.g. `pip install -e ".[onnx]"`."""
    return f'pip install -e ".[{extra}]"'


def require(module: str, extra: str, what: str) -> ModuleType:
    """Imports `module`, or raises `MissingExtraError` ("WHAT needs MODULE: pip install ...")."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{what} needs {module}: {install_hint(extra)}") from err


def check_installed(modules: tuple[str, ...], extra: str, what: str, otherwise: str = "") -> None:
    """Raises `MissingExtraError` for the first of `modules` that is not installed, without
    importing any (so a long job can refuse before it starts); `otherwise` names an
    alternative that needs no extra."""
    for module in modules:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):  # a blocked or half-installed module
            spec = None
        if spec is None:
            alternative = f" ({otherwise})" if otherwise else ""
            raise MissingExtraError(f"{what} needs {module}: {install_hint(extra)}{alternative}")
