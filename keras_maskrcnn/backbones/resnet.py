"""ResNet / ResNeXt bottleneck backbones returning the C2..C5 feature maps.

Layer names follow the torchvision module paths (`res2_0_conv1` = `layer1.0.conv1`) so that weight
converters can map parameters one to one. Every strided convolution pads explicitly and
symmetrically (as PyTorch does) instead of Keras' asymmetric "same" padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers


@dataclass(frozen=True)
class ResNetSpec:
    """Block counts and widths of one ResNet family member."""

    blocks: tuple[int, int, int, int]
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    stem_width: int = 64
    groups: int = 1
    width_per_group: int = 64
    expansion: int = 4


RESNET_SPECS = {
    "resnet50": ResNetSpec(blocks=(3, 4, 6, 3)),
    "resnet101": ResNetSpec(blocks=(3, 4, 23, 3)),
    "resnext101_32x8d": ResNetSpec(blocks=(3, 4, 23, 3), groups=32, width_per_group=8),
}


def tiny_spec(widths: tuple[int, int, int, int]) -> ResNetSpec:
    """A one-block-per-stage ResNet for tests and the synthetic shapes preset."""
    return ResNetSpec(blocks=(1, 1, 1, 1), widths=widths, stem_width=widths[0])


def make_norm(norm: str, name: str, trainable: bool = True, channels: int = 32) -> layers.Layer:
    """A normalization layer: "frozen_bn" (statistics and affine fixed), "bn" or "gn".

    GroupNorm uses 32 groups, or fewer for layers narrower than 32 channels.
    """
    if norm == "frozen_bn":
        return layers.BatchNormalization(epsilon=1e-5, trainable=False, name=name)
    if norm == "bn":
        return layers.BatchNormalization(epsilon=1e-5, momentum=0.9, trainable=trainable, name=name)
    if norm == "gn":
        return layers.GroupNormalization(groups=min(32, channels), epsilon=1e-5, trainable=trainable, name=name)
    raise ValueError(f"unknown norm {norm!r}; expected 'frozen_bn', 'bn' or 'gn'")


def _conv(x, filters: int, kernel: int, stride: int, name: str, groups: int = 1, trainable=True):
    pad = kernel // 2
    if pad and stride > 1:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    conv = layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding=padding,
        groups=groups,
        use_bias=False,
        kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
        trainable=trainable,
        name=name,
    )
    return conv(x)


def _bottleneck(x, spec: ResNetSpec, planes: int, stride: int, name: str, norm: str,
                stride_in_1x1: bool, trainable: bool):
    width = int(planes * (spec.width_per_group / 64.0)) * spec.groups
    out_channels = planes * spec.expansion
    stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)

    shortcut = x
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = _conv(x, out_channels, 1, stride, f"{name}_downsample_conv", trainable=trainable)
        shortcut = make_norm(norm, f"{name}_downsample_norm", trainable, out_channels)(shortcut)

    y = _conv(x, width, 1, stride_1x1, f"{name}_conv1", trainable=trainable)
    y = layers.ReLU(name=f"{name}_relu1")(make_norm(norm, f"{name}_norm1", trainable, width)(y))
    y = _conv(y, width, 3, stride_3x3, f"{name}_conv2", groups=spec.groups, trainable=trainable)
    y = layers.ReLU(name=f"{name}_relu2")(make_norm(norm, f"{name}_norm2", trainable, width)(y))
    y = _conv(y, out_channels, 1, 1, f"{name}_conv3", trainable=trainable)
    y = make_norm(norm, f"{name}_norm3", trainable, out_channels)(y)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def build_resnet(
    spec: ResNetSpec,
    norm: str = "frozen_bn",
    stride_in_1x1: bool = False,
    freeze_at: int = 0,
    name: str = "backbone",
) -> keras.Model:
    """A ResNet as a Keras model: `[B, H, W, 3]` normalized image -> `[C2, C3, C4, C5]`.

    C_k has stride 2**k and `spec.widths[k-2] * spec.expansion` channels. `freeze_at` makes the
    stem (1) and the first `freeze_at - 1` stages non-trainable, as Detectron2's FREEZE_AT.
    `stride_in_1x1` puts the stride of each first bottleneck on its 1x1 conv (the original MSRA
    ResNet, Detectron2's STRIDE_IN_1X1, keras.applications) instead of its 3x3 conv (v1.5).
    """
    image = keras.Input((None, None, 3), name="image")
    x = _conv(image, spec.stem_width, 7, 2, "stem_conv1", trainable=freeze_at < 1)
    x = layers.ReLU(name="stem_relu")(make_norm(norm, "stem_norm1", freeze_at < 1, spec.stem_width)(x))
    x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    features = []
    for stage, (blocks, planes) in enumerate(zip(spec.blocks, spec.widths, strict=True)):
        level = stage + 2
        trainable = freeze_at < level
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            x = _bottleneck(x, spec, planes, stride, f"res{level}_{block}", norm, stride_in_1x1,
                            trainable)
        features.append(x)
    return keras.Model(image, features, name=name)


def resnet_from_config(config) -> keras.Model:
    """The backbone named by a `MaskRCNNConfig`."""
    spec = tiny_spec(config.tiny_widths) if config.backbone == "resnet_tiny" else (
        RESNET_SPECS[config.backbone]
    )
    return build_resnet(spec, config.backbone_norm, config.stride_in_1x1, config.freeze_at)
