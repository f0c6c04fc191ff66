"""Fine-tuning: initialise a model from another model directory with other classes.

The model to train is built from the pretrained directory's architecture with the dataset's
classes (`finetune_config`); every weight whose position, name and shape match is copied, and
the class-specific layers (box classifier, box regressor, mask predictor), whose shapes depend
on the class count, keep their fresh initialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from keras_maskrcnn.config import MaskRCNNConfig
from keras_maskrcnn.model import MaskRCNN
from keras_maskrcnn.saving import load_model_dir, read_model_config

# Fields of the pretrained config that describe its data, not its architecture.
DATA_FIELDS = ("num_classes", "class_names", "category_ids")


def finetune_config(init_from: str | Path, num_classes: int, class_names=(),
                    category_ids=()) -> MaskRCNNConfig:
    """The pretrained directory's config with the dataset's classes, as a training config
    (fixed canvas: per-image canvases are an inference-time choice)."""
    config = read_model_config(init_from)
    return config.replace(num_classes=num_classes, class_names=tuple(class_names),
                          category_ids=tuple(category_ids), canvas="fixed",
                          backbone_weights=None)


def layer_of(path: str) -> str:
    """A variable path 'box_head/class_logits/kernel' -> its layer 'box_head/class_logits'."""
    return path.rsplit("/", 1)[0] if "/" in path else path


def initialize_from(model: MaskRCNN, init_from: str | Path,
                    print_fn: Callable[[str], None] = print) -> list[str]:
    """Copies into `model` every weight of the model directory `init_from` that matches in
    position, name and shape; returns (and prints) the layers left re-initialised."""
    source_config = read_model_config(init_from)
    pretrained = load_model_dir(init_from, roi_align_implementation="gather",
                                config=source_config)
    theirs, ours = pretrained.weights, model.weights
    if len(theirs) != len(ours):
        raise ValueError(
            f"{init_from} has another architecture ({len(theirs)} weights, the model to train "
            f"{len(ours)}): build the model from its config (`finetune_config`)")
    reinitialized: list[str] = []
    for src, dst in zip(theirs, ours, strict=True):
        if src.name != dst.name:
            raise ValueError(f"{init_from}: weight {src.path} does not line up with {dst.path}")
        if tuple(src.shape) == tuple(dst.shape):
            dst.assign(src.value)
        else:
            layer = layer_of(dst.path)
            if layer not in reinitialized:
                reinitialized.append(layer)
    copied = len(ours) - sum(1 for s, d in zip(theirs, ours, strict=True)
                             if tuple(s.shape) != tuple(d.shape))
    if reinitialized:
        print_fn(f"initialised {copied} of {len(ours)} weights from {init_from}; "
                 f"re-initialised for {model.config.num_classes} classes "
                 f"(pretrained: {source_config.num_classes}): {', '.join(reinitialized)}")
    else:
        print_fn(f"initialised all {len(ours)} weights from {init_from}")
    return reinitialized
