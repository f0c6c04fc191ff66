"""Loss layers: the five Mask R-CNN losses as scalars, each named for the progress bar.

Normalizations follow Detectron2: RPN losses are sums over sampled anchors divided by
`batch_per_image * B` (or, with `normalizer="sampled"`, by the number of anchors sampled in the
batch: torchvision's mean over sampled anchors); the box loss is a sum over foreground RoIs
divided by the number of sampled RoIs; classification is the mean over sampled RoIs; the mask
loss is the mean per-pixel binary cross-entropy over foreground RoIs, on the ground-truth class
channel only.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


def smooth_l1(x: tf.Tensor, beta: float) -> tf.Tensor:
    """Element-wise smooth L1: 0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta (L1 at beta 0)."""
    absx = tf.abs(x)
    if beta <= 0.0:
        return absx
    return tf.where(absx < beta, 0.5 * tf.square(x) / beta, absx - 0.5 * beta)


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class RPNLoss(layers.Layer):
    """Call: `logits [B, N]`, `deltas [B, N, 4]`, `labels [B, N]` (1/0/-1), `box_targets [B, N, 4]`
    -> `(objectness_loss, box_loss)` float32 scalars: sums over the sampled anchors (labels
    >= 0; box loss over positives) divided by `batch_per_image * B` (`normalizer="batch"`) or
    by the number of sampled anchors in the batch, at least 1 (`"sampled"`)."""

    NORMALIZERS = ("batch", "sampled")

    def __init__(self, batch_per_image: int = 256, beta: float = 0.0, normalizer: str = "batch",
                 **kwargs):
        super().__init__(**kwargs)
        if normalizer not in self.NORMALIZERS:
            raise ValueError(f"RPNLoss normalizer must be one of {self.NORMALIZERS}, got "
                             f"{normalizer!r}")
        self.batch_per_image = int(batch_per_image)
        self.beta = float(beta)
        self.normalizer = normalizer

    def call(self, logits, deltas, labels, box_targets):
        logits = tf.cast(logits, tf.float32)
        deltas = tf.cast(deltas, tf.float32)
        sampled = tf.cast(labels >= 0, tf.float32)
        positive = tf.cast(labels == 1, tf.float32)
        if self.normalizer == "sampled":
            normalizer = tf.maximum(tf.reduce_sum(sampled), 1.0)
        else:
            normalizer = tf.cast(self.batch_per_image * tf.shape(labels)[0], tf.float32)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=positive, logits=logits)
        objectness = tf.reduce_sum(bce * sampled) / normalizer
        box = tf.reduce_sum(smooth_l1(deltas - box_targets, self.beta) * positive[..., None])
        return objectness, box / normalizer

    def get_config(self):
        return {**super().get_config(), "batch_per_image": self.batch_per_image, "beta": self.beta,
                "normalizer": self.normalizer}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class BoxHeadLoss(layers.Layer):
    """Call: `class_logits [B, S, K + 1]`, `deltas [B, S, K, 4]`, `class_targets [B, S]`,
    `box_targets [B, S, 4]`, `weights [B, S]` -> `(class_loss, box_loss)` float32 scalars."""

    def __init__(self, beta: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.beta = float(beta)

    def call(self, class_logits, deltas, class_targets, box_targets, weights):
        class_logits = tf.cast(class_logits, tf.float32)
        deltas = tf.cast(deltas, tf.float32)
        count = tf.maximum(tf.reduce_sum(weights), 1.0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=class_targets,
                                                            logits=class_logits)
        class_loss = tf.reduce_sum(ce * weights) / count
        foreground = tf.cast(class_targets > 0, tf.float32) * weights
        class_index = tf.maximum(class_targets - 1, 0)
        picked = tf.gather(deltas, class_index, batch_dims=2)  # [B, S, 4]
        box = tf.reduce_sum(smooth_l1(picked - box_targets, self.beta) * foreground[..., None])
        return class_loss, box / count

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class MaskLoss(layers.Layer):
    """Call: `mask_logits [B, F, P, P, K]`, `mask_classes [B, F]`, `mask_targets [B, F, P, P]`
    (binary, or soft in [0, 1] with `mask_target_rule="torchvision"`), `mask_weights [B, F]` ->
    mean binary cross-entropy on the ground-truth class channel."""

    def call(self, mask_logits, mask_classes, mask_targets, mask_weights):
        mask_logits = tf.cast(mask_logits, tf.float32)
        logits = tf.transpose(mask_logits, [0, 1, 4, 2, 3])  # [B, F, K, P, P]
        picked = tf.gather(logits, tf.maximum(mask_classes - 1, 0), batch_dims=2)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=mask_targets, logits=picked)
        per_roi = tf.reduce_mean(bce, axis=[2, 3])
        return tf.reduce_sum(per_roi * mask_weights) / tf.maximum(tf.reduce_sum(mask_weights), 1.0)
