"""ResNet / ResNeXt bottleneck backbones returning the C2..C5 feature maps (C2..C4 for the C4
architecture, whose res5 stage runs per RoI: `build_res5_head`).

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
    # torchvision's resnext50_32x4d (Xie et al. 2017): ResNet-50 depths, 32 groups of width 4.
    "resnext50_32x4d": ResNetSpec(blocks=(3, 4, 6, 3), groups=32, width_per_group=4),
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


def stage_channels(spec: ResNetSpec, level: int) -> int:
    """Output channels of stage res{level} (level 2..5): `widths[level - 2] * expansion`."""
    return spec.widths[level - 2] * spec.expansion


def resnet_stage(x, spec: ResNetSpec, level: int, norm: str = "frozen_bn",
                 stride_in_1x1: bool = False, trainable: bool = True):
    """Applies stage res{level} (level 2..5) of `spec` to `x` `[N, H, W, C]`: `spec.blocks[level
    - 2]` bottlenecks of `spec.widths[level - 2]` planes, the first with stride 2 (level > 2) and
    a projection shortcut. Layers are named `res{level}_{block}_...` (torchvision's
    `layer{level - 1}.{block}`). Returns `[N, H / s, W / s, stage_channels(spec, level)]`."""
    if not 2 <= level <= 5:
        raise ValueError(f"ResNet stages are res2..res5, got res{level}")
    for block in range(spec.blocks[level - 2]):
        stride = 2 if block == 0 and level > 2 else 1
        x = _bottleneck(x, spec, spec.widths[level - 2], stride, f"res{level}_{block}", norm,
                        stride_in_1x1, trainable)
    return x


def build_resnet(
    spec: ResNetSpec,
    norm: str = "frozen_bn",
    stride_in_1x1: bool = False,
    freeze_at: int = 0,
    name: str = "backbone",
    last_stage: int = 5,
) -> keras.Model:
    """A ResNet as a Keras model: `[B, H, W, 3]` normalized image -> `[C2, ..., C{last_stage}]`
    (default `[C2, C3, C4, C5]`; `last_stage=4` stops after res4, as the C4 architecture's
    backbone, whose res5 is the RoI head `build_res5_head`).

    C_k has stride 2**k and `spec.widths[k-2] * spec.expansion` channels. `freeze_at` makes the
    stem (1) and the first `freeze_at - 1` stages non-trainable, as Detectron2's FREEZE_AT.
    `stride_in_1x1` puts the stride of each first bottleneck on its 1x1 conv (the original MSRA
    ResNet, Detectron2's STRIDE_IN_1X1, keras.applications) instead of its 3x3 conv (v1.5).
    """
    if last_stage not in (4, 5):
        raise ValueError(f"last_stage must be 4 or 5, got {last_stage}")
    image = keras.Input((None, None, 3), name="image")
    x = _conv(image, spec.stem_width, 7, 2, "stem_conv1", trainable=freeze_at < 1)
    x = layers.ReLU(name="stem_relu")(make_norm(norm, "stem_norm1", freeze_at < 1, spec.stem_width)(x))
    x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    features = []
    for level in range(2, last_stage + 1):
        x = resnet_stage(x, spec, level, norm, stride_in_1x1, trainable=freeze_at < level)
        features.append(x)
    return keras.Model(image, features, name=name)


def build_res5_head(spec: ResNetSpec, norm: str = "frozen_bn", stride_in_1x1: bool = False,
                    trainable: bool = True, name: str = "res5") -> keras.Model:
    """Stage res5 of `spec` as a per-RoI head (Detectron2's `Res5ROIHeads._build_res5_block`):
    `[N, P, P, C4 channels]` pooled RoI features -> `[N, P / 2, P / 2, C5 channels]` (e.g. 14x14x1024
    -> 7x7x2048 for ResNet-50). The same bottlenecks and layer names (`res5_{block}_...`) as the
    res5 of `build_resnet`, so backbone weights map one to one."""
    pooled = keras.Input((None, None, stage_channels(spec, 4)), name="pooled")
    return keras.Model(pooled, resnet_stage(pooled, spec, 5, norm, stride_in_1x1, trainable),
                       name=name)
