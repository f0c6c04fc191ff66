"""Deployment exports: a SavedModel for TF Serving and a builtin-ops-only TFLite model.

`export_saved_model(model_or_dir, output, full_image_masks=False, buckets="auto",
max_image_pixels=36_000_000, precision="float32")` and `export_tflite(model_or_dir, output,
input_size=512, quantize="none", buckets=None)`; see `keras_maskrcnn.export.saved_model`,
`keras_maskrcnn.export.tflite`, `keras_maskrcnn.export.buckets` (the canvas buckets) and
for the details (bfloat16 inference: `keras_maskrcnn.precision`); `export_openvino(
model_or_dir, output, input_size=512)` writes an OpenVINO IR (`keras_maskrcnn.export.openvino`).
Attributes load lazily, so importing this package (the CLI does) does not import TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "export_saved_model": "keras_maskrcnn.export.saved_model",
    "build_serving_module": "keras_maskrcnn.export.saved_model",
    "export_ready_model": "keras_maskrcnn.export.saved_model",
    "export_tflite": "keras_maskrcnn.export.tflite",
    "convert_tflite": "keras_maskrcnn.export.tflite",
    "letterbox_image": "keras_maskrcnn.export.tflite",
    "tflite_op_names": "keras_maskrcnn.export.tflite",
    "QUANTIZE_OPTIONS": "keras_maskrcnn.export.tflite",
    "bucket_inputs": "keras_maskrcnn.export.tflite",
    "auto_buckets": "keras_maskrcnn.export.buckets",
    "parse_buckets": "keras_maskrcnn.export.buckets",
    "bucket_for": "keras_maskrcnn.export.buckets",
    "canvas_inference_model": "keras_maskrcnn.export.buckets",
    "export_openvino": "keras_maskrcnn.export.openvino",
    "compile_openvino": "keras_maskrcnn.export.openvino",
    "predict_openvino": "keras_maskrcnn.export.openvino",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
