"""COCO-style evaluation of detections and instance masks with pycocotools.

Detections arrive as `(y1, x1, y2, x2)` boxes in original image pixels with contiguous labels
`1..K`; they are converted to COCO result dicts (`bbox` as `[x, y, w, h]`, the dataset's own
category ids, masks as compressed RLE) and scored with `pycocotools.cocoeval.COCOeval`.

Metric convention: pycocotools reports `-1` for a metric that has no ground truth to measure
(e.g. `APl` when no ground-truth object is large). `evaluate_coco` keeps that value as `-1.0`
in the twelve summary metrics rather than converting it to NaN, so the numbers match the printed
COCO tables exactly. The per-class table (`"per_class"`) instead holds NaN for a category without
ground truth on the evaluated images; `save_metrics_json` writes every non-finite value as `null`
(strict JSON).

pycocotools' progress prints ("Loading and preparing results...", "creating index...",
"Accumulating evaluation results...") never reach stdout: they go to the `keras_maskrcnn` logger
at DEBUG level. With `verbose=True` only the AP/AR summary table is printed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

logger = logging.getLogger("keras_maskrcnn")

IOU_TYPES = ("bbox", "segm")

# Order of COCOeval.stats for detection (bbox / segm) evaluation.
METRIC_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)

# Metrics of each category in `metrics[iou_type]["per_class"][name]` (area "all", maxDets 100).
PER_CLASS_METRICS = ("AP", "AP50", "AP75")


@dataclass(frozen=True)
class PrecisionRecall:
    """COCOeval's interpolated precision at its recall points, area "all", maxDets 100.

    Attributes:
        iou_thresholds: `[T]` IoU thresholds (0.50, 0.55, ..., 0.95).
        recall: `[R]` recall points (0.00, 0.01, ..., 1.00).
        precision: `[T, R, K]` precision per IoU threshold, recall point and category; NaN for a
            category without ground truth on the evaluated images.
        category_ids: `K` dataset category ids, the order of the last axis.
        category_names: `K` category names.
    """

    iou_thresholds: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    category_ids: tuple[int, ...]
    category_names: tuple[str, ...]

    def curve(self, iou_threshold: float | None = None) -> np.ndarray:
        """`[R]` precision averaged over the categories that have ground truth, at one IoU
        threshold, or also averaged over all thresholds (0.50:0.95) when `iou_threshold` is None.
        Its mean over the recall points is AP50 / AP75 / AP. All NaN without any ground truth."""
        if iou_threshold is None:
            values = self.precision
        else:
            values = self.precision[self._iou_index(iou_threshold)][None]
        # [T', R, K] -> [R]: mean over the thresholds and the categories with ground truth.
        values = np.moveaxis(values, 1, 0).reshape(len(self.recall), -1)
        return np.array([_nanmean(row) for row in values])

    def _iou_index(self, iou_threshold: float) -> int:
        matches = np.flatnonzero(np.isclose(self.iou_thresholds, iou_threshold))
        if not len(matches):
            raise ValueError(f"IoU threshold {iou_threshold} is not one of "
                             f"{[round(float(t), 2) for t in self.iou_thresholds]}")
        return int(matches[0])


class CocoMetrics(dict):
    """What `evaluate_coco` returns: a plain `{iou_type: {metric: value}}` dict (JSON-friendly
    content, compared and serialized like any dict) that also carries, as the attribute
    `precision_recall`, the `{iou_type: PrecisionRecall}` arrays behind the numbers (for
    `save_pr_curves`). The attribute is not part of the dict, so it is not written to JSON."""

    def __init__(self, *args, precision_recall: Mapping[str, PrecisionRecall] | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.precision_recall: dict[str, PrecisionRecall] = dict(precision_recall or {})


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite values; NaN when there are none (without numpy's warning)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


@contextlib.contextmanager
def pycocotools_output_to_debug_log() -> Iterator[None]:
    """Capture what pycocotools prints inside the block and log it at DEBUG level instead."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        text = buffer.getvalue().strip()
        if text:
            logger.debug("pycocotools: %s", text)


def encode_mask_rle(mask: np.ndarray) -> dict:
    """Encode one binary mask as COCO compressed RLE.

    Args:
        mask: `[h, w]` bool or integer array (uint8 0/1 expected); any non-zero pixel is
            foreground.

    Returns:
        `{"size": [h, w], "counts": str}`, JSON-serializable (`counts` decoded from bytes).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D [h, w] array, got shape {mask.shape}")
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
        raise TypeError(
            f"mask must be a bool or integer (uint8 0/1) array, got dtype {mask.dtype}; "
            "threshold probability masks first"
        )
    # pycocotools counts runs of equal values, so values other than 0/1 must be binarized.
    binary = np.asfortranarray((mask != 0).astype(np.uint8))
    rle = mask_utils.encode(binary)
    rle["counts"] = rle["counts"].decode("ascii")
    rle["size"] = [int(s) for s in rle["size"]]
    return rle


def _check_detection_arrays(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, masks: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [D, 4] (y1, x1, y2, x2), got {boxes.shape}")
    num = boxes.shape[0]
    if scores.shape != (num,):
        raise ValueError(f"scores must have shape [D]=[{num}], got {scores.shape}")
    if labels.shape != (num,):
        raise ValueError(f"labels must have shape [D]=[{num}], got {labels.shape}")
    if num and not np.all(np.equal(np.mod(labels, 1), 0)):
        raise ValueError("labels must be integers (contiguous 1..K)")
    labels = labels.astype(np.int64)
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[0] != num:
            raise ValueError(f"masks must have shape [D, h, w] with D={num}, got {masks.shape}")
    return boxes, scores, labels, masks


def detections_to_coco_results(
    image_id: int,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    label_to_category_id: Mapping[int, int],
    masks: np.ndarray | None = None,
) -> list[dict]:
    """Convert one image's detections to COCO result dicts.

    Args:
        image_id: COCO id of the image.
        boxes: `[D, 4]` float `(y1, x1, y2, x2)` in original image pixels.
        scores: `[D]` float confidence scores.
        labels: `[D]` int contiguous labels `1..K` (padding rows must be removed first).
        label_to_category_id: map from contiguous label to the dataset's category id.
        masks: optional `[D, h, w]` uint8 0/1 masks in original image pixels.

    Returns:
        `D` dicts `{"image_id", "category_id", "bbox": [x, y, w, h] (pixels, 2 decimals),
        "score"}`, plus `"segmentation"` (compressed RLE, str counts) when `masks` is given.
    """
    boxes, scores, labels, masks = _check_detection_arrays(boxes, scores, labels, masks)
    missing = sorted({int(lab) for lab in labels} - {int(k) for k in label_to_category_id})
    if missing:
        raise ValueError(
            f"labels {missing} are not in label_to_category_id (known labels: "
            f"{sorted(label_to_category_id)}); label 0 is background/padding"
        )
    results = []
    for i in range(boxes.shape[0]):
        y1, x1, y2, x2 = boxes[i]
        result = {
            "image_id": int(image_id),
            "category_id": int(label_to_category_id[int(labels[i])]),
            "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
            "score": float(scores[i]),
        }
        if masks is not None:
            result["segmentation"] = encode_mask_rle(masks[i])
        results.append(result)
    return results


def _check_results(coco_gt: COCO, results: Sequence[dict], iou_types: Iterable[str]) -> None:
    if not isinstance(results, (list, tuple)):
        raise TypeError(f"results must be a list of dicts, got {type(results).__name__}")
    needed = {"image_id", "category_id", "score"}
    needed |= {"bbox" if t == "bbox" else "segmentation" for t in iou_types}
    gt_ids = set(coco_gt.getImgIds())
    for i, result in enumerate(results):
        if not isinstance(result, Mapping):
            raise TypeError(f"results[{i}] must be a dict, got {type(result).__name__}")
        absent = needed - set(result)
        if absent:
            raise ValueError(
                f"results[{i}] lacks {sorted(absent)}, needed for iou_types {tuple(iou_types)}"
            )
        if result["image_id"] not in gt_ids:
            raise ValueError(f"results[{i}] has image_id {result['image_id']} not in coco_gt")


def _to_rle(coco_gt: COCO, result: Mapping) -> dict:
    """Return the result's segmentation as compressed RLE (polygons, uncompressed RLE converted)."""
    segm = result["segmentation"]
    if isinstance(segm, Mapping) and "counts" in segm and "size" in segm:
        if isinstance(segm["counts"], list):  # uncompressed RLE
            return mask_utils.frPyObjects(dict(segm), *segm["size"])
        return dict(segm)
    if isinstance(segm, list):
        img = coco_gt.imgs[result["image_id"]]
        return mask_utils.merge(mask_utils.frPyObjects(segm, img["height"], img["width"]))
    raise ValueError(
        "segmentation must be an RLE dict {'size', 'counts'} or a list of polygons, "
        f"got {type(segm).__name__}"
    )


def _results_for(coco_gt: COCO, results: Sequence[dict], iou_type: str) -> list[dict]:
    """Fresh result dicts carrying only what pycocotools needs for one iou type.

    For "segm" the box is dropped, so that loadRes measures the instance area from the mask
    (small / medium / large) instead of from the box, as Detectron2 does.
    """
    out = []
    for r in results:
        clean = {
            "image_id": int(r["image_id"]),
            "category_id": int(r["category_id"]),
            "score": float(r["score"]),
        }
        if iou_type == "bbox":
            clean["bbox"] = [float(v) for v in r["bbox"]]
        else:
            clean["segmentation"] = _to_rle(coco_gt, r)
        out.append(clean)
    return out


def _load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    if results:
        return coco_gt.loadRes(results)
    # loadRes indexes results[0]; an empty result set is built by hand instead.
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt


def _category_names(coco_gt: COCO, category_ids: Sequence[int]) -> list[str]:
    """Category names for the per-class table; a name used by several ids gets its id added."""
    names = [str(coco_gt.cats[c].get("name", c)) for c in category_ids]
    return [f"{n} (id {c})" if names.count(n) > 1 else n
            for n, c in zip(names, category_ids, strict=True)]


def _precision_recall(coco_gt: COCO, evaluator: COCOeval) -> PrecisionRecall:
    p = evaluator.params
    precision = evaluator.eval["precision"]  # [T, R, K, A, M], -1 where there is no ground truth
    area = list(p.areaRngLbl).index("all")
    max_dets = list(p.maxDets).index(100)  # what the AP / AP50 / AP75 summary lines use
    values = np.asarray(precision[:, :, :, area, max_dets], dtype=np.float64)
    category_ids = tuple(int(c) for c in p.catIds)
    return PrecisionRecall(
        iou_thresholds=np.asarray(p.iouThrs, dtype=np.float64),
        recall=np.asarray(p.recThrs, dtype=np.float64),
        precision=np.where(values > -1, values, np.nan),
        category_ids=category_ids,
        category_names=tuple(_category_names(coco_gt, category_ids)),
    )


def per_class_metrics(pr: PrecisionRecall) -> dict[str, dict[str, float]]:
    """`{category name: {"AP", "AP50", "AP75"}}` from the precision array, in category-id order;
    NaN for a category without ground truth. Each equals COCOeval's summary AP / AP50 / AP75 when
    only that category is evaluated (`params.catIds = [id]`)."""
    t50, t75 = pr._iou_index(0.5), pr._iou_index(0.75)
    table = {}
    for k, name in enumerate(pr.category_names):
        values = pr.precision[:, :, k]  # [T, R]
        table[name] = {"AP": _nanmean(values), "AP50": _nanmean(values[t50]),
                       "AP75": _nanmean(values[t75])}
    return table


def _run_cocoeval(
    coco_gt: COCO, results: list[dict], iou_type: str, image_ids: list[int], verbose: bool
) -> tuple[dict[str, Any], PrecisionRecall]:
    with pycocotools_output_to_debug_log():
        coco_dt = _load_results(coco_gt, results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
    if verbose:
        evaluator.summarize()
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.summarize()
    metrics: dict[str, Any] = {
        name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats, strict=True)}
    pr = _precision_recall(coco_gt, evaluator)
    metrics["per_class"] = per_class_metrics(pr)
    return metrics, pr


def evaluate_coco(
    coco_gt: COCO,
    results: list[dict],
    iou_types: Sequence[str] = IOU_TYPES,
    image_ids: list[int] | None = None,
    verbose: bool = True,
) -> CocoMetrics:
    """Score COCO result dicts against ground truth with pycocotools' COCOeval.

    Args:
        coco_gt: pycocotools `COCO` holding the ground truth.
        results: COCO result dicts (`image_id`, `category_id`, `score`, `bbox` `[x, y, w, h]`
            pixels for "bbox", `segmentation` RLE for "segm"); extra keys are ignored.
        iou_types: any of "bbox", "segm".
        image_ids: images to evaluate on (default: all images of `coco_gt`); results on other
            images are ignored.
        verbose: print a header line and pycocotools' AP/AR summary table per iou type (its
            progress prints go to the DEBUG log either way).

    Returns:
        A `CocoMetrics` dict `{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1",
        "AR10", "AR100", "ARs", "ARm", "ARl", "per_class"}}`: the twelve summary metrics as
        floats in [0, 1] (`-1.0` where pycocotools has no ground truth to measure, e.g. no
        large objects; `APs`/`APm`/`APl` are AP by object size), and `"per_class"`:
        `{category name: {"AP", "AP50", "AP75"}}` in category-id order, NaN for a category
        without ground truth. Empty `results` give 0.0 wherever ground truth exists. Its
        `precision_recall` attribute holds `{iou_type: PrecisionRecall}`.
    """
    if isinstance(iou_types, str):
        iou_types = (iou_types,)
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown or not iou_types:
        raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}, got {iou_types}")
    gt_ids = set(coco_gt.getImgIds())
    if image_ids is None:
        image_ids = sorted(gt_ids)
    image_ids = [int(i) for i in image_ids]
    if not set(image_ids) <= gt_ids:
        raise ValueError(f"image_ids {sorted(set(image_ids) - gt_ids)} are not in coco_gt")
    _check_results(coco_gt, results, iou_types)

    metrics = CocoMetrics()
    for iou_type in iou_types:
        typed = _results_for(coco_gt, results, iou_type)
        if verbose:
            print(f"Evaluating {iou_type} on {len(image_ids)} images, {len(typed)} results")
        metrics[iou_type], metrics.precision_recall[iou_type] = _run_cocoeval(
            coco_gt, typed, iou_type, image_ids, verbose)
    return metrics


def _json_safe(value: Any) -> Any:
    """Plain JSON types; NaN / inf become None (null)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def save_metrics_json(metrics: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write `metrics` (e.g. the output of `evaluate_coco`, per-class table included) as strict
    JSON with indent 2: NaN (a category without ground truth) is written as `null`."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_json_safe(metrics), f, indent=2, allow_nan=False)
        f.write("\n")
