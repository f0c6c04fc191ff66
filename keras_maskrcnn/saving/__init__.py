"""Everything the package writes for a model and reads back: the model directory
(`config.json` + `model.weights.h5`), training checkpoints, the config inside weight files with
strict loading (`weights`), and the migration of older files (`migration`)."""

from keras_maskrcnn.saving.checkpoints import (
    CHECKPOINT_DIR,
    checkpoint_info,
    latest_checkpoint,
    list_checkpoints,
    restore_checkpoint,
    save_checkpoint,
)
from keras_maskrcnn.saving.model_dir import (
    CONFIG_FILE,
    MODEL_FILES,
    WEIGHTS_FILE,
    load_model_dir,
    read_model_config,
    save_model_dir,
)
from keras_maskrcnn.saving.weights import load_weights_strict, stored_config

__all__ = ["CHECKPOINT_DIR", "CONFIG_FILE", "MODEL_FILES", "WEIGHTS_FILE", "checkpoint_info",
           "latest_checkpoint", "list_checkpoints", "load_model_dir", "load_weights_strict",
           "read_model_config", "restore_checkpoint", "save_checkpoint", "save_model_dir",
           "stored_config"]
