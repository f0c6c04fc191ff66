"""Training targets computed in the graph: RPN anchor targets and sampled RoI targets.

Shapes: B images, N anchors, G padded ground-truth boxes, R proposals, S sampled RoIs, F sampled
RoIs that can be foreground (the first F of the S), P mask size.
Ground-truth classes: 1..K objects, 0 padding, -1 crowd (never positive, never negative where a
candidate lies mostly inside a crowd region).

Runs on every Keras backend (`keras.ops`; static, padded shapes). On TensorFlow outside XLA,
padding costs nothing: matching runs on the ground-truth columns in use (G' <= G) and, with
`trim_masks`, the mask branch on the foreground slots in use (F' <= F) (`trim_padding`, a
TensorFlow-only optimization). Under XLA (`jit_compile`), on JAX and on PyTorch every shape stays
static (G and F). The results are the same either way: the cut-off columns and slots are padding.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from keras_maskrcnn import backend
from keras_maskrcnn.ops import boxes as box_ops
from keras_maskrcnn.ops import masks as mask_ops
from keras_maskrcnn.ops import sampling

CROWD_IOA = 0.5


def in_xla_context() -> bool:
    """True while TensorFlow traces for XLA (`jit_compile=True`); False on other backends."""
    if not backend.is_tensorflow():
        return False
    from keras_maskrcnn.ops.roi_common import in_xla_context as tf_in_xla_context

    return tf_in_xla_context()


def used_length(in_use):
    """1 + the last index along axis 1 that is in use in any row of `in_use [B, K]` bool:
    int32 scalar in [1, K] (1 when nothing is in use, so shapes never become empty)."""
    positions = ops.arange(1, backend.static_dim(in_use, 1) + 1, dtype="int32")[None, :]
    return ops.maximum(ops.max(ops.where(in_use, positions, 0)), 1)


def trim_padding(in_use, *tensors):
    """`tensors` (each `[B, K, ...]`) cut along axis 1 to `used_length(in_use)` on TensorFlow
    outside XLA (a data-dependent shape); unchanged while tracing for XLA and on JAX / PyTorch
    (static shapes: the padded path, same results)."""
    if not backend.is_tensorflow() or in_xla_context():
        return tensors
    length = used_length(in_use)
    return tuple(t[:, :length] for t in tensors)


def gather_rows(values, indices):
    """`values [B, K, ...]` at `indices [B, N]` int32 along axis 1 -> `[B, N, ...]` (per-row
    gather: the batch flattened with offsets, one `ops.take`)."""
    num = backend.static_dim(values, 1)
    batch = backend.static_dim(indices, 0)
    offsets = ops.arange(batch, dtype="int32")[:, None] * num
    flat = ops.reshape(values, (-1, *values.shape[2:]))
    return ops.take(flat, ops.cast(indices, "int32") + offsets, axis=0)


def match_boxes(candidates, gt_boxes, gt_classes):
    """Matches each candidate box to its best-overlapping object ground truth.

    Args:
      candidates: `[B, N, 4]` or `[N, 4]` (shared by the batch) input pixels.
      gt_boxes: `[B, G, 4]`; gt_classes: `[B, G]` int32.
    Returns:
      `iou [B, N, G']` (-1 on padding and crowd columns), `max_iou [B, N]`, `matched [B, N]`
      int32 into G, `in_crowd [B, N]` bool (intersection over the candidate's area with a crowd
      box > 0.5). G' = G under XLA, else the ground-truth columns in use (`trim_padding`).
    """
    gt_boxes, gt_classes = trim_padding(gt_classes != 0, gt_boxes, gt_classes)
    if len(candidates.shape) == 2:
        candidates = ops.broadcast_to(candidates[None], (backend.static_dim(gt_boxes, 0),
                                                         *candidates.shape))
    is_object = (gt_classes > 0)[:, None, :]
    iou = ops.where(is_object, box_ops.pairwise_iou(candidates, gt_boxes), -1.0)
    ioa = box_ops.pairwise_ioa(candidates, gt_boxes)
    in_crowd = ops.any(ops.logical_and((gt_classes < 0)[:, None, :], ioa > CROWD_IOA), axis=2)
    matched = ops.cast(ops.argmax(iou, axis=2), "int32")  # first of equal maxima
    return iou, ops.max(iou, axis=2), matched, in_crowd


def fold_seeds(seeds, salt: int):
    """Per-image stateless seeds `[B, 2]` int32 for one sampler (`salt` tells samplers apart):
    `tf.random.experimental.stateless_fold_in(seeds[b], salt)` (TensorFlow's own op on
    TensorFlow, `sampling.philox_fold_in_rows` elsewhere: the same numbers)."""
    if seeds is None:
        return None
    if not backend.is_tensorflow():
        return sampling.philox_fold_in_rows(seeds, salt)
    tf = backend.tensorflow()
    return tf.map_fn(lambda s: tf.random.experimental.stateless_fold_in(s, salt),
                     tf.cast(seeds, tf.int32), fn_output_signature=tf.int32)


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class AnchorTargetLayer(layers.Layer):
    """RPN targets: match anchors to ground truth and sample a balanced anchor set.

    Call: `anchors [N, 4]`, `gt_boxes [B, G, 4]`, `gt_classes [B, G]`, optional `seeds [B, 2]`
    int32 (per-image stateless sampling seeds) -> `(labels [B, N] int32:
    1 sampled positive, 0 sampled negative, -1 ignored; box_targets [B, N, 4] deltas with weights
    (1, 1, 1, 1))`. IoU >= `positive_iou` is positive, < `negative_iou` negative, and each ground
    truth's best anchors (ties included) are positive too (Detectron2's low-quality matches).
    At most `sampling.positive_quota(batch_per_image, positive_fraction, quota_rounding)`
    positives are sampled per image.
    """

    def __init__(self, positive_iou: float = 0.7, negative_iou: float = 0.3,
                 batch_per_image: int = 256, positive_fraction: float = 0.5,
                 quota_rounding: str = "round", **kwargs):
        super().__init__(**kwargs)
        self.positive_iou = float(positive_iou)
        self.negative_iou = float(negative_iou)
        self.batch_per_image = int(batch_per_image)
        self.positive_fraction = float(positive_fraction)
        sampling.positive_quota(1, 0.5, quota_rounding)  # checks the choice
        self.quota_rounding = quota_rounding

    def call(self, anchors, gt_boxes, gt_classes, seeds=None):
        iou, max_iou, matched, in_crowd = match_boxes(anchors, gt_boxes, gt_classes)
        best_per_gt = ops.max(iou, axis=1, keepdims=True)  # [B, 1, G]
        is_best = ops.any(ops.logical_and(iou == best_per_gt, best_per_gt > 0.0), axis=2)
        positive = ops.logical_or(max_iou >= self.positive_iou, is_best)
        negative = ops.logical_and(
            ops.logical_and(max_iou < self.negative_iou, ops.logical_not(positive)),
            ops.logical_not(in_crowd))
        pos, neg = sampling.subsample_labels(positive, negative, self.batch_per_image,
                                             self.positive_fraction, fold_seeds(seeds, 1),
                                             rounding=self.quota_rounding)
        labels = ops.where(pos, 1, ops.where(neg, 0, -1))
        labels = ops.cast(labels, "int32")
        matched_boxes = gather_rows(gt_boxes, matched)
        box_targets = box_ops.encode_boxes(matched_boxes, anchors[None], weights=(1.0, 1.0, 1.0, 1.0))
        box_targets = ops.where(pos[..., None], box_targets, 0.0)
        return ops.stop_gradient(labels), ops.stop_gradient(box_targets)

    def compute_output_spec(self, anchors, gt_boxes, gt_classes, seeds=None):
        """TensorFlow: inferred from `call` (as before); other backends: the static shapes
        (PyTorch's symbolic call runs on meta tensors, where the sampler cannot)."""
        if backend.is_tensorflow():
            return super().compute_output_spec(anchors, gt_boxes, gt_classes, seeds)
        batch, num = gt_boxes.shape[0], anchors.shape[-2]
        return (keras.KerasTensor((batch, num), "int32"),
                keras.KerasTensor((batch, num, 4), "float32"))

    def get_config(self):
        return {**super().get_config(), "positive_iou": self.positive_iou,
                "negative_iou": self.negative_iou, "batch_per_image": self.batch_per_image,
                "positive_fraction": self.positive_fraction,
                "quota_rounding": self.quota_rounding}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class DetectionTargetLayer(layers.Layer):
    """Samples RoIs from proposals + ground truth and builds their class, box and mask targets.

    Call: `proposals [B, R, 4]`, `num_proposals [B]`, `gt_boxes [B, G, 4]`, `gt_classes [B, G]`,
    `gt_masks`, optional `seeds [B, 2]` int32 (per-image sampling seeds), optional
    `image_shape [B, 2]` -> dict:
      `rois [B, S, 4]`, `class_targets [B, S]` int32 (0 background), `box_targets [B, S, 4]`
      (weights `box_coder_weights`), `weights [B, S]` float32 (1 for sampled slots),
      `mask_rois [B, F, 4]`, `mask_classes [B, F]` int32, `mask_targets [B, F, P, P]`,
      `mask_weights [B, F]` (1 for foreground RoIs).
    `mask_target_rule` "detectron2": `gt_masks [B, G, M, M]` mini masks, binary targets
    (`ops.masks.crop_mask_targets`); "torchvision": `gt_masks [B, G, H, W]` canvas masks and
    `image_shape` (h', w'), soft targets in [0, 1] (`ops.masks.project_masks`).
    Positives are placed first, so the F = `num_foreground` first slots (the positive quota,
    `sampling.positive_quota` with `quota_rounding`) hold them all.
    With `trim_masks` (outside XLA) the four mask outputs keep only the first F' slots, F' the
    largest foreground count of the batch: the mask head then runs on real foreground only.
    """

    OUTPUT_KEYS = ("rois", "class_targets", "box_targets", "weights", "mask_rois",
                   "mask_classes", "mask_targets", "mask_weights")

    def __init__(self, batch_per_image: int = 512, positive_fraction: float = 0.25,
                 foreground_iou: float = 0.5, box_coder_weights=(10.0, 10.0, 5.0, 5.0),
                 mask_size: int = 28, trim_masks: bool = False, quota_rounding: str = "round",
                 mask_target_rule: str = "detectron2", **kwargs):
        super().__init__(**kwargs)
        if mask_target_rule not in mask_ops.MASK_TARGET_RULES:
            raise ValueError(f"mask_target_rule must be one of {mask_ops.MASK_TARGET_RULES}, "
                             f"got {mask_target_rule!r}")
        sampling.positive_quota(1, 0.5, quota_rounding)  # checks the choice
        self.quota_rounding = quota_rounding
        self.mask_target_rule = mask_target_rule
        self.trim_masks = bool(trim_masks)
        self.batch_per_image = int(batch_per_image)
        self.positive_fraction = float(positive_fraction)
        self.foreground_iou = float(foreground_iou)
        self.box_coder_weights = tuple(float(w) for w in box_coder_weights)
        self.mask_size = int(mask_size)

    @property
    def num_foreground(self) -> int:
        """The positive quota per image (before clipping to the candidate count)."""
        return sampling.positive_quota(self.batch_per_image, self.positive_fraction,
                                       self.quota_rounding)

    def call(self, proposals, num_proposals, gt_boxes, gt_classes, gt_masks, seeds=None,
             image_shape=None):
        proposals = ops.stop_gradient(proposals)
        num_rois = backend.static_dim(proposals, 1)
        candidates = ops.concatenate([proposals, gt_boxes], axis=1)
        proposal_valid = ops.arange(num_rois, dtype="int32")[None, :] < ops.cast(
            num_proposals, "int32")[:, None]
        valid = ops.concatenate([proposal_valid, gt_classes > 0], axis=1)
        _, max_iou, matched, in_crowd = match_boxes(candidates, gt_boxes, gt_classes)
        positive = ops.logical_and(valid, max_iou >= self.foreground_iou)
        negative = ops.logical_and(ops.logical_and(valid, max_iou < self.foreground_iou),
                                   ops.logical_not(in_crowd))
        total = candidates.shape[1]
        num_samples = min(self.batch_per_image, total)
        pos, neg = sampling.subsample_labels(positive, negative, self.batch_per_image,
                                             self.positive_fraction, fold_seeds(seeds, 2),
                                             rounding=self.quota_rounding)
        indices, slot_valid, slot_positive = sampling.sampled_indices(pos, neg, num_samples)

        rois = gather_rows(candidates, indices)
        slot_matched = gather_rows(matched, indices)
        matched_boxes = gather_rows(gt_boxes, slot_matched)
        matched_classes = gather_rows(gt_classes, slot_matched)
        class_targets = ops.cast(ops.where(slot_positive, matched_classes, 0), "int32")
        box_targets = box_ops.encode_boxes(matched_boxes, rois, weights=self.box_coder_weights)
        box_targets = ops.where(slot_positive[..., None], box_targets, 0.0)
        rois = rois * ops.cast(slot_valid, "float32")[..., None]

        fg = min(self.num_foreground, num_samples)
        mask_rois, mask_positive, mask_matched, mask_classes = \
            rois[:, :fg], slot_positive[:, :fg], slot_matched[:, :fg], class_targets[:, :fg]
        if self.trim_masks:
            mask_rois, mask_positive, mask_matched, mask_classes = trim_padding(
                mask_positive, mask_rois, mask_positive, mask_matched, mask_classes)
        mask_weights = ops.cast(mask_positive, "float32")
        mask_targets = self._mask_targets(gt_masks, gt_boxes, gt_classes, mask_rois,
                                          mask_matched, image_shape)
        mask_targets = mask_targets * mask_weights[..., None, None]
        outputs = {
            "rois": rois,
            "class_targets": class_targets,
            "box_targets": box_targets,
            "weights": ops.cast(slot_valid, "float32"),
            "mask_rois": mask_rois,
            "mask_classes": mask_classes,
            "mask_targets": mask_targets,
            "mask_weights": mask_weights,
        }
        return {k: ops.stop_gradient(outputs[k]) for k in self.OUTPUT_KEYS}

    def compute_output_spec(self, proposals, num_proposals, gt_boxes, gt_classes, gt_masks,
                            seeds=None, image_shape=None):
        """TensorFlow: inferred from `call` (as before: F' unknown with `trim_masks`); other
        backends: the static shapes (S, F as in `call`; PyTorch's symbolic call runs on meta
        tensors, where the sampler cannot)."""
        if backend.is_tensorflow():
            return super().compute_output_spec(proposals, num_proposals, gt_boxes, gt_classes,
                                               gt_masks, seeds, image_shape)
        batch = proposals.shape[0]
        samples = min(self.batch_per_image, proposals.shape[1] + gt_boxes.shape[1])
        fg, size = min(self.num_foreground, samples), self.mask_size
        shapes = {"rois": ((samples, 4), proposals.dtype), "class_targets": ((samples,), "int32"),
                  "box_targets": ((samples, 4), "float32"), "weights": ((samples,), "float32"),
                  "mask_rois": ((fg, 4), proposals.dtype), "mask_classes": ((fg,), "int32"),
                  "mask_targets": ((fg, size, size), "float32"),
                  "mask_weights": ((fg,), "float32")}
        return {k: keras.KerasTensor((batch, *shapes[k][0]), shapes[k][1])
                for k in self.OUTPUT_KEYS}

    def _mask_targets(self, gt_masks, gt_boxes, gt_classes, rois, matched, image_shape):
        if self.mask_target_rule == "detectron2":
            return mask_ops.crop_mask_targets(gt_masks, gt_boxes, rois, matched,
                                              output_size=self.mask_size)
        # Only the ground-truth columns in use are cast to float32 (TensorFlow outside XLA).
        (gt_masks,) = trim_padding(gt_classes != 0, gt_masks)
        return mask_ops.project_masks(gt_masks, rois, matched, output_size=self.mask_size,
                                      image_shape=image_shape)

    def get_config(self):
        return {**super().get_config(), "batch_per_image": self.batch_per_image,
                "positive_fraction": self.positive_fraction,
                "foreground_iou": self.foreground_iou,
                "box_coder_weights": self.box_coder_weights, "mask_size": self.mask_size,
                "trim_masks": self.trim_masks, "quota_rounding": self.quota_rounding,
                "mask_target_rule": self.mask_target_rule}
