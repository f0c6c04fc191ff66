"""Anchor generation as a Keras layer (anchors are constants of the static canvas size)."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

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

    def call(self, images, with_level_sizes: bool = False):
        """Anchors `[N, 4]`: constants of a static canvas, or computed in the graph when the
        canvas size is dynamic; with `with_level_sizes` also `[L]` int32 anchors per level."""
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:  # TensorFlow's shape-polymorphic graph only
            shape = ops.shape(images)
            anchors, sizes = self.dynamic_anchors(shape[1], shape[2])
        else:
            anchors = ops.convert_to_tensor(self.anchors((height, width)), dtype="float32")
            sizes = ops.convert_to_tensor(self.level_sizes((height, width)), "int32")
        return (anchors, sizes) if with_level_sizes else anchors

    def dynamic_anchors(self, height, width):
        """(anchors [N, 4], level sizes [L]) for a canvas size known only at run time."""
        return anchor_ops.generate_anchors_tf(
            height, width, strides=self.strides, sizes=self.sizes,
            aspect_ratios=self.aspect_ratios, offset=self.offset, round_base=self.round_base,
            stride_from_grid=self.stride_from_grid)

    def compute_output_spec(self, images, with_level_sizes: bool = False):
        h, w = images.shape[1], images.shape[2]
        count = None if h is None or w is None else sum(self.level_sizes((h, w)))
        anchors = keras.KerasTensor((count, 4), dtype="float32")
        if not with_level_sizes:
            return anchors
        return anchors, keras.KerasTensor((len(self.strides),), dtype="int32")

    def get_config(self):
        return {**super().get_config(), "strides": self.strides, "sizes": self.sizes,
                "aspect_ratios": self.aspect_ratios, "offset": self.offset,
                "round_base": self.round_base, "stride_from_grid": self.stride_from_grid}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class SingleLevelAnchorGenerator(AnchorGenerator):
    """Every anchor size on one feature map (the C4 architecture's RPN on res4, Detectron2's
    `DefaultAnchorGenerator` with SIZES [[32, 64, 128, 256, 512]]).

    Call: `images [B, H, W, 3]` -> anchors `[N, 4]`, N = ceil(H / s) * ceil(W / s) * A with
    A = len(sizes) * len(aspect_ratios) (15); order: location (row-major), then size, then aspect
    ratio, as Detectron2's cell anchors and the RPN head's A output maps. `strides` is the
    one stride `(stride,)`; `level_sizes` is `(N,)`.
    """

    def __init__(self, stride: int = 16, sizes=(32, 64, 128, 256, 512),
                 aspect_ratios=(0.5, 1.0, 2.0), offset: float = 0.0, round_base: bool = False,
                 stride_from_grid: bool = False, **kwargs):
        kwargs.pop("strides", None)  # from get_config: always (stride,)
        super().__init__((int(stride),), sizes, aspect_ratios, offset, round_base,
                         stride_from_grid, **kwargs)

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.sizes) * len(self.aspect_ratios)

    def dynamic_anchors(self, height, width):
        """(anchors [N, 4], level sizes [1]) for a canvas size known only at run time, in the
        order of `anchors` (location, then size, then aspect ratio)."""
        per_size, _ = anchor_ops.generate_anchors_tf(
            height, width, strides=self.strides * len(self.sizes), sizes=self.sizes,
            aspect_ratios=self.aspect_ratios, offset=self.offset, round_base=self.round_base,
            stride_from_grid=self.stride_from_grid)
        per_ratio = len(self.aspect_ratios)
        # [S * cells * R, 4] (size-major) -> [cells, S * R, 4] (location-major).
        grid = ops.reshape(per_size, [len(self.sizes), -1, per_ratio, 4])
        anchors = ops.reshape(ops.transpose(grid, [1, 0, 2, 3]), [-1, 4])
        return anchors, ops.reshape(ops.cast(ops.shape(anchors)[0], "int32"), [1])

    def anchors(self, image_size: tuple[int, int]) -> np.ndarray:
        # One single-size "level" per size on the same grid, interleaved per location.
        per_size = anchor_ops.anchors_per_level(
            tuple(image_size), strides=self.strides * len(self.sizes), sizes=self.sizes,
            aspect_ratios=self.aspect_ratios, offset=self.offset, round_base=self.round_base,
            stride_from_grid=self.stride_from_grid)
        per_ratio = len(self.aspect_ratios)
        stacked = np.concatenate([a.reshape(-1, per_ratio, 4) for a in per_size], axis=1)
        return stacked.reshape(-1, 4)

    def level_sizes(self, image_size: tuple[int, int]) -> tuple[int, ...]:
        stride = self.strides[0]
        cells = int(np.ceil(image_size[0] / stride) * np.ceil(image_size[1] / stride))
        return (cells * self.num_anchors_per_location,)

    def get_config(self):
        config = super().get_config()
        config.pop("strides")
        return {**config, "stride": self.strides[0]}
