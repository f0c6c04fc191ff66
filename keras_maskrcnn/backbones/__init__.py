"""Backbones (ResNet / ResNeXt) and the feature pyramid."""

from keras_maskrcnn.backbones.fpn import build_fpn
from keras_maskrcnn.backbones.resnet import (
    RESNET_SPECS,
    ResNetSpec,
    build_res5_head,
    build_resnet,
    resnet_stage,
    stage_channels,
    tiny_spec,
)

__all__ = ["RESNET_SPECS", "ResNetSpec", "build_fpn", "build_res5_head", "build_resnet",
           "resnet_stage", "stage_channels", "tiny_spec"]
