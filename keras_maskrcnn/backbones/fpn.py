"""Feature Pyramid Network: C2..C5 -> P2..P6 with a fixed channel count."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from keras_maskrcnn.layers.conv_norm import batch_norm, check_norm


def build_fpn(in_channels: Sequence[int] = (256, 512, 1024, 2048), channels: int = 256,
              norm: str = "none", name: str = "fpn") -> keras.Model:
    """The pyramid as a Keras model: `[C2, C3, C4, C5]` (channel counts `in_channels`) ->
    `[P2, P3, P4, P5, P6]`.

    Lateral 1x1 convs, top-down nearest 2x upsampling, 3x3 output convs; P6 is P5 subsampled by a
    max-pool of kernel 1 and stride 2. P_k has the stride of C_k (P6: twice C5's), `channels`
    channels and the inputs' dtype. The input sides must halve exactly from level to level
    (image sides multiples of 32) so that the upsampled maps line up with the laterals.

    `norm` (`layers.conv_norm.NORMS`): "none" gives the convs a bias; "bn" (torchvision's
    `maskrcnn_resnet50_fpn_v2`) drops it and follows every lateral and output conv by a
    BatchNormalization (eps 1e-5, no activation). Layers: `fpn_lateral{k}` (+ `fpn_lateral{k}_norm`),
    `fpn_up{k}`, `fpn_merge{k}`, `fpn_output{k}` (+ `fpn_output{k}_norm`), `fpn_p6`.
    """
    check_norm(norm)
    if len(in_channels) != 4:
        raise ValueError(f"build_fpn takes C2..C5: 4 channel counts, got {tuple(in_channels)}")
    c_feats = [keras.Input((None, None, int(c)), name=f"c{level}")
               for level, c in zip(range(2, 6), in_channels, strict=True)]

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
    return keras.Model(c_feats, outputs, name=name)
