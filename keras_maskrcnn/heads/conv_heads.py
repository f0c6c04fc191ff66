"""Head variants of torchvision's `maskrcnn_resnet50_fpn_v2` (Li et al. 2021, arXiv:2111.11429),
and the factories that pick a head from a `MaskRCNNConfig`.

- `ConvRPNHead`: `num_convs` 3x3 convs + ReLU (v2: 2) before the objectness / delta convs.
- `ConvFCBoxHead`: `num_convs` 3x3 convs (+ BatchNorm) + ReLU, flatten, `num_fcs` fully connected
  layers + ReLU (v2: 4 convs, 1 fc), then the class and box predictors.
- `NormMaskHead`: the mask head with BatchNorm after each 3x3 conv.

With norm "bn" the convs have no bias (the BatchNorm's beta replaces it), as in torchvision's
`Conv2dNormActivation`. Output conventions are those of `RPNHead`, `BoxHead` and `MaskHead`.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from keras_maskrcnn.heads.box_head import BoxHead, box_predictors
from keras_maskrcnn.heads.mask_head import MaskHead
from keras_maskrcnn.heads.rpn_head import RPNHead

NORMS = ("none", "bn")


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _msra():
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _conv_norm_stack(count: int, dim: int, norm: str, prefix: str = "conv"):
    """`count` 3x3 convs (no bias when normalized) and their BatchNorms (None for "none")."""
    convs = [layers.Conv2D(dim, 3, padding="same", use_bias=norm == "none",
                           kernel_initializer=_msra(), name=f"{prefix}{i + 1}")
             for i in range(count)]
    norms = [layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"norm{i + 1}")
             if norm == "bn" else None for i in range(count)]
    return convs, norms


def _apply_stack(x, convs, norms, training):
    for conv, norm in zip(convs, norms, strict=True):
        x = conv(x)
        if norm is not None:
            x = norm(x, training=training)
        x = tf.nn.relu(x)
    return x


def _build_stack(convs, norms, channels: int, dim: int) -> int:
    for conv, norm in zip(convs, norms, strict=True):
        conv.build((None, None, None, channels))
        if norm is not None:
            norm.build((None, None, None, dim))
        channels = dim
    return channels


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class ConvRPNHead(layers.Layer):
    """`num_convs` x (3x3 conv + ReLU), then 1x1 objectness (A) and 1x1 deltas (4A), per level.

    Call: `features` list of `[B, H_l, W_l, C]` -> `(logits [B, N], deltas [B, N, 4])` in the
    order of `RPNHead` (level, location, anchor); deltas (dy, dx, dh, dw), weights (1, 1, 1, 1).
    """

    def __init__(self, num_anchors: int, channels: int = 256, num_convs: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = num_anchors
        self.channels = channels
        self.num_convs = num_convs
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.convs = [layers.Conv2D(channels, 3, padding="same", activation="relu",
                                    kernel_initializer=init, name=f"conv{i + 1}")
                      for i in range(num_convs)]
        self.objectness = layers.Conv2D(num_anchors, 1, kernel_initializer=init, name="objectness")
        self.deltas = layers.Conv2D(4 * num_anchors, 1, kernel_initializer=init, name="deltas")

    def build(self, input_shape):
        channels = input_shape[0][-1]
        for conv in self.convs:
            conv.build((None, None, None, channels))
            channels = self.channels
        self.objectness.build((None, None, None, channels))
        self.deltas.build((None, None, None, channels))

    def call(self, features):
        logits, deltas = [], []
        for feature in features:
            x = feature
            for conv in self.convs:
                x = conv(x)
            batch = tf.shape(x)[0]
            logits.append(tf.reshape(self.objectness(x), [batch, -1]))
            deltas.append(tf.reshape(self.deltas(x), [batch, -1, 4]))
        return tf.concat(logits, axis=1), tf.concat(deltas, axis=1)

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors,
                "channels": self.channels, "num_convs": self.num_convs}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class ConvFCBoxHead(layers.Layer):
    """Call: pooled `[B, R, P, P, C]` -> `(class_logits [B, R, K + 1], deltas [B, R, K, 4])`.

    `num_convs` x (3x3 conv `conv_dim` [+ BatchNorm] + ReLU), flatten in (y, x, channel) order,
    `num_fcs` x (fc `fc_dim` + ReLU), then class logits (0 = background) and class-specific
    deltas (dy, dx, dh, dw) for classes 1..K (weights (10, 10, 5, 5)).
    """

    def __init__(self, num_classes: int, conv_dim: int = 256, num_convs: int = 4,
                 fc_dim: int = 1024, num_fcs: int = 1, norm: str = "bn", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.conv_dim = conv_dim
        self.num_convs = num_convs
        self.fc_dim = fc_dim
        self.num_fcs = num_fcs
        self.norm = _check_norm(norm)
        self.convs, self.norms = _conv_norm_stack(num_convs, conv_dim, norm)
        self.fcs = [layers.Dense(fc_dim, activation="relu", name=f"fc{i + 1}")
                    for i in range(num_fcs)]
        self.class_logits, self.box_deltas = box_predictors(num_classes)

    def build(self, input_shape):
        size_y, size_x = input_shape[2], input_shape[3]
        channels = _build_stack(self.convs, self.norms, input_shape[4], self.conv_dim)
        width = size_y * size_x * channels
        for fc in self.fcs:
            fc.build((None, width))
            width = self.fc_dim
        self.class_logits.build((None, width))
        self.box_deltas.build((None, width))

    def call(self, pooled, training=None):
        shape = tf.shape(pooled)
        batch, rois = shape[0], shape[1]
        size_y, size_x, channels = pooled.shape[2], pooled.shape[3], pooled.shape[4]
        x = tf.reshape(pooled, [batch * rois, size_y, size_x, channels])
        x = _apply_stack(x, self.convs, self.norms, training)
        x = tf.reshape(x, [batch * rois, size_y * size_x * x.shape[-1]])
        for fc in self.fcs:
            x = fc(x)
        logits = tf.reshape(self.class_logits(x), [batch, rois, self.num_classes + 1])
        deltas = tf.reshape(self.box_deltas(x), [batch, rois, self.num_classes, 4])
        return logits, deltas

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "conv_dim": self.conv_dim, "num_convs": self.num_convs, "fc_dim": self.fc_dim,
                "num_fcs": self.num_fcs, "norm": self.norm}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class NormMaskHead(layers.Layer):
    """Call: pooled `[B, R, P, P, C]` -> mask logits `[B, R, 2P, 2P, K]` (channel k-1 = class k).

    `num_convs` x (3x3 conv `conv_dim` [+ BatchNorm] + ReLU), a 2x2 stride-2 transposed conv +
    ReLU and a 1x1 conv to K logit maps (`MaskHead` with normalization).
    """

    def __init__(self, num_classes: int, conv_dim: int = 256, num_convs: int = 4,
                 norm: str = "bn", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.conv_dim = conv_dim
        self.num_convs = num_convs
        self.norm = _check_norm(norm)
        self.convs, self.norms = _conv_norm_stack(num_convs, conv_dim, norm)
        self.upsample = layers.Conv2DTranspose(conv_dim, 2, strides=2, activation="relu",
                                               kernel_initializer=_msra(), name="upsample")
        self.predictor = layers.Conv2D(
            num_classes, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            name="predictor")

    def build(self, input_shape):
        channels = _build_stack(self.convs, self.norms, input_shape[-1], self.conv_dim)
        self.upsample.build((None, None, None, channels))
        self.predictor.build((None, None, None, self.conv_dim))

    def call(self, pooled, training=None):
        shape = tf.shape(pooled)
        batch, rois = shape[0], shape[1]
        size, channels = pooled.shape[2], pooled.shape[4]
        x = tf.reshape(pooled, [batch * rois, size, size, channels])
        x = _apply_stack(x, self.convs, self.norms, training)
        x = self.predictor(self.upsample(x))
        return tf.reshape(x, [batch, rois, 2 * size, 2 * size, self.num_classes])

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "conv_dim": self.conv_dim, "num_convs": self.num_convs, "norm": self.norm}


def rpn_head_from_config(config, name: str = "rpn_head") -> layers.Layer:
    """`RPNHead` for one conv (v1), else `ConvRPNHead` with `config.rpn_head_convs` convs."""
    if config.rpn_head_convs == 1:
        return RPNHead(config.num_anchors_per_location, config.fpn_channels, name=name)
    return ConvRPNHead(config.num_anchors_per_location, config.fpn_channels,
                       config.rpn_head_convs, name=name)


def box_head_from_config(config, name: str = "box_head") -> layers.Layer:
    """`BoxHead` (two fcs, no convs) unless the config asks for convs or another fc count."""
    if config.box_head_convs == 0 and config.box_head_fcs == 2:
        return BoxHead(config.num_classes, config.box_head_dim, name=name)
    return ConvFCBoxHead(config.num_classes, config.box_head_conv_dim, config.box_head_convs,
                         config.box_head_dim, config.box_head_fcs, config.head_norm, name=name)


def mask_head_from_config(config, name: str = "mask_head") -> layers.Layer:
    """`MaskHead`, or `NormMaskHead` when `config.head_norm` is not "none"."""
    if config.head_norm == "none":
        return MaskHead(config.num_classes, config.mask_head_dim, config.mask_head_convs,
                        name=name)
    return NormMaskHead(config.num_classes, config.mask_head_dim, config.mask_head_convs,
                        config.head_norm, name=name)
