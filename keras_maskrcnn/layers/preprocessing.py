"""In-graph image normalization, so exported models take raw pixels."""

from __future__ import annotations

import keras
from keras import layers, ops

from keras_maskrcnn.ops.shapes import run_time_dims


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class ImageNormalization(layers.Layer):
    """Normalizes the image and zeroes the canvas padding, as torchvision and Detectron2 pad.

    Call: `images [B, H, W, 3]` float32 RGB pixels in 0..255 and `image_shape [B, 2]` (valid height,
    width) -> `[B, H, W, 3]` `(x - mean) / std` inside the valid region, 0 outside. `mean` and `std`
    are per channel in 0..255 units, in the channel order the backbone expects (BGR when `bgr`).
    """

    def __init__(self, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375),
                 bgr: bool = False, **kwargs):
        # Pixels and the valid size are read as float32 under mixed precision too (Keras'
        # autocast would round them to bfloat16, which holds 1066 as 1064); the normalized
        # image is cast to the compute dtype at the end.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.bgr = bool(bgr)

    def call(self, images, image_shape):
        images = ops.cast(images, "float32")
        if self.bgr:
            images = ops.flip(images, axis=-1)
        mean = ops.convert_to_tensor(self.mean, dtype="float32")
        std = ops.convert_to_tensor(self.std, dtype="float32")
        normalized = (images - mean) / std
        _, height, width = run_time_dims(images, 3)
        rows = ops.cast(ops.arange(height, dtype="int32"), "float32")[None, :, None]
        cols = ops.cast(ops.arange(width, dtype="int32"), "float32")[None, None, :]
        image_shape = ops.cast(image_shape, "float32")
        valid = (rows < image_shape[:, 0, None, None]) & (cols < image_shape[:, 1, None, None])
        return ops.cast(normalized * ops.cast(valid, "float32")[..., None], self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "bgr": self.bgr}
