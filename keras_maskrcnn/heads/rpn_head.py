"""Region proposal network head, shared across FPN levels."""

from __future__ import annotations

import keras
from keras import layers, ops

from keras_maskrcnn.layers.conv_norm import apply_conv_norm_stack, build_conv_norm_stack, conv_norm_stack
from keras_maskrcnn.ops.shapes import run_time_dims


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class RPNHead(layers.Layer):
    """`num_convs` x (3x3 conv `channels` + ReLU), then a 1x1 objectness conv (A maps) and a 1x1
    box-delta conv (4A maps), on every level (v1: one conv, torchvision's v2: two).

    Call: `features` list of `[B, H_l, W_l, C]` -> `(logits [B, N], deltas [B, N, 4])` in the
    features' dtype, where the anchors of all levels are concatenated in level order,
    location-major, then anchor; deltas are (dy, dx, dh, dw) as `ops.boxes.encode_boxes` with
    weights (1, 1, 1, 1).

    Weights: `convs` (the 3x3 convs), `objectness`, `deltas`. (Files saved when `convs[0]`
    was also the attribute `conv` are moved by `saving.migration`.)
    """

    def __init__(self, num_anchors: int, channels: int = 256, num_convs: int = 1, **kwargs):
        super().__init__(**kwargs)
        if num_convs < 1:
            raise ValueError(f"RPNHead needs num_convs >= 1, got {num_convs}")
        self.num_anchors = int(num_anchors)
        self.channels = int(channels)
        self.num_convs = int(num_convs)
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.convs, self._norms = conv_norm_stack(self.num_convs, self.channels, "none",
                                                  kernel_initializer=init)
        self.objectness = layers.Conv2D(self.num_anchors, 1, kernel_initializer=init,
                                        name="objectness")
        self.deltas = layers.Conv2D(4 * self.num_anchors, 1, kernel_initializer=init,
                                    name="deltas")

    def build(self, input_shape):
        channels = build_conv_norm_stack(self.convs, self._norms, input_shape[0][-1])
        self.objectness.build((None, None, None, channels))
        self.deltas.build((None, None, None, channels))

    def call(self, features):
        logits, deltas = [], []
        for feature in features:
            x = apply_conv_norm_stack(feature, self.convs, self._norms)
            (batch,) = run_time_dims(x, 1)
            logits.append(ops.reshape(self.objectness(x), [batch, -1]))
            deltas.append(ops.reshape(self.deltas(x), [batch, -1, 4]))
        return ops.concatenate(logits, axis=1), ops.concatenate(deltas, axis=1)

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors,
                "channels": self.channels, "num_convs": self.num_convs}
