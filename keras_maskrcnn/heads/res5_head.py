"""The C4 architecture's heads: its RPN head on C4 and its RoI heads (Detectron2
`Res5ROIHeads`, the paper's ResNet-C4 head).

The box and mask branches share one per-RoI computation: RoIAlign at P x P (14) on C4, then the
ResNet's res5 stage (`Res5Head`: P x P x C4 -> P/2 x P/2 x C5, 7x7x2048 for ResNet-50). The box
branch (`Res5BoxHead`) average-pools res5's output to one C5-vector per RoI for the box
predictors; the mask branch is the `MaskHead` with no convs (2x2 stride-2 deconv + ReLU + 1x1 on
res5's output: P x P masks, 14x14). Training feeds the mask branch the res5 features of the
foreground RoIs (the first F sampled slots); inference runs res5 again on the detected boxes.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers, ops

from keras_maskrcnn import backend
from keras_maskrcnn.backbones.resnet import ResNetSpec, build_res5_head, stage_channels
from keras_maskrcnn.heads.box_head import box_predictors
from keras_maskrcnn.ops.shapes import run_time_dims


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class Res5Head(layers.Layer):
    """Call: pooled `[B, R, P, P, C4]` -> res5 features `[B, R, P', P', C5]` in the input's
    dtype, P' = ceil(P / 2) (res5's first bottleneck has stride 2).

    `spec` is the backbone's `ResNetSpec` (or its dict): res5 has `spec.blocks[3]` bottlenecks of
    `spec.widths[3]` planes, its groups and width per group (ResNet-50: 3 blocks, 2048 channels;
    resnet_tiny: its single last block). `norm`, `stride_in_1x1` as the backbone's; `training`
    switches a "bn" norm to batch statistics (frozen BN never does).

    Weights: `res5` (a functional model whose layers are named as the backbone's res5:
    `res5_{block}_conv1`, ...).
    """

    def __init__(self, spec: ResNetSpec | dict, norm: str = "frozen_bn",
                 stride_in_1x1: bool = False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(spec, dict):
            spec = ResNetSpec(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in spec.items()})
        self.spec = spec
        self.norm = norm
        self.stride_in_1x1 = bool(stride_in_1x1)
        self.in_channels = stage_channels(spec, 4)
        self.out_channels = stage_channels(spec, 5)
        self.res5 = build_res5_head(spec, norm, self.stride_in_1x1, trainable=self.trainable,
                                    name="res5")

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.in_channels:
            raise ValueError(f"Res5Head expects {self.in_channels} channels (C4 of the backbone), "
                             f"got {input_shape[-1]}")

    def call(self, pooled, training=None):
        batch, rois = run_time_dims(pooled, 2)
        size_y, size_x = pooled.shape[2], pooled.shape[3]
        x = ops.reshape(pooled, [batch * rois, size_y, size_x, pooled.shape[4]])
        x = self.res5(x, training=training)
        return ops.reshape(x, [batch, rois, x.shape[1], x.shape[2], self.out_channels])

    def get_config(self):
        return {**super().get_config(), "spec": dataclasses.asdict(self.spec), "norm": self.norm,
                "stride_in_1x1": self.stride_in_1x1}


def spatial_mean(features):
    """`[B, R, H, W, C]` -> `[B, R, C]`, the mean over H and W in the features' dtype.

    On TensorFlow `tf.reduce_mean` itself, so that bfloat16 features give the numbers they gave
    before the port (`keras.ops.mean` accumulates bfloat16 in float32); `keras.ops.mean` on the
    other backends. Equal for float32 features (tests/portable/test_layers_ported.py).
    """
    if backend.is_tensorflow():
        return backend.tensorflow().reduce_mean(features, axis=[2, 3])
    return ops.mean(features, axis=(2, 3))


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class Res5BoxHead(layers.Layer):
    """Call: res5 features `[B, R, P', P', C5]` -> `(class_logits [B, R, K + 1], deltas
    [B, R, K, 4])` in the input's dtype: the spatial mean (Detectron2's `box_features.mean(dim=[2,
    3])`), then the same class-logit and class-specific delta layers as `BoxHead`
    (`box_predictors`).

    Weights: `class_logits`, `box_deltas`.
    """

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.class_logits, self.box_deltas = box_predictors(self.num_classes)

    def build(self, input_shape):
        self.class_logits.build((None, input_shape[-1]))
        self.box_deltas.build((None, input_shape[-1]))

    def call(self, features):
        batch, rois = run_time_dims(features, 2)
        x = spatial_mean(features)
        x = ops.reshape(x, [batch * rois, features.shape[4]])
        logits = ops.reshape(self.class_logits(x), [batch, rois, self.num_classes + 1])
        deltas = ops.reshape(self.box_deltas(x), [batch, rois, self.num_classes, 4])
        return logits, deltas

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
