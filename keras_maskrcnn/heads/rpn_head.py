"""Region proposal network head, shared across FPN levels."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class RPNHead(layers.Layer):
    """3x3 conv + ReLU, then 1x1 objectness (A) and 1x1 box deltas (4A), on every level.

    Call: `features` list of `[B, H_l, W_l, C]` -> `(logits [B, N], deltas [B, N, 4])`, where the
    anchors of all levels are concatenated in level order, location-major, then anchor; deltas are
    (dy, dx, dh, dw) as `ops.boxes.encode_boxes` with weights (1, 1, 1, 1).
    """

    def __init__(self, num_anchors: int, channels: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = num_anchors
        self.channels = channels
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.conv = layers.Conv2D(channels, 3, padding="same", activation="relu",
                                  kernel_initializer=init, name="conv")
        self.objectness = layers.Conv2D(num_anchors, 1, kernel_initializer=init, name="objectness")
        self.deltas = layers.Conv2D(4 * num_anchors, 1, kernel_initializer=init, name="deltas")

    def build(self, input_shape):
        channels_in = input_shape[0][-1]
        self.conv.build((None, None, None, channels_in))
        self.objectness.build((None, None, None, self.channels))
        self.deltas.build((None, None, None, self.channels))

    def call(self, features):
        logits, deltas = [], []
        for feature in features:
            x = self.conv(feature)
            batch = tf.shape(x)[0]
            logits.append(tf.reshape(self.objectness(x), [batch, -1]))
            deltas.append(tf.reshape(self.deltas(x), [batch, -1, 4]))
        return tf.concat(logits, axis=1), tf.concat(deltas, axis=1)

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors, "channels": self.channels}
