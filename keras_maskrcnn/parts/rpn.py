"""Region proposal network part: anchors, head, proposals; in training, anchor targets and loss."""

from __future__ import annotations

from typing import Any

import keras

from keras_maskrcnn.parts.common import Part


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class RPN(Part):
    """The RPN of a Mask R-CNN, made of:

    - `anchor_generator` (`layers.anchors`): canvas -> anchors `[N, 4]` input pixels, in the
      head's order (level, location, shape);
    - `head` (`heads.RPNHead`): feature maps -> objectness logits `[B, N]`, deltas `[B, N, 4]`;
    - `train_proposals`, `test_proposals` (`layers.proposals.ProposalLayer`): the top-k, NMS
      and post-NMS counts of training and inference;
    - `anchor_targets` (`layers.targets.AnchorTargetLayer`) and `criterion`
      (`layers.losses.RPNLoss`): training only.

    Entry points: `predict` (the head's outputs and the anchors), `proposals` (inference or
    training proposals), `targets` and `training_losses`. They wire the layers into the
    model's functional graphs (symbolic tensors) and run as well on real tensors.
    """

    SUBLAYERS = ("anchor_generator", "head", "train_proposals", "test_proposals",
                 "anchor_targets", "criterion")

    def __init__(self, anchor_generator, head, train_proposals, test_proposals, anchor_targets,
                 criterion, **kwargs):
        super().__init__(anchor_generator=anchor_generator, head=head,
                         train_proposals=train_proposals, test_proposals=test_proposals,
                         anchor_targets=anchor_targets, criterion=criterion, **kwargs)

    def predict(self, images, features) -> dict[str, Any]:
        """`images [B, H, W, 3]` (only the canvas size is read) and the backbone's feature maps
        -> dict: `logits [B, N]`, `deltas [B, N, 4]` (the head's dtype), `anchors [N, 4]`
        float32, `level_sizes [L]` int32 (anchors per level)."""
        anchors, level_sizes = self.anchor_generator(images, with_level_sizes=True)
        logits, deltas = self.head(features)
        return {"logits": logits, "deltas": deltas, "anchors": anchors,
                "level_sizes": level_sizes}

    def proposals(self, outputs: dict[str, Any], image_shape, training: bool = False,
                  dynamic: bool = False):
        """-> `(proposals [B, R, 4], num_valid [B])` of the training or inference settings;
        `dynamic`: level sizes read from `outputs` (a canvas known only at run time)."""
        layer = self.train_proposals if training else self.test_proposals
        return layer(outputs["logits"], outputs["deltas"], outputs["anchors"], image_shape,
                     level_sizes=outputs["level_sizes"] if dynamic else None)

    def targets(self, outputs: dict[str, Any], gt_boxes, gt_classes, seeds=None):
        """-> `(labels [B, N] int32 (1 foreground, 0 background, -1 ignored), box_targets
        [B, N, 4])` of the anchors against the ground truth (sampled with `seeds [B, 2]`)."""
        return self.anchor_targets(outputs["anchors"], gt_boxes, gt_classes, seeds)

    def training_losses(self, outputs: dict[str, Any], gt_boxes, gt_classes,
                        seeds=None) -> dict[str, Any]:
        """-> `{"rpn_objectness_loss", "rpn_box_loss"}` float32 scalars, and `rpn_count` the
        anchors sampled (the normalizer of `criterion.normalizer` "sampled", for exact
        cross-replica reduction)."""
        labels, box_targets = self.targets(outputs, gt_boxes, gt_classes, seeds)
        objectness, box = self.criterion(outputs["logits"], outputs["deltas"], labels,
                                         box_targets)
        return {"rpn_objectness_loss": objectness, "rpn_box_loss": box,
                "rpn_count": keras.ops.sum(keras.ops.cast(labels >= 0, "float32"))}
