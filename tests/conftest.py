"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA_DIR = Path(__file__).parent / "data"
COCO10_DIR = DATA_DIR / "coco-val2017-10"


@pytest.fixture(scope="session")
def coco10_dir() -> Path:
    """Ten real COCO val2017 images with their annotations (packaged with the tests)."""
    return COCO10_DIR

