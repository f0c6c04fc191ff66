"""Anchor generation as a Keras layer (anchors are constants of the static canvas size)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from keras_maskrcnn.ops import anchors as anchor_ops


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class AnchorGenerator(layers.Layer):
    """Call: `images [B, H, W, 3]` with static H, W -> anchors `[N, 4]` (y1, x1, y2, x2) input pixels.

    N = sum over levels of ceil(H / s) * ceil(W / s) * len(aspect_ratios); order as the RPN head's
    outputs: level, then location (row-major), then aspect ratio. `stride_from_grid` shifts by
    canvas_size // grid_size per axis (torchvision) instead of the nominal stride.
    """

    def __init__(self, strides=(4, 8, 16, 32, 64), sizes=(32, 64, 128, 256, 512),
                 aspect_ratios=(0.5, 1.0, 2.0), offset: float = 0.0, round_base: bool = False,
                 stride_from_grid: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.strides = tuple(int(s) for s in strides)
        self.sizes = tuple(float(s) for s in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.offset = float(offset)
        self.round_base = bool(round_base)
        self.stride_from_grid = bool(stride_from_grid)

    def anchors(self, image_size: tuple[int, int]) -> np.ndarray:
        return anchor_ops.generate_anchors(
            tuple(image_size), strides=self.strides, sizes=self.sizes,
            aspect_ratios=self.aspect_ratios, offset=self.offset, round_base=self.round_base,
            stride_from_grid=self.stride_from_grid)

    def level_sizes(self, image_size: tuple[int, int]) -> tuple[int, ...]:
        """Number of anchors on each level for a canvas of `image_size`."""
        per_loc = len(self.aspect_ratios)
        return tuple(
            int(np.ceil(image_size[0] / s) * np.ceil(image_size[1] / s)) * per_loc
            for s in self.strides
        )

    def call(self, images):
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            raise ValueError("AnchorGenerator needs a static canvas size (images [B, H, W, 3])")
        return tf.constant(self.anchors((height, width)), dtype=tf.float32)

    def get_config(self):
        return {**super().get_config(), "strides": self.strides, "sizes": self.sizes,
                "aspect_ratios": self.aspect_ratios, "offset": self.offset,
                "round_base": self.round_base, "stride_from_grid": self.stride_from_grid}
