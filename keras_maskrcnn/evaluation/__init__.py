"""COCO evaluation of detections and instance masks, and readable reports of the results."""

from keras_maskrcnn.evaluation.coco_eval import (
    IOU_TYPES,
    METRIC_NAMES,
    PER_CLASS_METRICS,
    CocoMetrics,
    PrecisionRecall,
    detections_to_coco_results,
    encode_mask_rle,
    evaluate_coco,
    per_class_metrics,
    pycocotools_output_to_debug_log,
    save_metrics_json,
)
from keras_maskrcnn.evaluation.report import (
    format_per_class_table,
    format_size_table,
    pr_curve_series,
    print_per_class_table,
    save_pr_curves,
)

__all__ = [
    "IOU_TYPES",
    "METRIC_NAMES",
    "PER_CLASS_METRICS",
    "CocoMetrics",
    "PrecisionRecall",
    "detections_to_coco_results",
    "encode_mask_rle",
    "evaluate_coco",
    "format_per_class_table",
    "format_size_table",
    "per_class_metrics",
    "pr_curve_series",
    "print_per_class_table",
    "pycocotools_output_to_debug_log",
    "save_metrics_json",
    "save_pr_curves",
]
