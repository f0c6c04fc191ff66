"""Feature Pyramid Network: C2..C5 -> P2..P6 with a fixed channel count."""

from __future__ import annotations

import keras
from keras import layers

from keras_maskrcnn.heads.common import batch_norm, check_norm


def build_fpn(backbone: keras.Model, channels: int = 256, norm: str = "none",
              name: str = "fpn") -> keras.Model:
    """Wraps `backbone` ([B, H, W, 3] -> [C2..C5]) into [B, H, W, 3] -> [P2, P3, P4, P5, P6].

    Lateral 1x1 convs, top-down nearest 2x upsampling, 3x3 output convs; P6 is P5 subsampled by a
    max-pool of kernel 1 and stride 2. P_k has stride 2**k, `channels` channels and the
    backbone's dtype. H and W must be multiples of 32 so that the upsampled maps line up with the
    laterals.

    `norm` (one of `config.HEAD_NORMS`): "none" gives the convs a bias; "bn" (torchvision's
    `maskrcnn_resnet50_fpn_v2`) drops it and follows every lateral and output conv by a
    BatchNormalization (eps 1e-5, no activation). Layers: `fpn_lateral{k}` (+ `fpn_lateral{k}_norm`),
    `fpn_up{k}`, `fpn_merge{k}`, `fpn_output{k}` (+ `fpn_output{k}_norm`), `fpn_p6`.
    """
    check_norm(norm)
    image = backbone.input
    c_feats = backbone(image)

    def conv(x, kernel: int, layer_name: str):
        x = layers.Conv2D(channels, kernel, padding="same", use_bias=norm == "none",
                          name=layer_name)(x)
        return batch_norm(f"{layer_name}_norm")(x) if norm == "bn" else x

    laterals = [conv(c, 1, f"fpn_lateral{level}")
                for level, c in zip(range(2, 6), c_feats, strict=True)]
    merged = [None] * 4
    merged[3] = laterals[3]
    for i in (2, 1, 0):
        up = layers.UpSampling2D(2, interpolation="nearest", name=f"fpn_up{i + 2}")(merged[i + 1])
        merged[i] = layers.Add(name=f"fpn_merge{i + 2}")([laterals[i], up])
    outputs = [conv(m, 3, f"fpn_output{level}")
               for level, m in zip(range(2, 6), merged, strict=True)]
    outputs.append(layers.MaxPooling2D(1, strides=2, name="fpn_p6")(outputs[-1]))
    return keras.Model(image, outputs, name=name)


def fpn_from_config(backbone: keras.Model, config) -> keras.Model:
    """The FPN of a `MaskRCNNConfig` on `backbone`: `fpn_channels` channels, norm `fpn_norm`."""
    return build_fpn(backbone, config.fpn_channels, config.fpn_norm)
