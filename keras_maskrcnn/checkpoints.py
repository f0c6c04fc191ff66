"""Training checkpoints: `output_dir/checkpoints/step_NNNNNNNN.ckpt.weights.h5`, each the weights
and the optimizer state with the step, epoch, run description and config as HDF5 attributes,
written atomically (a checkpoint on disk under its final name is complete)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py

from keras_maskrcnn.atomic import atomic_path
from keras_maskrcnn.config import MaskRCNNConfig
from keras_maskrcnn.model import MaskRCNN

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
        model.save_weights(str(tmp))
        with h5py.File(tmp, "a") as f:
            f.attrs["step"] = step
            f.attrs["epoch"] = epoch
            f.attrs["run"] = json.dumps(run)
            f.attrs["config"] = model.config.to_json()
    for _, old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def checkpoint_info(path: Path) -> dict:
    """Step, epoch, run description and config of a checkpoint; ValueError naming the file if
    it cannot be read (checkpoints are written atomically: only a damaged disk or a copy)."""
    try:
        with h5py.File(path, "r") as f:
            return {"step": int(f.attrs["step"]), "epoch": int(f.attrs["epoch"]),
                    "run": json.loads(f.attrs["run"]),
                    "config": MaskRCNNConfig.from_dict(json.loads(f.attrs["config"]))}
    except (OSError, KeyError) as err:
        raise ValueError(f"checkpoint {path} cannot be read ({err}): delete it to resume from "
                         "the one before, or pass --overwrite to start again") from None


def restore_checkpoint(model: MaskRCNN, path: Path) -> None:
    """Loads weights and optimizer state (the optimizer is built first so its slots exist)."""
    model.optimizer.build(model.trainable_variables)
    model.load_weights(str(path))
