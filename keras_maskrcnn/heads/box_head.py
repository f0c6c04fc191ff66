"""Box head: two fully connected layers, class logits and class-specific box deltas."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


def box_predictors(num_classes: int) -> tuple[layers.Dense, layers.Dense]:
    """The class-logit (K + 1) and class-specific box-delta (4K) layers every box head ends with
    (Detectron2's initialization: normal std 0.01 and 0.001)."""
    class_logits = layers.Dense(
        num_classes + 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        name="class_logits")
    box_deltas = layers.Dense(
        4 * num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
        name="box_deltas")
    return class_logits, box_deltas


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class BoxHead(layers.Layer):
    """Call: pooled `[B, R, P, P, C]` -> `(class_logits [B, R, K + 1], deltas [B, R, K, 4])`.

    The pooled features are flattened in (y, x, channel) order, then fc `fc_dim` + ReLU twice.
    Logit 0 is background; deltas are (dy, dx, dh, dw) per object class 1..K, to be decoded with
    the box-coder weights (10, 10, 5, 5).
    """

    def __init__(self, num_classes: int, fc_dim: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.fc_dim = fc_dim
        self.fc1 = layers.Dense(fc_dim, activation="relu", name="fc1")
        self.fc2 = layers.Dense(fc_dim, activation="relu", name="fc2")
        self.class_logits, self.box_deltas = box_predictors(num_classes)

    def build(self, input_shape):
        flat = input_shape[2] * input_shape[3] * input_shape[4]
        self.fc1.build((None, flat))
        self.fc2.build((None, self.fc_dim))
        self.class_logits.build((None, self.fc_dim))
        self.box_deltas.build((None, self.fc_dim))

    def call(self, pooled):
        shape = tf.shape(pooled)
        batch, rois = shape[0], shape[1]
        flat_dim = pooled.shape[2] * pooled.shape[3] * pooled.shape[4]
        x = tf.reshape(pooled, [batch * rois, flat_dim])
        x = self.fc2(self.fc1(x))
        logits = tf.reshape(self.class_logits(x), [batch, rois, self.num_classes + 1])
        deltas = tf.reshape(self.box_deltas(x), [batch, rois, self.num_classes, 4])
        return logits, deltas

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "fc_dim": self.fc_dim}
