"""The backend-agnostic tests (`tests/portable/`) on every other Keras backend, each in its own
process with TensorFlow blocked: JAX and PyTorch (TensorFlow runs them in-process)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_portable_suite(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.fail(f"{backend} is not installed: pip install -e \".[test]\" installs it")
    env = {**os.environ, "KERAS_BACKEND": backend, "KERAS_MASKRCNN_BLOCK_TENSORFLOW": "1",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
         "-m", "not slow", "tests/portable"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
