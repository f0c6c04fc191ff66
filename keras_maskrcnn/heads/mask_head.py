"""Mask head: a small FCN on 14x14 pooled features, upsampled to 28x28 class masks."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class MaskHead(layers.Layer):
    """Call: pooled `[B, R, P, P, C]` -> mask logits `[B, R, 2P, 2P, K]`.

    `num_convs` x (3x3 conv `conv_dim` + ReLU), a 2x2 stride-2 transposed conv + ReLU, and a 1x1
    conv to one logit map per object class 1..K (channel k-1 is class k).
    """

    def __init__(self, num_classes: int, conv_dim: int = 256, num_convs: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.conv_dim = conv_dim
        self.num_convs = num_convs
        msra = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
        self.convs = [
            layers.Conv2D(conv_dim, 3, padding="same", activation="relu", kernel_initializer=msra,
                          name=f"conv{i + 1}")
            for i in range(num_convs)
        ]
        self.upsample = layers.Conv2DTranspose(conv_dim, 2, strides=2, activation="relu",
                                               kernel_initializer=msra, name="upsample")
        self.predictor = layers.Conv2D(
            num_classes, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            name="predictor")

    def build(self, input_shape):
        channels = input_shape[-1]
        for conv in self.convs:
            conv.build((None, None, None, channels))
            channels = self.conv_dim
        self.upsample.build((None, None, None, channels))
        self.predictor.build((None, None, None, self.conv_dim))

    def call(self, pooled):
        shape = tf.shape(pooled)
        batch, rois = shape[0], shape[1]
        size, channels = pooled.shape[2], pooled.shape[4]
        x = tf.reshape(pooled, [batch * rois, size, size, channels])
        for conv in self.convs:
            x = conv(x)
        x = self.predictor(self.upsample(x))
        return tf.reshape(x, [batch, rois, 2 * size, 2 * size, self.num_classes])

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "conv_dim": self.conv_dim, "num_convs": self.num_convs}
