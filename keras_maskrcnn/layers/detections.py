"""DetectionLayer (box head outputs -> final padded detections) and mask selection."""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers

from keras_maskrcnn.ops import boxes as box_ops
from keras_maskrcnn.ops import nms as nms_ops


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class DetectionLayer(layers.Layer):
    """Softmax, per-class decode, clip, score threshold, per-class NMS, best `max_detections`.

    Call: `rois [B, R, 4]`, `num_rois [B]`, `class_logits [B, R, K + 1]`, `deltas [B, R, K, 4]`,
    `image_shape [B, 2]` -> `(boxes [B, D, 4] input pixels, scores [B, D], classes [B, D] int32
    in 1..K, num_detections [B] int32)`; rows past `num_detections` are zeros.
    """

    def __init__(self, score_threshold: float = 0.05, nms_threshold: float = 0.5,
                 max_detections: int = 100, min_box_size: float = 0.0,
                 box_coder_weights=(10.0, 10.0, 5.0, 5.0), **kwargs):
        # RoIs and image sizes stay float32 under mixed precision (no autocast to bfloat16,
        # which rounds pixel coordinates above 256 to steps of 2..8); head outputs are cast below.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_detections = int(max_detections)
        self.min_box_size = float(min_box_size)
        self.box_coder_weights = tuple(float(w) for w in box_coder_weights)

    def call(self, rois, num_rois, class_logits, deltas, image_shape):
        class_logits = tf.cast(class_logits, tf.float32)
        deltas = tf.cast(deltas, tf.float32)
        num_classes = deltas.shape[2]
        num_boxes = rois.shape[1]
        scores = tf.nn.softmax(class_logits, axis=-1)[..., 1:]  # [B, R, K]
        boxes = box_ops.decode_boxes(deltas, rois[:, :, None, :], weights=self.box_coder_weights,
                                     scale_clamp=math.log(1000.0 / 16))
        boxes = box_ops.clip_boxes(boxes, image_shape[:, None, :])
        heights = boxes[..., 2] - boxes[..., 0]
        widths = boxes[..., 3] - boxes[..., 1]
        roi_valid = tf.range(num_boxes)[None, :] < num_rois[:, None]
        keep = (roi_valid[..., None] & (heights >= self.min_box_size)
                & (widths >= self.min_box_size))
        scores = tf.where(keep, scores, -1.0)
        batch = tf.shape(boxes)[0]
        flat_boxes = tf.reshape(boxes, [batch, num_boxes * num_classes, 4])
        flat_scores = tf.reshape(scores, [batch, num_boxes * num_classes])
        flat_classes = tf.tile(tf.range(1, num_classes + 1)[None, None, :], [batch, num_boxes, 1])
        flat_classes = tf.reshape(flat_classes, [batch, num_boxes * num_classes])
        indices, num_valid = nms_ops.grouped_nms_padded(
            flat_boxes, flat_scores, flat_classes, max_output_size=self.max_detections,
            iou_threshold=self.nms_threshold, score_threshold=self.score_threshold)
        valid = tf.range(self.max_detections)[None, :] < num_valid[:, None]
        valid_f = tf.cast(valid, tf.float32)
        out_boxes = tf.gather(flat_boxes, indices, batch_dims=1) * valid_f[..., None]
        out_scores = tf.gather(flat_scores, indices, batch_dims=1) * valid_f
        out_classes = tf.where(valid, tf.gather(flat_classes, indices, batch_dims=1), 0)
        return out_boxes, out_scores, out_classes, num_valid

    def get_config(self):
        return {**super().get_config(), "score_threshold": self.score_threshold,
                "nms_threshold": self.nms_threshold, "max_detections": self.max_detections,
                "min_box_size": self.min_box_size, "box_coder_weights": self.box_coder_weights}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class MaskSelector(layers.Layer):
    """Call: `mask_logits [B, D, P, P, K]`, `classes [B, D]` (1..K, 0 padding) ->
    `[B, D, P, P]` sigmoid probabilities of each detection's class (zeros on padding)."""

    def call(self, mask_logits, classes):
        # Gathered on the class axis in place (no transpose first): OpenVINO's TF frontend
        # fails on a Transpose feeding a Gather with batch_dims (its transpose sinking).
        picked = tf.gather(tf.cast(mask_logits, tf.float32), tf.maximum(classes - 1, 0), axis=4,
                           batch_dims=2)
        return tf.sigmoid(picked) * tf.cast(classes > 0, tf.float32)[..., None, None]
