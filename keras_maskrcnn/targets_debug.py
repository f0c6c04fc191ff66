"""The training targets of one batch as numpy arrays: what a training step trains towards.

`training_targets(model, batch)` runs the model's own training graph up to its target layers
(the RPN's `anchor_targets` and `train_proposals`, the RoI heads' `detection_targets`): the numbers are those of a
training step on the same batch and sampler seeds, not a re-implementation. For tests, for
parity checks against another implementation, and for debugging a dataset (are the boxes where
the objects are, do the mask targets look like the objects, how many anchors are positive).

Shapes (docs/CONVENTIONS.md): B images, N anchors, R proposals, S sampled RoIs, F mask slots,
P mask size (28); boxes (y1, x1, y2, x2) in input pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _target_model(model):
    """A functional model: the training graph's inputs -> its target layers' outputs."""
    import keras

    graph = model.training_graph()
    outputs = {}
    anchor_labels, rpn_box_targets = graph.get_layer(model.rpn.anchor_targets.name).output
    outputs["anchor_labels"], outputs["rpn_box_targets"] = anchor_labels, rpn_box_targets
    proposals, num_proposals = graph.get_layer(model.rpn.train_proposals.name).output
    outputs["proposals"], outputs["num_proposals"] = proposals, num_proposals
    # A layer's dict output is held flat, in sorted-key order (Keras nests like tf.nest).
    targets = model.roi_heads.detection_targets
    flat = graph.get_layer(targets.name).output
    outputs.update(zip(sorted(targets.OUTPUT_KEYS), flat, strict=True))
    return keras.Model(graph.input, outputs, name="training_targets")


def training_targets(model, batch: dict[str, Any], training: bool = True) -> dict[str, np.ndarray]:
    """The targets a training step on `batch` computes, as numpy arrays.

    Args:
        model: a `MaskRCNN`.
        batch: a training batch (docs/CONVENTIONS.md), e.g. `next(iter(make_dataset(...)))[0]`;
            its `sample_seed [B, 2]` makes the RPN and RoI samples those of a training step on
            it (without one, seeds are drawn).
        training: run the backbone as a training step does (BatchNorm on batch statistics
            where the config trains it); the model's weights and statistics are left unchanged.

    Returns:
        dict of numpy arrays:
        `anchors [N, 4]`; `anchor_labels [B, N]` int32 (1 sampled positive, 0 sampled negative,
        -1 not sampled); `rpn_box_targets [B, N, 4]` (deltas of the matched ground truth,
        weights (1, 1, 1, 1), zero off positives); `proposals [B, R, 4]`, `num_proposals [B]`;
        `rois [B, S, 4]` sampled RoIs (positives first), `class_targets [B, S]` int32 (0
        background), `box_targets [B, S, 4]` (weights `box_coder_weights`), `weights [B, S]`
        (1 on sampled slots); `mask_rois [B, F, 4]`, `mask_classes [B, F]`,
        `mask_targets [B, F, P, P]` (binary or soft per `mask_target_rule`), `mask_weights
        [B, F]` (1 on foreground slots).
    """
    from keras import ops

    from keras_maskrcnn.model import draw_sample_seeds
    from keras_maskrcnn.steps import unpack_batch

    batch = unpack_batch(batch)
    target_model = _target_model(model)
    names = list(target_model.input)
    missing = [n for n in names if n not in batch and n != "sample_seed"]
    if missing:
        raise KeyError(f"training_targets: the batch is missing {missing}; batches from "
                       "keras_maskrcnn.data.make_dataset carry every key")
    feed = {n: ops.convert_to_tensor(batch[n]) for n in names if n in batch}
    if "sample_seed" in names and "sample_seed" not in feed:
        feed["sample_seed"] = draw_sample_seeds(feed["images"])
    state = [ops.convert_to_numpy(v) for v in model.non_trainable_variables]
    try:
        out = target_model(feed, training=training)
    finally:  # BatchNorm statistics move in training mode: this is not a training step
        for variable, value in zip(model.non_trainable_variables, state, strict=True):
            variable.assign(value)
    result = {k: ops.convert_to_numpy(v) for k, v in out.items()}
    result["anchors"] = ops.convert_to_numpy(model.rpn.anchor_generator(feed["images"]))
    return result
