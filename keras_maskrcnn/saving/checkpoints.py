"""Training checkpoints: `output_dir/checkpoints/step_NNNNNNNN.ckpt.weights.h5`, each a weights
file (`saving.weights`: the config inside) with the optimizer state and the step, epoch and run
description as HDF5 attributes, written atomically (a checkpoint on disk under its final name
is complete) and restored strictly."""

from __future__ import annotations

import json
import re
from pathlib import Path

from keras_maskrcnn.atomic import atomic_path
from keras_maskrcnn.model import MaskRCNN
from keras_maskrcnn.saving.weights import (
    load_weights_strict,
    read_attributes,
    stored_config,
    write_weights,
)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})\.ckpt\.weights\.h5$")


def checkpoint_path(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR / f"step_{step:08d}.ckpt.weights.h5"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in `output_dir/checkpoints/`, oldest first."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint (step, path), or None."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(model: MaskRCNN, output_dir: Path, step: int, epoch: int, keep: int,
                    run: dict) -> Path:
    """Writes weights + optimizer state (+ step, epoch, run description) atomically, then
    deletes all but the newest `keep` checkpoints."""
    path = checkpoint_path(output_dir, step)
    with atomic_path(path, suffix=".weights.h5") as tmp:
        write_weights(model, tmp, {"step": step, "epoch": epoch, "run": json.dumps(run)})
    for _, old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def checkpoint_info(path: Path) -> dict:
    """Step, epoch, run description and config of a checkpoint; ValueError naming the file if
    it cannot be read (checkpoints are written atomically: only a damaged disk or a copy)."""
    try:
        attributes = read_attributes(path)
        return {"step": int(attributes["step"]), "epoch": int(attributes["epoch"]),
                "run": json.loads(attributes["run"]), "config": stored_config(path)}
    except (ValueError, KeyError) as err:
        raise ValueError(f"checkpoint {path} cannot be read ({err}): delete it to resume from "
                         "the one before, or pass `overwrite=True` to start again") from None


def restore_checkpoint(model: MaskRCNN, path: Path) -> None:
    """Loads weights and optimizer state strictly (the optimizer is built first so its slots
    exist)."""
    model.optimizer.build(model.trainable_variables)
    load_weights_strict(model, path)
