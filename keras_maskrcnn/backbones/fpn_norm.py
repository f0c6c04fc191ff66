"""FPN with BatchNorm after its lateral and output convs (torchvision's
`maskrcnn_resnet50_fpn_v2`), and the factory that picks the FPN of a `MaskRCNNConfig`."""

from __future__ import annotations

import keras
from keras import layers

from keras_maskrcnn.backbones.fpn import build_fpn


def build_fpn_with_norm(backbone: keras.Model, channels: int = 256,
                        name: str = "fpn") -> keras.Model:
    """Wraps `backbone` ([B, H, W, 3] -> [C2..C5]) into [B, H, W, 3] -> [P2, P3, P4, P5, P6].

    As `build_fpn`, but every lateral 1x1 conv and output 3x3 conv has no bias and is followed by
    a BatchNormalization (eps 1e-5; no activation): layers `fpn_lateral{k}` + `fpn_lateral{k}_norm`
    and `fpn_output{k}` + `fpn_output{k}_norm`. H and W must be multiples of 32.
    """
    image = backbone.input
    c_feats = backbone(image)

    def conv_norm(x, kernel: int, layer_name: str):
        x = layers.Conv2D(channels, kernel, padding="same", use_bias=False, name=layer_name)(x)
        return layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{layer_name}_norm")(x)

    laterals = [conv_norm(c, 1, f"fpn_lateral{level}")
                for level, c in zip(range(2, 6), c_feats, strict=True)]
    merged = [None] * 4
    merged[3] = laterals[3]
    for i in (2, 1, 0):
        up = layers.UpSampling2D(2, interpolation="nearest", name=f"fpn_up{i + 2}")(merged[i + 1])
        merged[i] = layers.Add(name=f"fpn_merge{i + 2}")([laterals[i], up])
    outputs = [conv_norm(m, 3, f"fpn_output{level}")
               for level, m in zip(range(2, 6), merged, strict=True)]
    outputs.append(layers.MaxPooling2D(1, strides=2, name="fpn_p6")(outputs[-1]))
    return keras.Model(image, outputs, name=name)


def fpn_from_config(backbone: keras.Model, config) -> keras.Model:
    """`build_fpn` for `config.fpn_norm == "none"`, else `build_fpn_with_norm`."""
    if config.fpn_norm == "none":
        return build_fpn(backbone, config.fpn_channels)
    if config.fpn_norm == "bn":
        return build_fpn_with_norm(backbone, config.fpn_channels)
    raise ValueError(f"unknown fpn_norm {config.fpn_norm!r}; expected 'none' or 'bn'")
