"""Inference precision: float32, or bfloat16 compute on CPUs (and GPUs) that run it natively.

`with_precision(model, "bfloat16")` rebuilds a model under the Keras policy "mixed_bfloat16"
with the same weights: variables stay float32, convolutions and dense layers compute in
bfloat16, and everything that carries pixel coordinates or probabilities stays float32 (the
image normalization reads float32 pixels, anchors, proposals, box decoding, NMS, RoIAlign
boxes, the detections and mask probabilities; the heads' outputs are cast to float32 where they
are decoded). `predict --precision` and `export --format saved_model --precision` use it.

"auto" is bfloat16 where the hardware computes it natively (`keras_maskrcnn.runtime`: a CPU
with AVX512_BF16 or AMX-BF16, or GPUs of compute capability >= 8), else float32. An explicit
"bfloat16" on a CPU without native support runs (emulated, several times slower than float32)
after a warning.
"""

from __future__ import annotations

import logging

from keras_maskrcnn.builder import keep_boxes_float32, rebuilt
from keras_maskrcnn.model import MaskRCNN
from keras_maskrcnn.runtime import cpu_has_bf16
from keras_maskrcnn.runtime import resolve_precision as resolve_training_precision

logger = logging.getLogger("keras_maskrcnn")

PRECISIONS = ("float32", "bfloat16", "auto")
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
# `ProposalLayer`, `DetectionLayer` and `ImageNormalization` opt out of Keras' autocast of
# their inputs themselves (autocast=False: bfloat16 holds 1066 as 1064); the RoIAlign poolers
# (layers/pooler.py) do not yet, so `builder.keep_boxes_float32` switches it off on each
# bfloat16 inference model: their features arrive in bfloat16 as computed, their boxes stay
# float32.


def native_bf16() -> bool:
    """True when "auto" resolves to bfloat16 here (`runtime.resolve_precision("auto")`)."""
    return resolve_training_precision("auto") == "mixed_bfloat16"


def resolve_precision(precision: str) -> str:
    """"float32" / "bfloat16" as given ("bfloat16" warns on a CPU without native bf16);
    "auto" -> "bfloat16" where the hardware computes it natively, else "float32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bf16() else "float32"
    if precision == "bfloat16" and not native_bf16():
        logger.warning(
            "bfloat16 inference requested on hardware without native bfloat16 (this CPU has "
            "neither AVX512_BF16 nor AMX-BF16: cpu_has_bf16() is %s): it is emulated and "
            "slower than float32; use `precision='float32'` (or 'auto')", cpu_has_bf16())
    return precision


def model_precision(model: MaskRCNN) -> str:
    """"bfloat16" when the model's convolutions compute in bfloat16, else "float32"."""
    return "bfloat16" if model.rpn.head.compute_dtype == "bfloat16" else "float32"


def with_precision(model: MaskRCNN, precision: str = "auto") -> MaskRCNN:
    """`model` computing in `precision` ("float32", "bfloat16" or "auto"), same weights.

    Returns `model` itself when it already computes so; else a new `MaskRCNN` built under the
    policy (`POLICIES`) with the weights copied (variables stay float32; `builder.rebuilt`, which
    copies them again when `model`'s change). Models rebuilt from it for other canvases keep
    the precision.
    """
    if not isinstance(model, MaskRCNN):
        raise TypeError(f"model must be a MaskRCNN, got {type(model).__name__}")
    precision = resolve_precision(precision)
    policy = POLICIES[precision]
    if model_precision(model) == precision:
        if precision == "bfloat16":
            keep_boxes_float32(model)
        return model
    return rebuilt(model, policy=policy)
