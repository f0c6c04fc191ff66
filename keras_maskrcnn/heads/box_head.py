"""Box head: optional 3x3 convs (+ BatchNorm), fully connected layers, then class logits and
class-specific box deltas."""

from __future__ import annotations

import keras
from keras import layers, ops

from keras_maskrcnn.layers.conv_norm import (
    apply_conv_norm_stack,
    build_conv_norm_stack,
    check_norm,
    conv_norm_stack,
)
from keras_maskrcnn.ops.shapes import run_time_dims


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
    """Call: pooled `[B, R, P, P, C]` -> `(class_logits [B, R, K + 1], deltas [B, R, K, 4])` in
    the input's dtype.

    `num_convs` x (3x3 conv `conv_dim` [+ BatchNorm] + ReLU), flatten in (y, x, channel) order,
    `num_fcs` x (fc `fc_dim` + ReLU), then class logits (0 = background) and class-specific
    deltas (dy, dx, dh, dw) for classes 1..K, decoded with the box-coder weights (10, 10, 5, 5).
    Detectron2 / torchvision v1: no convs, two fcs; torchvision's v2: four convs with BatchNorm,
    one fc. `training` switches the BatchNorms to batch statistics.

    Weights: `convs`, `norms` (None entries for norm "none"), `fcs`, `class_logits`,
    `box_deltas`. (Files saved when the fcs were also the attributes `fc1`, `fc2`, ... are moved
    by `saving.migration`.)
    """

    def __init__(self, num_classes: int, conv_dim: int = 256, num_convs: int = 0,
                 fc_dim: int = 1024, num_fcs: int = 2, norm: str = "none", **kwargs):
        super().__init__(**kwargs)
        if num_convs < 0 or num_fcs < 1:
            raise ValueError(f"BoxHead needs num_convs >= 0 and num_fcs >= 1, got {num_convs} "
                             f"and {num_fcs}")
        self.num_classes = int(num_classes)
        self.conv_dim = int(conv_dim)
        self.num_convs = int(num_convs)
        self.fc_dim = int(fc_dim)
        self.num_fcs = int(num_fcs)
        self.norm = check_norm(norm)
        self.convs, self.norms = conv_norm_stack(self.num_convs, self.conv_dim, self.norm)
        self.fcs = [layers.Dense(self.fc_dim, activation="relu", name=f"fc{i + 1}")
                    for i in range(self.num_fcs)]
        self.class_logits, self.box_deltas = box_predictors(self.num_classes)

    def build(self, input_shape):
        size_y, size_x = input_shape[2], input_shape[3]
        channels = build_conv_norm_stack(self.convs, self.norms, input_shape[4])
        width = size_y * size_x * channels
        for fc in self.fcs:
            fc.build((None, width))
            width = self.fc_dim
        self.class_logits.build((None, width))
        self.box_deltas.build((None, width))

    def call(self, pooled, training=None):
        batch, rois = run_time_dims(pooled, 2)
        size_y, size_x, channels = pooled.shape[2], pooled.shape[3], pooled.shape[4]
        x = ops.reshape(pooled, [batch * rois, size_y, size_x, channels])
        x = apply_conv_norm_stack(x, self.convs, self.norms, training)
        x = ops.reshape(x, [batch * rois, size_y * size_x * x.shape[-1]])
        for fc in self.fcs:
            x = fc(x)
        logits = ops.reshape(self.class_logits(x), [batch, rois, self.num_classes + 1])
        deltas = ops.reshape(self.box_deltas(x), [batch, rois, self.num_classes, 4])
        return logits, deltas

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "conv_dim": self.conv_dim, "num_convs": self.num_convs, "fc_dim": self.fc_dim,
                "num_fcs": self.num_fcs, "norm": self.norm}
