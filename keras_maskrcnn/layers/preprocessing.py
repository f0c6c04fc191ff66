"""In-graph image normalization, so exported models take raw pixels."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


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
        images = tf.cast(images, tf.float32)
        if self.bgr:
            images = images[..., ::-1]
        mean = tf.constant(self.mean, dtype=tf.float32)
        std = tf.constant(self.std, dtype=tf.float32)
        normalized = (images - mean) / std
        shape = tf.shape(images)
        rows = tf.cast(tf.range(shape[1]), tf.float32)[None, :, None]
        cols = tf.cast(tf.range(shape[2]), tf.float32)[None, None, :]
        image_shape = tf.cast(image_shape, tf.float32)
        valid = (rows < image_shape[:, 0, None, None]) & (cols < image_shape[:, 1, None, None])
        return tf.cast(normalized * tf.cast(valid, tf.float32)[..., None], self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "bgr": self.bgr}
