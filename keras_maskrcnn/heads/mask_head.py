"""Mask head: a small FCN on 14x14 pooled features, upsampled to 28x28 class masks."""

from __future__ import annotations

import keras
from keras import layers, ops

from keras_maskrcnn.layers.conv_norm import (
    apply_conv_norm_stack,
    build_conv_norm_stack,
    check_norm,
    conv_norm_stack,
    msra_init,
)
from keras_maskrcnn.layers.upsample import PatchConvTranspose
from keras_maskrcnn.ops.shapes import run_time_dims


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class MaskHead(layers.Layer):
    """Call: pooled `[B, R, P, P, C]` -> mask logits `[B, R, 2P, 2P, K]` in the input's dtype.

    `num_convs` x (3x3 conv `conv_dim` [+ BatchNorm] + ReLU), a 2x2 stride-2 transposed conv +
    ReLU (`layers.upsample.PatchConvTranspose`: one matrix product off TensorFlow), and a 1x1
    conv to one logit map per object class 1..K (channel k-1 is class k).
    torchvision's v2 adds BatchNorm (norm "bn"); `training` switches it to batch statistics.

    Weights: `convs`, `norms` (None entries for norm "none"), `upsample`, `predictor`.
    """

    def __init__(self, num_classes: int, conv_dim: int = 256, num_convs: int = 4,
                 norm: str = "none", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.conv_dim = int(conv_dim)
        self.num_convs = int(num_convs)
        self.norm = check_norm(norm)
        self.convs, self.norms = conv_norm_stack(self.num_convs, self.conv_dim, self.norm)
        self.upsample = PatchConvTranspose(self.conv_dim, 2, activation="relu",
                                           kernel_initializer=msra_init(), name="upsample")
        self.predictor = layers.Conv2D(
            self.num_classes, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            name="predictor")

    def build(self, input_shape):
        channels = build_conv_norm_stack(self.convs, self.norms, input_shape[-1])
        self.upsample.build((None, None, None, channels))
        self.predictor.build((None, None, None, self.conv_dim))

    def call(self, pooled, training=None):
        batch, rois = run_time_dims(pooled, 2)
        size, channels = pooled.shape[2], pooled.shape[4]
        x = ops.reshape(pooled, [batch * rois, size, size, channels])
        x = apply_conv_norm_stack(x, self.convs, self.norms, training)
        x = self.predictor(self.upsample(x))
        return ops.reshape(x, [batch, rois, 2 * size, 2 * size, self.num_classes])

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "conv_dim": self.conv_dim, "num_convs": self.num_convs, "norm": self.norm}
