"""ProposalLayer: RPN outputs -> a fixed number of proposals per image."""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from keras_maskrcnn import backend
from keras_maskrcnn.ops import boxes as box_ops
from keras_maskrcnn.ops import nms as nms_ops
from keras_maskrcnn.ops.gather import batch_gather


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class ProposalLayer(layers.Layer):
    """Per-level top-k, decode, clip, drop tiny boxes, per-level NMS, keep the best overall.

    Call: `logits [B, N]`, `deltas [B, N, 4]` (weights 1, 1, 1, 1), `anchors [N, 4]`,
    `image_shape [B, 2]` -> `(proposals [B, R, 4] input pixels, num_valid [B] int32)` with
    `R = post_nms_topk`; rows past `num_valid` are zeros.
    `level_sizes` are the anchor counts of each level (`AnchorGenerator.level_sizes`).
    Proposals carry no gradient (as in Detectron2 and torchvision).

    Runs on every Keras backend (`keras.ops`; NMS: `ops.nms`, the TF kernel on TensorFlow, the
    portable loop on JAX / PyTorch). `level_sizes` given at call time (a canvas size known only
    when TensorFlow's graph runs) is TensorFlow only.
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
        logits = ops.stop_gradient(ops.cast(logits, "float32"))
        deltas = ops.stop_gradient(ops.cast(deltas, "float32"))
        all_boxes, all_scores, all_levels = [], [], []
        for level, (level_logits, level_deltas, level_anchors, k) in enumerate(
                self.split_levels(logits, deltas, anchors, level_sizes)):
            top_logits, top_idx = ops.top_k(level_logits, k=k, sorted=True)
            level_deltas = batch_gather(level_deltas, top_idx)
            level_anchors = ops.take(level_anchors, top_idx, axis=0)
            boxes = box_ops.decode_boxes(level_deltas, level_anchors, weights=(1.0, 1.0, 1.0, 1.0),
                                         scale_clamp=math.log(1000.0 / 16))
            boxes = box_ops.clip_boxes(boxes, image_shape)
            heights = boxes[..., 2] - boxes[..., 0]
            widths = boxes[..., 3] - boxes[..., 1]
            keep = ((heights >= self.min_box_size) & (widths >= self.min_box_size)
                    & (heights > 0) & (widths > 0))
            # Probabilities are >= 0, so -1 marks a removed box below the NMS score threshold.
            scores = ops.where(keep, ops.sigmoid(top_logits), -1.0)
            all_boxes.append(boxes)
            all_scores.append(scores)
            all_levels.append(ops.full_like(top_idx, level, dtype="int32"))
        boxes = ops.concatenate(all_boxes, axis=1)
        scores = ops.concatenate(all_scores, axis=1)
        levels = ops.concatenate(all_levels, axis=1)
        indices, num_valid = nms_ops.grouped_nms_padded(
            boxes, scores, levels, max_output_size=self.post_nms_topk,
            iou_threshold=self.nms_threshold, score_threshold=-0.5)
        valid = ops.arange(self.post_nms_topk, dtype="int32")[None, :] < num_valid[:, None]
        proposals = batch_gather(boxes, indices) * ops.cast(valid, "float32")[..., None]
        return proposals, num_valid

    def compute_output_spec(self, logits, deltas, anchors, image_shape, level_sizes=None):
        # Declared, not traced: the NMS loop cannot run on torch's meta tensors.
        batch = logits.shape[0]
        return (keras.KerasTensor((batch, self.post_nms_topk, 4), dtype="float32"),
                keras.KerasTensor((batch,), dtype="int32"))

    def split_levels(self, logits, deltas, anchors, level_sizes=None):
        """Per level: (logits [B, n], deltas [B, n, 4], anchors [n, 4], top-k count k), with
        static sizes or, given `level_sizes` [L] int32, sizes known when the graph runs."""
        if level_sizes is None:
            starts = [sum(self.level_sizes[:i]) for i in range(len(self.level_sizes))]
            return [(logits[:, a:a + n], deltas[:, a:a + n], anchors[a:a + n],
                     min(self.pre_nms_topk, n)) for a, n in zip(starts, self.level_sizes,
                                                                strict=True)]
        tf = backend.tensorflow()  # sizes known only when TensorFlow's graph runs
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
