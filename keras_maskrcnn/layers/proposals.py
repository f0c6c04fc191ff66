"""ProposalLayer: RPN outputs -> a fixed number of proposals per image."""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers

from keras_maskrcnn.ops import boxes as box_ops
from keras_maskrcnn.ops import nms as nms_ops


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class ProposalLayer(layers.Layer):
    """Per-level top-k, decode, clip, drop tiny boxes, per-level NMS, keep the best overall.

    Call: `logits [B, N]`, `deltas [B, N, 4]` (weights 1, 1, 1, 1), `anchors [N, 4]`,
    `image_shape [B, 2]` -> `(proposals [B, R, 4] input pixels, num_valid [B] int32)` with
    `R = post_nms_topk`; rows past `num_valid` are zeros.
    `level_sizes` are the anchor counts of each level (`AnchorGenerator.level_sizes`).
    Proposals carry no gradient (as in Detectron2 and torchvision).
    """

    def __init__(self, level_sizes, pre_nms_topk: int = 1000, post_nms_topk: int = 1000,
                 nms_threshold: float = 0.7, min_box_size: float = 0.0, **kwargs):
        # Anchors and image sizes stay float32 under mixed precision (no autocast to bfloat16,
        # which rounds pixel coordinates above 256 to steps of 2..8); RPN outputs are cast below.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.level_sizes = tuple(int(n) for n in level_sizes)
        self.pre_nms_topk = int(pre_nms_topk)
        self.post_nms_topk = int(post_nms_topk)
        self.nms_threshold = float(nms_threshold)
        self.min_box_size = float(min_box_size)

    def call(self, logits, deltas, anchors, image_shape, level_sizes=None):
        """`level_sizes` (`[L]` int32 tensor, optional) replaces the static level sizes for a
        canvas known only at run time (shape-polymorphic inference)."""
        logits = tf.stop_gradient(tf.cast(logits, tf.float32))
        deltas = tf.stop_gradient(tf.cast(deltas, tf.float32))
        all_boxes, all_scores, all_levels = [], [], []
        for level, (level_logits, level_deltas, level_anchors, k) in enumerate(
                self.split_levels(logits, deltas, anchors, level_sizes)):
            top_logits, top_idx = tf.math.top_k(level_logits, k=k, sorted=True)
            level_deltas = tf.gather(level_deltas, top_idx, batch_dims=1)
            level_anchors = tf.gather(level_anchors, top_idx)
            boxes = box_ops.decode_boxes(level_deltas, level_anchors, weights=(1.0, 1.0, 1.0, 1.0),
                                         scale_clamp=math.log(1000.0 / 16))
            boxes = box_ops.clip_boxes(boxes, image_shape)
            heights = boxes[..., 2] - boxes[..., 0]
            widths = boxes[..., 3] - boxes[..., 1]
            keep = ((heights >= self.min_box_size) & (widths >= self.min_box_size)
                    & (heights > 0) & (widths > 0))
            # Probabilities are >= 0, so -1 marks a removed box below the NMS score threshold.
            scores = tf.where(keep, tf.sigmoid(top_logits), -1.0)
            all_boxes.append(boxes)
            all_scores.append(scores)
            all_levels.append(tf.fill(tf.shape(top_idx), level))
        boxes = tf.concat(all_boxes, axis=1)
        scores = tf.concat(all_scores, axis=1)
        levels = tf.concat(all_levels, axis=1)
        indices, num_valid = nms_ops.grouped_nms_padded(
            boxes, scores, levels, max_output_size=self.post_nms_topk,
            iou_threshold=self.nms_threshold, score_threshold=-0.5)
        valid = tf.range(self.post_nms_topk)[None, :] < num_valid[:, None]
        proposals = tf.gather(boxes, indices, batch_dims=1) * tf.cast(valid, tf.float32)[..., None]
        return proposals, num_valid

    def split_levels(self, logits, deltas, anchors, level_sizes=None):
        """Per level: (logits [B, n], deltas [B, n, 4], anchors [n, 4], top-k count k), with
        static sizes or, given `level_sizes` [L] int32, sizes known when the graph runs."""
        if level_sizes is None:
            starts = [sum(self.level_sizes[:i]) for i in range(len(self.level_sizes))]
            return [(logits[:, a:a + n], deltas[:, a:a + n], anchors[a:a + n],
                     min(self.pre_nms_topk, n)) for a, n in zip(starts, self.level_sizes,
                                                                strict=True)]
        count = len(self.level_sizes)
        level_sizes = tf.cast(level_sizes, tf.int32)
        pieces = zip(tf.split(logits, level_sizes, axis=1, num=count),
                     tf.split(deltas, level_sizes, axis=1, num=count),
                     tf.split(anchors, level_sizes, axis=0, num=count),
                     tf.unstack(tf.minimum(level_sizes, self.pre_nms_topk), num=count),
                     strict=True)
        return list(pieces)

    def get_config(self):
        return {**super().get_config(), "level_sizes": self.level_sizes,
                "pre_nms_topk": self.pre_nms_topk, "post_nms_topk": self.post_nms_topk,
                "nms_threshold": self.nms_threshold, "min_box_size": self.min_box_size}
