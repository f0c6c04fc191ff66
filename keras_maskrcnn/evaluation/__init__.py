"""COCO evaluation of detections and instance masks."""

from keras_maskrcnn.evaluation.coco_eval import (
    IOU_TYPES,
    METRIC_NAMES,
    detections_to_coco_results,
    encode_mask_rle,
    evaluate_coco,
    save_metrics_json,
)

__all__ = [
    "IOU_TYPES",
    "METRIC_NAMES",
    "detections_to_coco_results",
    "encode_mask_rle",
    "evaluate_coco",
    "save_metrics_json",
]
