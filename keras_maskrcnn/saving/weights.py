"""Weight files (Keras `.weights.h5`): written with the model's config inside (HDF5 attribute
`CONFIG_ATTRIBUTE`) and read strictly: every weight path and shape of the file must be the
model's, and every weight of the model in the file (older layouts are moved on the fly by
`saving.migration`)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py

from keras_maskrcnn.config import MaskRCNNConfig
from keras_maskrcnn.model import MaskRCNN
from keras_maskrcnn.saving.migration import LEGACY_CONFIG_ATTRIBUTES, current_layout

CONFIG_ATTRIBUTE = "keras_maskrcnn_config"
OPTIMIZER_PREFIX = "optimizer/"


def write_weights(model: MaskRCNN, path: str | Path, attributes: Mapping[str, Any] = ()) -> None:
    """`model.save_weights(path)` (with the optimizer state once compiled and built), then the
    model's config and `attributes` as HDF5 attributes of the file."""
    model.save_weights(str(path))
    with h5py.File(path, "a") as f:
        f.attrs[CONFIG_ATTRIBUTE] = model.config.replace(backbone_weights=None).to_json()
        for key, value in dict(attributes).items():
            f.attrs[key] = value


def unreadable_weights(path: str | Path, err: OSError) -> ValueError:
    """The one-line error of a weights file HDF5 cannot open (truncated, corrupt, not HDF5)."""
    return ValueError(f"{path} is not a readable weights file ({err}): it is truncated or "
                      "corrupt; copy it again, or use a checkpoint from checkpoints/")


def read_attributes(path: str | Path) -> dict[str, Any]:
    """The HDF5 attributes of a weights file; ValueError naming it if it cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            return dict(f.attrs)
    except OSError as err:
        raise unreadable_weights(path, err) from None


def stored_config(path: str | Path) -> MaskRCNNConfig | None:
    """The config written inside a weights file, or None (a file written without one)."""
    attributes = read_attributes(path)
    for key in (CONFIG_ATTRIBUTE, *LEGACY_CONFIG_ATTRIBUTES):
        if key in attributes:
            return MaskRCNNConfig.from_dict(json.loads(attributes[key]))
    return None


def weight_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Dataset path -> shape of every model variable stored in a `.weights.h5` file (the
    optimizer state Keras adds after `compile` left out)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and not name.startswith(OPTIMIZER_PREFIX):
            shapes[name] = tuple(obj.shape)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return shapes


def expected_weight_shapes(model: MaskRCNN) -> dict[str, tuple[int, ...]]:
    """The paths and shapes `model.save_weights` writes (to a scratch file)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "expected.weights.h5"
        model.save_weights(str(path))
        return weight_shapes(path)


def check_weights_match(model: MaskRCNN, path: Path, display: Path) -> None:
    """Raises ValueError unless the file holds exactly the model's variables and shapes."""
    stored = weight_shapes(path)
    expected = expected_weight_shapes(model)
    problems = []
    unused = sorted(set(stored) - set(expected))
    missing = sorted(set(expected) - set(stored))
    shapes = sorted(p for p in set(stored) & set(expected) if stored[p] != expected[p])
    if unused:
        problems.append(f"{len(unused)} weight(s) in the file the model does not use "
                        f"(e.g. {', '.join(unused[:3])})")
    if missing:
        problems.append(f"{len(missing)} model weight(s) not in the file "
                        f"(e.g. {', '.join(missing[:3])})")
    for p in shapes[:3]:
        problems.append(f"{p}: file {stored[p]} vs model {expected[p]}")
    if problems:
        raise ValueError(f"{display} does not match the model of its config: "
                         + "; ".join(problems)
                         + " (was the config edited, or the weights written by another model?)")


def load_weights_strict(model: MaskRCNN, path: str | Path) -> None:
    """`model.load_weights` after checking that the file and the model hold the same variables
    (paths and shapes; the optimizer state too when the file and the model have one); raises
    ValueError naming the differences otherwise."""
    try:
        with current_layout(path) as current:
            check_weights_match(model, current, display=Path(path))
            model.load_weights(str(current))
    except OSError as err:
        raise unreadable_weights(path, err) from None
