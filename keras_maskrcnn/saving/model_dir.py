"""The model directory: `config.json` + `model.weights.h5`.

`config.json` is the model's one config a user reads and edits. Inference and training settings
edited there (thresholds, detections per image, sizes, solver) take effect; fields that fix the
network (`config.ARCHITECTURE_FIELDS`) must agree with the weights, which carry the config they
were written with: a disagreement is refused by name. Saves write the weights, then
`config.json`, each atomically; a save killed between the two leaves an older `config.json`
than its weights, and the weights' own config is then used.
"""

from __future__ import annotations

import logging
from pathlib import Path

from keras_maskrcnn.atomic import atomic_path, atomic_write_text
from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import ARCHITECTURE_FIELDS, MaskRCNNConfig
from keras_maskrcnn.model import MaskRCNN
from keras_maskrcnn.saving.weights import load_weights_strict, stored_config, write_weights

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE)

logger = logging.getLogger("keras_maskrcnn")


def save_model_dir(model: MaskRCNN, directory: str | Path) -> Path:
    """Writes a model directory: `model.weights.h5` (with its config inside), then
    `config.json`, each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_FILE, suffix=".weights.h5") as tmp:
        write_weights(model, tmp)
    config_json = model.config.replace(backbone_weights=None).to_json()
    atomic_write_text(directory / CONFIG_FILE, config_json + "\n")
    return directory


def architecture_differences(edited: MaskRCNNConfig, stored: MaskRCNNConfig) -> list[str]:
    """`field (weights' value -> edited value)` for each architecture field that differs."""
    return [f"{name} ({getattr(stored, name)!r} -> {getattr(edited, name)!r})"
            for name in ARCHITECTURE_FIELDS if getattr(edited, name) != getattr(stored, name)]


def read_model_config(directory: str | Path) -> MaskRCNNConfig:
    """The config of a model directory: `config.json`, checked against the weights' own (see
    the module doc); ValueError naming the architecture fields an edit changed."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: a model directory holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                "(written by `save_model_dir`: `train`, `convert_torchvision`)")
    config = MaskRCNNConfig.from_json(config_path)
    stored = stored_config(weights_path)
    if stored is None or stored == config:
        return config
    if config_path.stat().st_mtime_ns < weights_path.stat().st_mtime_ns:
        logger.warning("%s is older than %s and differs from the config written with it (a "
                       "save interrupted between its two files): using the weights' config",
                       config_path, weights_path.name)
        return stored
    changed = architecture_differences(config, stored)
    if changed:
        raise ValueError(
            f"{config_path} changes the architecture its weights were trained with: "
            f"{', '.join(changed[:6])}; only inference and training settings can be edited "
            "(thresholds, detections per image, sizes, solver): undo these, or train a new "
            "model with this config")
    return config


def load_model_dir(directory: str | Path, roi_align_implementation: str = "auto",
                   config: MaskRCNNConfig | None = None) -> MaskRCNN:
    """Rebuilds the model of a model directory and loads its weights strictly: every weight of
    the file must be used and every weight of the model loaded, with the same shapes.

    `config` (default: `read_model_config(directory)`) builds the model instead.
    """
    directory = Path(directory)
    config = config or read_model_config(directory)
    model = build_model(config, roi_align_implementation=roi_align_implementation)
    load_weights_strict(model, directory / WEIGHTS_FILE)
    return model
