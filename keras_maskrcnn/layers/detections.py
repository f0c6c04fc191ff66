"""DetectionLayer (box head outputs -> final padded detections) and mask selection."""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from keras_maskrcnn import backend
from keras_maskrcnn.ops import boxes as box_ops
from keras_maskrcnn.ops import nms as nms_ops
from keras_maskrcnn.ops.gather import batch_gather
from keras_maskrcnn.ops.shapes import run_time_dims


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class DetectionLayer(layers.Layer):
    """Softmax, per-class decode, clip, score threshold, per-class NMS, best `max_detections`.

    Call: `rois [B, R, 4]`, `num_rois [B]`, `class_logits [B, R, K + 1]`, `deltas [B, R, K, 4]`,
    `image_shape [B, 2]` -> `(boxes [B, D, 4] input pixels, scores [B, D], classes [B, D] int32
    in 1..K, num_detections [B] int32)`; rows past `num_detections` are zeros.

    Runs on every Keras backend (`keras.ops`; NMS: `ops.nms`, the TF kernel on TensorFlow, the
    portable loop on JAX / PyTorch).
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
        class_logits = ops.cast(class_logits, "float32")
        deltas = ops.cast(deltas, "float32")
        num_classes = deltas.shape[2]
        num_boxes = rois.shape[1]
        scores = ops.softmax(class_logits, axis=-1)[..., 1:]  # [B, R, K]
        boxes = box_ops.decode_boxes(deltas, rois[:, :, None, :], weights=self.box_coder_weights,
                                     scale_clamp=math.log(1000.0 / 16))
        boxes = box_ops.clip_boxes(boxes, image_shape[:, None, :])
        heights = boxes[..., 2] - boxes[..., 0]
        widths = boxes[..., 3] - boxes[..., 1]
        roi_valid = ops.arange(num_boxes, dtype="int32")[None, :] < ops.cast(num_rois, "int32")[:, None]
        keep = (roi_valid[..., None] & (heights >= self.min_box_size)
                & (widths >= self.min_box_size))
        scores = ops.where(keep, scores, -1.0)
        (batch,) = run_time_dims(boxes, 1)
        flat_boxes = ops.reshape(boxes, [batch, num_boxes * num_classes, 4])
        flat_scores = ops.reshape(scores, [batch, num_boxes * num_classes])
        flat_classes = ops.tile(ops.arange(1, num_classes + 1, dtype="int32")[None, None, :],
                                [batch, num_boxes, 1])
        flat_classes = ops.reshape(flat_classes, [batch, num_boxes * num_classes])
        indices, num_valid = nms_ops.grouped_nms_padded(
            flat_boxes, flat_scores, flat_classes, max_output_size=self.max_detections,
            iou_threshold=self.nms_threshold, score_threshold=self.score_threshold)
        valid = ops.arange(self.max_detections, dtype="int32")[None, :] < num_valid[:, None]
        valid_f = ops.cast(valid, "float32")
        out_boxes = batch_gather(flat_boxes, indices) * valid_f[..., None]
        out_scores = batch_gather(flat_scores, indices) * valid_f
        out_classes = ops.where(valid, batch_gather(flat_classes, indices), 0)
        return out_boxes, out_scores, out_classes, num_valid

    def compute_output_spec(self, rois, num_rois, class_logits, deltas, image_shape):
        # Declared, not traced: the NMS loop cannot run on torch's meta tensors.
        batch, count = rois.shape[0], self.max_detections
        return (keras.KerasTensor((batch, count, 4), dtype="float32"),
                keras.KerasTensor((batch, count), dtype="float32"),
                keras.KerasTensor((batch, count), dtype="int32"),
                keras.KerasTensor((batch,), dtype="int32"))

    def get_config(self):
        return {**super().get_config(), "score_threshold": self.score_threshold,
                "nms_threshold": self.nms_threshold, "max_detections": self.max_detections,
                "min_box_size": self.min_box_size, "box_coder_weights": self.box_coder_weights}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class MaskSelector(layers.Layer):
    """Call: `mask_logits [B, D, P, P, K]`, `classes [B, D]` (1..K, 0 padding) ->
    `[B, D, P, P]` sigmoid probabilities of each detection's class (zeros on padding)."""

    def call(self, mask_logits, classes):
        mask_logits = ops.cast(mask_logits, "float32")
        channel = ops.maximum(ops.cast(classes, "int32") - 1, 0)  # [B, D]
        if backend.is_tensorflow():
            # Gathered on the class axis in place (no transpose first): OpenVINO's TF frontend
            # fails on a Transpose feeding a Gather with batch_dims (its transpose sinking).
            # Kept for the exporters; equal to the portable gather below (tests/portable).
            tf = backend.tensorflow()
            picked = tf.gather(mask_logits, channel, axis=4, batch_dims=2)
        else:
            shape = tuple(ops.shape(mask_logits)[:4]) + (1,)
            index = ops.broadcast_to(channel[:, :, None, None, None], shape)
            picked = ops.take_along_axis(mask_logits, index, axis=4)[..., 0]
        return ops.sigmoid(picked) * ops.cast(classes > 0, "float32")[..., None, None]
