"""ImageNet weights for ResNet-50/101 from `keras.applications` (downloaded on the user's machine).

keras.applications' ResNets are the original MSRA layout: the stride sits on the first 1x1 conv
(`stride_in_1x1=True`), inputs are BGR with the Caffe means and unit std, and every conv has a
bias. The bias of a conv followed by BatchNorm is folded exactly into the BN moving mean:
BN(z + b) = gamma * (z - (mu - b)) / sqrt(var + eps) + beta.
"""

from __future__ import annotations

from pathlib import Path

import keras

from keras_maskrcnn.backbones.resnet import RESNET_SPECS

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_APPS = {"resnet50": "ResNet50", "resnet101": "ResNet101"}


def imagenet_config_overrides() -> dict:
    """Config fields that keras.applications ImageNet weights need."""
    return {"backbone_weights": "imagenet", "stride_in_1x1": True, "bgr_input": True,
            "pixel_mean": CAFFE_BGR_MEAN, "pixel_std": (1.0, 1.0, 1.0)}


def _layer_pairs(blocks: tuple[int, ...]):
    """(our conv, our norm, keras conv, keras bn) names, stem first."""
    yield "stem_conv1", "stem_norm1", "conv1_conv", "conv1_bn"
    for stage, count in enumerate(blocks):
        for block in range(count):
            ours, theirs = f"res{stage + 2}_{block}", f"conv{stage + 2}_block{block + 1}"
            if block == 0:
                yield (f"{ours}_downsample_conv", f"{ours}_downsample_norm",
                       f"{theirs}_0_conv", f"{theirs}_0_bn")
            for i in (1, 2, 3):
                yield f"{ours}_conv{i}", f"{ours}_norm{i}", f"{theirs}_{i}_conv", f"{theirs}_{i}_bn"


def copy_keras_applications_resnet(source: keras.Model, backbone: keras.Model,
                                   blocks: tuple[int, ...]) -> int:
    """Copies a keras.applications ResNet's weights into our backbone; returns layers copied."""
    copied = 0
    for conv, norm, src_conv, src_bn in _layer_pairs(blocks):
        kernel, bias = source.get_layer(src_conv).get_weights()
        gamma, beta, mean, var = source.get_layer(src_bn).get_weights()
        backbone.get_layer(conv).set_weights([kernel])
        target = backbone.get_layer(norm)
        if not isinstance(target, keras.layers.BatchNormalization):
            raise ValueError("keras.applications weights need backbone_norm 'frozen_bn' or 'bn'")
        target.set_weights([gamma, beta, mean - bias, var])
        copied += 1
    return copied


def load_backbone_weights(backbone: keras.Model, weights: str, architecture: str,
                          keras_applications_layout: bool) -> None:
    """Loads `weights` into `backbone` (a ResNet named `architecture`, e.g. "resnet50"):
    "imagenet" (keras.applications, downloaded on first use), or a file: a keras.applications
    ResNet weights file (e.g. a copy of the download, for machines offline) when
    `keras_applications_layout` (the backbone was built with `imagenet_config_overrides()`:
    stride in 1x1, BGR Caffe input), else a `.weights.h5` of our own backbone."""
    if weights != "imagenet" and not keras_applications_layout:
        backbone.load_weights(weights)
        return
    if architecture not in _APPS:
        raise ValueError(
            f"ImageNet weights from keras.applications exist for {sorted(_APPS)}, not "
            f"{architecture!r}; set backbone_weights to a .weights.h5 file instead")
    if not keras_applications_layout:
        raise ValueError(
            "keras.applications ResNet weights need stride_in_1x1=True, bgr_input=True and the "
            "Caffe pixel mean/std: use config.replace(**imagenet_config_overrides())")
    if weights != "imagenet" and not Path(weights).is_file():
        raise FileNotFoundError(f"backbone weights file not found: {weights}")
    app = getattr(keras.applications, _APPS[architecture])(include_top=False, weights=weights)
    copy_keras_applications_resnet(app, backbone, RESNET_SPECS[architecture].blocks)
