"""RoI heads parts: pooled RoI features -> class scores, boxes and masks; in training, the RoI
targets and the class, box and mask losses. `StandardRoIHeads` pools each RoI from its FPN level
for a box head and a mask head; `Res5RoIHeads` (the C4 architecture) pools once on C4 and runs
the ResNet's res5 per RoI for both."""

from __future__ import annotations

from typing import Any

import keras

from keras_maskrcnn.parts.common import Part

OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections",
                "detection_masks")


class RoIHeads(Part):
    """What both RoI heads share. Layers:

    - `box_head`: pooled features -> `(class_logits [B, R, K + 1], deltas [B, R, K, 4])`;
    - `mask_head`: pooled features -> mask logits `[B, R, M, M, K]`;
    - `detection_layer` (`layers.detections.DetectionLayer`) and `mask_selector`: inference;
    - `detection_targets` (`layers.targets.DetectionTargetLayer`), `box_criterion`
      (`BoxHeadLoss`), `mask_criterion` (`MaskLoss`): training.

    Entry points: `detect` (inference outputs, `OUTPUT_NAMES`), `targets` (the sampled RoIs and
    their targets) and `training_losses`. A subclass says where the heads read from:
    `box_features(features, boxes)` (the box head's input for `boxes [B, R, 4]`),
    `detection_mask_logits(features, boxes)` (mask logits of the detected boxes) and
    `training_mask_logits(features, targets, box_features)` (mask logits of the foreground RoIs
    `targets["mask_rois"]`).
    """

    HEAD_LAYERS = ("box_head", "mask_head", "detection_layer", "mask_selector",
                   "detection_targets", "box_criterion", "mask_criterion")

    def detect(self, features, proposals, num_proposals, image_shape) -> dict[str, Any]:
        """Feature maps and `proposals [B, R, 4]` (first `num_proposals [B]` valid) -> dict of
        `OUTPUT_NAMES`: boxes `[B, D, 4]` input pixels, scores, classes, counts, mask
        probabilities `[B, D, M, M]` of each detection's class."""
        class_logits, box_deltas = self.box_head(self.box_features(features, proposals))
        boxes, scores, classes, num = self.detection_layer(
            proposals, num_proposals, class_logits, box_deltas, image_shape)
        masks = self.mask_selector(self.detection_mask_logits(features, boxes), classes)
        return dict(zip(OUTPUT_NAMES, (boxes, scores, classes, num, masks), strict=True))

    def targets(self, proposals, num_proposals, gt_boxes, gt_classes, gt_masks,
                seeds=None, image_shape=None) -> dict[str, Any]:
        """The sampled RoIs (ground truth appended) and their targets:
        `layers.targets.DetectionTargetLayer`'s dict (`rois`, `class_targets`, `box_targets`,
        `weights`, `mask_rois`, `mask_classes`, `mask_targets`, `mask_weights`); `image_shape`
        is read by torchvision's mask-target rule (canvas masks)."""
        return self.detection_targets(proposals, num_proposals, gt_boxes, gt_classes, gt_masks,
                                      seeds, image_shape)

    def training_losses(self, features, proposals, num_proposals, gt_boxes, gt_classes, gt_masks,
                        seeds=None, image_shape=None) -> dict[str, Any]:
        """-> `{"class_loss", "box_loss", "mask_loss"}` float32 scalars, and the normalizers of
        their means, `roi_count` and `mask_count` (for exact cross-replica reduction)."""
        t = self.targets(proposals, num_proposals, gt_boxes, gt_classes, gt_masks, seeds,
                         image_shape)
        box_features = self.box_features(features, t["rois"])
        class_logits, box_deltas = self.box_head(box_features)
        class_loss, box_loss = self.box_criterion(class_logits, box_deltas, t["class_targets"],
                                                  t["box_targets"], t["weights"])
        mask_logits = self.training_mask_logits(features, t, box_features)
        mask_loss = self.mask_criterion(mask_logits, t["mask_classes"], t["mask_targets"],
                                        t["mask_weights"])
        return {"class_loss": class_loss, "box_loss": box_loss, "mask_loss": mask_loss,
                "roi_count": keras.ops.sum(t["weights"]),
                "mask_count": keras.ops.sum(t["mask_weights"])}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class StandardRoIHeads(RoIHeads):
    """FPN RoI heads (Detectron2's `StandardROIHeads`): `box_pooler` and `mask_pooler`
    (`layers.pooler.MultiLevelRoIAlign`) pool each RoI from its level among the first
    `pooler_levels` feature maps (P2..P5) for the box head and the mask head (see `RoIHeads`)."""

    SUBLAYERS = ("box_pooler", "mask_pooler", *RoIHeads.HEAD_LAYERS)

    def __init__(self, box_pooler, mask_pooler, box_head, mask_head, detection_layer,
                 mask_selector, detection_targets, box_criterion, mask_criterion,
                 pooler_levels: int = 4, **kwargs):
        super().__init__(box_pooler=box_pooler, mask_pooler=mask_pooler, box_head=box_head,
                         mask_head=mask_head, detection_layer=detection_layer,
                         mask_selector=mask_selector, detection_targets=detection_targets,
                         box_criterion=box_criterion, mask_criterion=mask_criterion, **kwargs)
        self.pooler_levels = int(pooler_levels)

    def box_features(self, features, boxes):
        return self.box_pooler(features[:self.pooler_levels], boxes)

    def detection_mask_logits(self, features, boxes):
        return self.mask_head(self.mask_pooler(features[:self.pooler_levels], boxes))

    def training_mask_logits(self, features, targets, box_features):
        return self.detection_mask_logits(features, targets["mask_rois"])

    def extra_config(self):
        return {"pooler_levels": self.pooler_levels}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class Res5RoIHeads(RoIHeads):
    """C4 RoI heads (Detectron2's `Res5ROIHeads`, the paper's ResNet-C4): `pooler` pools every
    RoI on C4 (the one feature map), `res5_head` (`heads.Res5Head`) runs res5 on it, and both
    the box predictor (`heads.Res5BoxHead`, average-pooled) and the mask head read that output.
    Training feeds the mask head the res5 features of the foreground RoIs (the first F sampled
    slots, not recomputed); inference pools the detected boxes and runs res5 again."""

    SUBLAYERS = ("pooler", "res5_head", *RoIHeads.HEAD_LAYERS)

    def __init__(self, pooler, res5_head, box_head, mask_head, detection_layer, mask_selector,
                 detection_targets, box_criterion, mask_criterion, **kwargs):
        super().__init__(pooler=pooler, res5_head=res5_head, box_head=box_head,
                         mask_head=mask_head, detection_layer=detection_layer,
                         mask_selector=mask_selector, detection_targets=detection_targets,
                         box_criterion=box_criterion, mask_criterion=mask_criterion, **kwargs)

    def box_features(self, features, boxes):
        return self.res5_head(self.pooler(features, boxes))

    def detection_mask_logits(self, features, boxes):
        return self.mask_head(self.box_features(features, boxes))

    def training_mask_logits(self, features, targets, box_features):
        return self.mask_head(box_features[:, :targets["mask_rois"].shape[1]])
