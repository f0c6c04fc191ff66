"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers (pyproject's addopts: one per core) each take one thread, as do the
    # processes they start: two workers of two threads each on two cores run slower than one.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):  # inter-op: left (collectives)
        os.environ.setdefault(name, threads)

DATA_DIR = Path(__file__).parent / "data"
COCO10_DIR = DATA_DIR / "coco-val2017-10"


@pytest.fixture(scope="session")
def coco10_dir() -> Path:
    """Ten real COCO val2017 images with their annotations (packaged with the tests)."""
    return COCO10_DIR


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
    """One persistent JAX compilation cache for the JAX subprocesses of the session (inherited
    through the environment): a program one process compiled (the first run of a resumed
    training, a model's inference) is loaded by the next instead of compiled again."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))


# The files that take the most CPU first (measured with the suite's own run), so that the two
# workers finish together: xdist hands out whole files in this order (pyproject's
# `--no-loadscope-reorder`; its default order, by test count, ignored this list).
LONGEST_FIRST = ("test_backends", "test_training", "test_xla", "test_bf16", "test_c4",
                 "test_tiling", "test_model", "test_torchvision_parity", "test_export_saved_model",
                 "test_export_tflite", "test_training_parity", "test_precision", "test_distribute",
                 "test_export_openvino", "test_export_onnx", "test_keras_save", "test_atomic")


def pytest_collection_modifyitems(items):
    def rank(item):
        stem = Path(str(item.fspath)).stem
        return LONGEST_FIRST.index(stem) if stem in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept
