"""Feature Pyramid Network: C2..C5 -> P2..P6 with a fixed channel count."""

from __future__ import annotations

import keras
from keras import layers


def build_fpn(backbone: keras.Model, channels: int = 256, name: str = "fpn") -> keras.Model:
    """Wraps `backbone` ([B, H, W, 3] -> [C2..C5]) into [B, H, W, 3] -> [P2, P3, P4, P5, P6].

    Lateral 1x1 convs, top-down nearest 2x upsampling, 3x3 output convs; P6 is P5 subsampled by a
    max-pool of kernel 1 and stride 2. P_k has stride 2**k and `channels` channels. H and W must be
    multiples of 32 so that the upsampled maps line up with the laterals.
    """
    image = backbone.input
    c_feats = backbone(image)
    laterals = [
        layers.Conv2D(channels, 1, name=f"fpn_lateral{level}")(c)
        for level, c in zip(range(2, 6), c_feats, strict=True)
    ]
    merged = [None] * 4
    merged[3] = laterals[3]
    for i in (2, 1, 0):
        up = layers.UpSampling2D(2, interpolation="nearest", name=f"fpn_up{i + 2}")(merged[i + 1])
        merged[i] = layers.Add(name=f"fpn_merge{i + 2}")([laterals[i], up])
    outputs = [
        layers.Conv2D(channels, 3, padding="same", name=f"fpn_output{level}")(m)
        for level, m in zip(range(2, 6), merged, strict=True)
    ]
    outputs.append(layers.MaxPooling2D(1, strides=2, name="fpn_p6")(outputs[-1]))
    return keras.Model(image, outputs, name=name)
