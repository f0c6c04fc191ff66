"""Multi-level RoI pooling over the FPN (RoIAlign, or RoIPool for the paper's ablation), and the
same layer on a single feature map (the C4 architecture's pooler on res4)."""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from keras_maskrcnn.ops.poolers import multilevel_roi_align


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class MultiLevelRoIAlign(layers.Layer):
    """Call: `features` list `[B, H_l, W_l, C]` for levels `min_level`.., `boxes [B, R, 4]` input
    pixels -> `[B, R, P, P, C]`.

    Each box is pooled from level floor(canonical_level + log2(sqrt(area) / canonical_size)),
    clamped to the available levels. `method` is "align" (RoIAlign) or "pool" (quantized RoIPool).
    `implementation` picks the RoIAlign kernel ("auto", "gather", "static", "custom_op", ...);
    exported models use "gather". Under XLA (jit_compile) "auto" and "gather" take the static
    formulation by themselves (`ops.roi_align_ops`; same numbers, static shapes), so the
    sampling ratio 0 of the COCO presets compiles. With one level (`features` = `[C4]`,
    `min_level` = 4; see `single_level_roi_pooler`) every box is pooled from that map at scale
    2**-min_level. Runs on TensorFlow, JAX and PyTorch ("custom_op" / "crop_and_resize" are
    TensorFlow-only; "auto" is "gather" elsewhere).
    """

    def __init__(self, output_size: int = 7, sampling_ratio: int = 0, aligned: bool = True,
                 method: str = "align", min_level: int = 2, canonical_size: float = 224.0,
                 canonical_level: int = 4, implementation: str = "auto", **kwargs):
        # Boxes stay float32 pixel coordinates under mixed precision (features are cast).
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if method not in ("align", "pool"):
            raise ValueError(f"method must be 'align' or 'pool', got {method!r}")
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.method = method
        self.min_level = int(min_level)
        self.canonical_size = float(canonical_size)
        self.canonical_level = int(canonical_level)
        self.implementation = implementation

    def call(self, features, boxes):
        boxes = ops.stop_gradient(ops.cast(boxes, "float32"))
        return multilevel_roi_align(
            list(features), boxes, self.output_size, min_level=self.min_level,
            canonical_size=self.canonical_size, canonical_level=self.canonical_level,
            sampling_ratio=self.sampling_ratio, aligned=self.aligned, method=self.method,
            implementation=self.implementation)

    def compute_output_spec(self, features, boxes):
        """[B, R, P, P, C] in the features' dtype, without running the pooling (whose loop
        cannot run on the symbolic tensors of PyTorch's functional models)."""
        features = list(features)
        shape = (boxes.shape[0], boxes.shape[1], self.output_size, self.output_size,
                 features[0].shape[-1])
        return keras.KerasTensor(shape, dtype=features[0].dtype)

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size,
                "sampling_ratio": self.sampling_ratio, "aligned": self.aligned,
                "method": self.method, "min_level": self.min_level,
                "canonical_size": self.canonical_size, "canonical_level": self.canonical_level,
                "implementation": self.implementation}


def single_level_roi_pooler(output_size: int, stride: int = 16, **kwargs) -> MultiLevelRoIAlign:
    """`MultiLevelRoIAlign` for one feature map of stride `stride` (a power of two): call it with
    `features=[C]`; every box is pooled from C at spatial scale 1 / stride (Detectron2's
    single-scale `ROIPooler`, e.g. 14x14 on C4 at 1/16). `kwargs` as `MultiLevelRoIAlign`'s."""
    level = int(round(math.log2(stride))) if stride > 0 else -1
    if level < 0 or 2 ** level != stride:
        raise ValueError(f"stride must be a power of two, got {stride}")
    return MultiLevelRoIAlign(output_size, min_level=level, **kwargs)
