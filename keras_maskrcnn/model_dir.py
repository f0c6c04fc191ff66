"""The model directory: `config.json` + `model.weights.h5` (written atomically, the config also
stored inside the weights file) and its strict loading (every weight path and shape must match).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import h5py

from keras_maskrcnn.atomic import atomic_path, atomic_write_text
from keras_maskrcnn.config import MaskRCNNConfig
from keras_maskrcnn.heads.legacy import current_layout
from keras_maskrcnn.model import MaskRCNN

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
CONFIG_ATTRIBUTE = "keras_maskrcnn_config"
OPTIMIZER_PREFIX = "optimizer/"

logger = logging.getLogger("keras_maskrcnn")


def save_model_dir(model: MaskRCNN, directory: str | Path) -> Path:
    """Writes a model directory: `config.json` + `model.weights.h5`, each atomically.

    The weights file also carries the config (HDF5 attribute `CONFIG_ATTRIBUTE`) and is renamed
    into place first: a save killed at any instant leaves either the previous model or the new
    weights with their own config, which `load_model_dir` then uses.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_json = model.config.replace(backbone_weights=None).to_json()
    with atomic_path(directory / WEIGHTS_FILE, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))
        with h5py.File(tmp, "a") as f:
            f.attrs[CONFIG_ATTRIBUTE] = config_json
    atomic_write_text(directory / CONFIG_FILE, config_json + "\n")
    return directory


def read_model_config(directory: str | Path) -> MaskRCNNConfig:
    """The config of a model directory: the one stored with its weights when `config.json`
    disagrees with it (a save interrupted between its two renames), else `config.json`."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: a model directory holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                "(written by `keras-maskrcnn train --output DIR` or `convert`)")
    config = MaskRCNNConfig.from_json(config_path)
    stored = weights_config(weights_path)
    if stored is not None and stored != config:
        logger.warning("%s does not match the config stored with %s (interrupted save?); "
                       "using the weights' own config", config_path, weights_path.name)
        return stored
    return config


def unreadable_weights(path: str | Path, err: OSError) -> ValueError:
    """The one-line error of a weights file HDF5 cannot open (truncated, corrupt, not HDF5)."""
    return ValueError(f"{path} is not a readable weights file ({err}): it is truncated or "
                      "corrupt; copy it again, or use a checkpoint from checkpoints/")


def weights_config(weights_path: str | Path) -> MaskRCNNConfig | None:
    """The config stored inside a weights file by `save_model_dir`, or None (older files)."""
    try:
        with h5py.File(weights_path, "r") as f:
            text = f.attrs.get(CONFIG_ATTRIBUTE)
    except OSError as err:
        raise unreadable_weights(weights_path, err) from None
    if text is None:
        return None
    return MaskRCNNConfig.from_dict(json.loads(text))


def load_model_dir(directory: str | Path, roi_align_implementation: str = "auto",
                   config: MaskRCNNConfig | None = None) -> MaskRCNN:
    """Rebuilds the model of a model directory and loads its weights strictly: every weight of
    the file must be used and every weight of the model loaded, with the same shapes.

    `config` (default: `read_model_config(directory)`) builds the model instead.
    """
    directory = Path(directory)
    config = config or read_model_config(directory)
    model = MaskRCNN(config, roi_align_implementation=roi_align_implementation)
    load_weights_strict(model, directory / WEIGHTS_FILE)
    return model


def weight_shapes(weights_path: str | Path) -> dict[str, tuple[int, ...]]:
    """Dataset path -> shape of every model variable stored in a Keras `.weights.h5` file (the
    optimizer state Keras adds after `compile` is left out)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and not name.startswith(OPTIMIZER_PREFIX):
            shapes[name] = tuple(obj.shape)

    with h5py.File(weights_path, "r") as f:
        f.visititems(visit)
    return shapes


def expected_weight_shapes(model: MaskRCNN) -> dict[str, tuple[int, ...]]:
    """The paths and shapes `model.save_weights` would write (written to a scratch file)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "expected.weights.h5"
        model.save_weights(str(path))
        return weight_shapes(path)


def load_weights_strict(model: MaskRCNN, weights_path: str | Path) -> None:
    """`model.load_weights` after checking that the file and the model hold the same variables
    (paths and shapes); raises ValueError naming the differences otherwise."""
    try:
        with current_layout(weights_path) as path:  # older weight layouts upgraded on the fly
            check_weights_match(model, path, display=Path(weights_path))
            model.load_weights(str(path))
    except OSError as err:
        raise unreadable_weights(weights_path, err) from None


def check_weights_match(model: MaskRCNN, weights_path: Path, display: Path) -> None:
    """Raises ValueError unless the file holds exactly the model's variables and shapes."""
    stored = weight_shapes(weights_path)
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
                         + " (was config.json edited, or the weights written by another model?)")
