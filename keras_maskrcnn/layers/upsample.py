"""`PatchConvTranspose`: a transposed convolution whose kernel equals its stride (the mask head's
2x2 stride-2 upsampling), computed as one matrix product.

With kernel == stride and "valid" padding the output patches do not overlap: input pixel
``(h, w)`` alone writes output pixels ``(h * kh + i, w * kw + j)``, each
``x[h, w] @ kernel[i, j].T``. So the whole op is ``[B*H*W, C] @ [C, kh*kw*O]`` followed by a
depth-to-space rearrangement, the same numbers as `keras.layers.Conv2DTranspose` (weights,
layout ``(kh, kw, O, C)`` and path included) up to float summation order. Its gradients are
matrix products too: XLA on CPU lowers the kernel gradient of the native op (a convolution
with rhs dilation) to a naive loop, 7.5 s of a 15 s JAX training step at 256 x 256 (R50-FPN,
128 RoIs). TensorFlow keeps the native op (its numbers and exported graphs unchanged).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from keras_maskrcnn import backend
from keras_maskrcnn.ops.shapes import run_time_dims


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class PatchConvTranspose(layers.Conv2DTranspose):
    """`keras.layers.Conv2DTranspose` (NHWC) with `kernel_size == strides` and "valid" padding.

    Call: `[B, H, W, C]` -> `[B, H * kh, W * kw, filters]`. Same weights and config as the Keras
    layer; the constructor refuses a kernel that differs from the strides.
    """

    def __init__(self, filters: int, kernel_size, strides=None, **kwargs):
        strides = kernel_size if strides is None else strides
        super().__init__(filters, kernel_size, strides=strides, **kwargs)
        if tuple(self.kernel_size) != tuple(self.strides) or self.padding != "valid" or \
                self.data_format != "channels_last" or tuple(self.dilation_rate) != (1, 1):
            raise ValueError(
                "PatchConvTranspose needs `kernel_size` == `strides`, padding 'valid', "
                f"channels_last and no dilation; got kernel_size={self.kernel_size}, "
                f"strides={self.strides}, padding={self.padding!r}")

    def call(self, inputs):
        if backend.is_tensorflow():
            return super().call(inputs)
        return self.activation(self.patch_matmul(inputs))

    def patch_matmul(self, inputs):
        """The transposed convolution (bias included, no activation) as one matrix product."""
        kh, kw = self.kernel_size
        batch, height, width = run_time_dims(inputs, 3)
        channels = inputs.shape[-1]
        kernel = ops.transpose(ops.cast(self.kernel, inputs.dtype), (3, 0, 1, 2))  # (C, kh, kw, O)
        weights = ops.reshape(kernel, (channels, kh * kw * self.filters))
        y = ops.matmul(ops.reshape(inputs, (-1, channels)), weights)
        y = ops.reshape(y, (batch, height, width, kh, kw, self.filters))
        y = ops.reshape(ops.transpose(y, (0, 1, 3, 2, 4, 5)),
                        (batch, height * kh, width * kw, self.filters))
        if self.use_bias:
            y = y + ops.cast(self.bias, inputs.dtype)
        return y
