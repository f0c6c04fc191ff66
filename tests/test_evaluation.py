"""Tests for keras_maskrcnn.evaluation.coco_eval on the ten real COCO val2017 images."""

import copy
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from keras_maskrcnn.evaluation import (
    METRIC_NAMES,
    detections_to_coco_results,
    encode_mask_rle,
    evaluate_coco,
    save_metrics_json,
)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)

# pycocotools' mask decode trips a numpy 2 deprecation warning that is not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(scope="module")
def coco_gt(coco10_dir):
    return COCO(str(coco10_dir / "annotations.json"))


@pytest.fixture(scope="module")
def label_to_category_id(coco_gt):
    return {i + 1: cat_id for i, cat_id in enumerate(sorted(coco_gt.getCatIds()))}


@pytest.fixture(scope="module")
def gt_results(coco_gt):
    """Every non-crowd annotation as a result with score 1.0 (bbox and mask RLE)."""
    results = []
    for ann in coco_gt.dataset["annotations"]:
        if ann["iscrowd"]:
            continue
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": list(ann["bbox"]),
                "score": 1.0,
                "segmentation": encode_mask_rle(coco_gt.annToMask(ann)),
            }
        )
    return results


def _shift(result, coco_gt, fraction):
    """Move a result right and down by `fraction` of its box size (box and mask alike)."""
    out = dict(result)
    x, y, w, h = result["bbox"]
    dx, dy = fraction * w, fraction * h
    out["bbox"] = [x + dx, y + dy, w, h]
    mask = mask_utils.decode(result["segmentation"])
    shifted = np.zeros_like(mask)
    ix, iy = int(round(dx)), int(round(dy))
    shifted[iy:, ix:] = mask[: mask.shape[0] - iy, : mask.shape[1] - ix]
    out["segmentation"] = encode_mask_rle(shifted)
    return out


def test_ground_truth_against_itself_is_perfect(coco_gt, gt_results):
    assert len(gt_results) == 76  # 77 annotations, one crowd
    metrics = evaluate_coco(coco_gt, gt_results, verbose=False)
    assert set(metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) == set(METRIC_NAMES)
        assert all(isinstance(v, float) for v in metrics[iou_type].values())
        for name in ("AP", "AP50", "AP75", "AR100"):
            assert metrics[iou_type][name] >= 0.999, (iou_type, name)


def test_detections_to_coco_results_end_to_end_perfect(coco_gt, label_to_category_id):
    """GT converted to (y1, x1, y2, x2) + contiguous labels, then back through the converter."""
    category_to_label = {c: lab for lab, c in label_to_category_id.items()}
    results = []
    for image_id in coco_gt.getImgIds():
        anns = [a for a in coco_gt.imgToAnns[image_id] if not a["iscrowd"]]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes = np.stack(
            [xywh[:, 1], xywh[:, 0], xywh[:, 1] + xywh[:, 3], xywh[:, 0] + xywh[:, 2]], axis=1
        )
        labels = np.array([category_to_label[a["category_id"]] for a in anns], dtype=np.int32)
        masks = np.stack([coco_gt.annToMask(a) for a in anns]) if anns else None
        scores = np.linspace(1.0, 0.5, len(anns), dtype=np.float32)
        results += detections_to_coco_results(
            image_id, boxes, scores, labels, label_to_category_id, masks=masks
        )
    metrics = evaluate_coco(coco_gt, results, verbose=False)
    assert metrics["bbox"]["AP"] >= 0.999
    assert metrics["segm"]["AP"] >= 0.999
    json.dumps(results)  # serializable as a COCO results file


def test_shifted_detections_score_lower(coco_gt, gt_results):
    shifted = [_shift(r, coco_gt, 0.3) for r in gt_results]
    perfect = evaluate_coco(coco_gt, gt_results, verbose=False)
    metrics = evaluate_coco(coco_gt, shifted, verbose=False)
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] < perfect[iou_type]["AP"] - 0.5
        assert metrics[iou_type]["AP75"] < perfect[iou_type]["AP75"] - 0.5


def test_dropping_half_the_detections_lowers_recall(coco_gt, gt_results):
    half = gt_results[::2]
    metrics = evaluate_coco(coco_gt, half, iou_types=("bbox",), verbose=False)
    assert set(metrics) == {"bbox"}
    assert 0.2 < metrics["bbox"]["AR100"] < 0.8
    assert metrics["bbox"]["AP"] < 0.9


def test_empty_results_give_zeros(coco_gt):
    metrics = evaluate_coco(coco_gt, [], verbose=False)
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type] == {name: 0.0 for name in METRIC_NAMES}


def test_image_ids_restrict_the_evaluation(coco_gt, gt_results):
    image_id = coco_gt.getImgIds()[0]
    own = [r for r in gt_results if r["image_id"] == image_id]
    only_one = evaluate_coco(coco_gt, own, iou_types=("bbox",), image_ids=[image_id], verbose=False)
    assert only_one["bbox"]["AP"] >= 0.999
    everywhere = evaluate_coco(coco_gt, own, iou_types=("bbox",), verbose=False)
    assert everywhere["bbox"]["AR100"] < 0.5
    with pytest.raises(ValueError, match="image_ids"):
        evaluate_coco(coco_gt, own, image_ids=[-5], verbose=False)


def _synthetic_gt(size, shift):
    """One image, one category, two square objects of side `size` (medium area)."""
    gt_boxes = [[50.0, 50.0, size, size], [300.0, 300.0, size, size]]
    dataset = {
        "images": [{"id": 1, "width": 500, "height": 500}],
        "categories": [{"id": 7, "name": "thing"}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 7,
                "bbox": box,
                "area": size * size,
                "iscrowd": 0,
                "segmentation": [[box[0], box[1], box[0] + size, box[1], box[0] + size,
                                  box[1] + size, box[0], box[1] + size]],
            }
            for i, box in enumerate(gt_boxes)
        ],
    }
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    detections = [
        {"image_id": 1, "category_id": 7, "bbox": gt_boxes[0], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [300.0 + shift, 300.0, size, size],
         "score": 0.8},
    ]
    return coco, detections


def test_ap_matches_101_point_definition():
    size, shift = 80.0, 16.0
    coco, detections = _synthetic_gt(size, shift)
    iou = (size - shift) * size / (2 * size * size - (size - shift) * size)
    # Per IoU threshold: both detections match (AP 1, recall 1) or only the first does; then
    # precision is 1 for recall <= 0.5 and 0 beyond, i.e. 51 of the 101 recall points.
    matched = iou >= IOU_THRESHOLDS
    ap_per_t = np.where(matched, 1.0, 51.0 / 101.0)
    recall_per_t = np.where(matched, 1.0, 0.5)
    metrics = evaluate_coco(coco, detections, iou_types=("bbox",), verbose=False)["bbox"]
    np.testing.assert_allclose(metrics["AP"], ap_per_t.mean(), atol=1e-9)
    np.testing.assert_allclose(metrics["AP50"], ap_per_t[0], atol=1e-9)
    np.testing.assert_allclose(metrics["AP75"], ap_per_t[5], atol=1e-9)
    np.testing.assert_allclose(metrics["APm"], ap_per_t.mean(), atol=1e-9)
    np.testing.assert_allclose(metrics["AR100"], recall_per_t.mean(), atol=1e-9)
    np.testing.assert_allclose(metrics["AR1"], 0.5, atol=1e-9)
    # No small or large ground truth: pycocotools' -1 is kept.
    assert metrics["APs"] == -1.0 and metrics["APl"] == -1.0
    assert metrics["ARs"] == -1.0 and metrics["ARl"] == -1.0


def test_segm_size_ranges_use_mask_area():
    """A false positive with a small mask but a large box counts as small for mask AP."""
    size = 100.0  # large: area 10000 > 96 ** 2
    coco, _ = _synthetic_gt(size, 0.0)
    gt_mask = coco.annToMask(coco.anns[1])
    small_mask = np.zeros_like(gt_mask)
    small_mask[450:460, 450:460] = 1
    detections = [
        {"image_id": 1, "category_id": 7, "score": 0.5, "bbox": coco.anns[1]["bbox"],
         "segmentation": encode_mask_rle(gt_mask)},
        {"image_id": 1, "category_id": 7, "score": 0.4, "bbox": coco.anns[2]["bbox"],
         "segmentation": encode_mask_rle(coco.annToMask(coco.anns[2]))},
        {"image_id": 1, "category_id": 7, "score": 0.9, "bbox": [0.0, 0.0, 300.0, 300.0],
         "segmentation": encode_mask_rle(small_mask)},
    ]
    metrics = evaluate_coco(coco, detections, iou_types=("segm",), verbose=False)["segm"]
    # Ignored in the "large" range by its mask area (100 px), the false positive costs nothing.
    assert metrics["APl"] >= 0.999
    assert metrics["AP"] < 0.999  # it does count over all areas
    assert metrics["APs"] == -1.0


def test_detections_to_coco_results_conversion(label_to_category_id):
    assert label_to_category_id[80] == 90  # COCO's category ids have gaps
    rng = np.random.default_rng(0)
    y1x1 = rng.uniform(0, 200, size=(3, 2))
    hw = rng.uniform(1, 100, size=(3, 2))
    boxes = np.concatenate([y1x1, y1x1 + hw], axis=1).astype(np.float32)
    labels = np.array([1, 80, 12])
    scores = np.array([0.9, 0.5, 0.25], dtype=np.float32)
    results = detections_to_coco_results(42, boxes, scores, labels, label_to_category_id)
    assert [r["category_id"] for r in results] == [1, 90, 13]
    assert all(r["image_id"] == 42 and "segmentation" not in r for r in results)
    expected_xywh = np.stack(
        [boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=1
    )
    np.testing.assert_allclose([r["bbox"] for r in results], expected_xywh, atol=0.006)
    np.testing.assert_allclose([r["score"] for r in results], scores, atol=1e-7)
    assert all(isinstance(v, float) for r in results for v in r["bbox"])


def test_detections_to_coco_results_masks_round_trip(label_to_category_id):
    rng = np.random.default_rng(1)
    masks = (rng.uniform(size=(2, 37, 51)) > 0.6).astype(np.uint8)
    boxes = np.array([[0, 0, 10, 10], [5, 5, 30, 40]], dtype=np.float32)
    results = detections_to_coco_results(
        3, boxes, np.array([0.7, 0.6]), np.array([2, 3]), label_to_category_id, masks=masks
    )
    json.dumps(results)
    for result, mask in zip(results, masks, strict=True):
        assert isinstance(result["segmentation"]["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(result["segmentation"]), mask)


def test_detections_to_coco_results_bad_input(label_to_category_id):
    boxes = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="label_to_category_id"):
        detections_to_coco_results(1, boxes, [0.5], [81], label_to_category_id)
    with pytest.raises(ValueError, match="label_to_category_id"):
        detections_to_coco_results(1, boxes, [0.5], [0], label_to_category_id)
    with pytest.raises(ValueError, match="boxes"):
        detections_to_coco_results(1, np.zeros((1, 3)), [0.5], [1], label_to_category_id)
    with pytest.raises(ValueError, match="scores"):
        detections_to_coco_results(1, boxes, [0.5, 0.4], [1], label_to_category_id)
    with pytest.raises(ValueError, match="masks"):
        detections_to_coco_results(
            1, boxes, [0.5], [1], label_to_category_id, masks=np.zeros((2, 4, 4), np.uint8)
        )
    assert detections_to_coco_results(1, np.zeros((0, 4)), [], [], label_to_category_id) == []


def test_encode_mask_rle():
    mask = np.zeros((6, 9), dtype=np.uint8)
    mask[1:4, 2:7] = 3  # non-binary foreground is binarized
    rle = encode_mask_rle(mask)
    assert rle["size"] == [6, 9]
    json.dumps(rle)
    np.testing.assert_array_equal(mask_utils.decode(rle), (mask > 0).astype(np.uint8))
    assert mask_utils.area(rle) == 15
    with pytest.raises(ValueError, match="2-D"):
        encode_mask_rle(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(TypeError, match="threshold"):
        encode_mask_rle(np.zeros((3, 3), np.float32))


def test_missing_segmentation_is_an_error(coco_gt, gt_results):
    boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in gt_results]
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_coco(coco_gt, boxes_only, verbose=False)
    metrics = evaluate_coco(coco_gt, boxes_only, iou_types=("bbox",), verbose=False)
    assert metrics["bbox"]["AP"] >= 0.999
    with pytest.raises(ValueError, match="iou_types"):
        evaluate_coco(coco_gt, boxes_only, iou_types=("keypoints",), verbose=False)


def test_polygon_and_uncompressed_rle_segmentations_accepted(coco_gt):
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
         "segmentation": a["segmentation"]}  # polygons (lists), uncompressed RLE for the crowd
        for a in coco_gt.dataset["annotations"]
    ]
    metrics = evaluate_coco(coco_gt, results, iou_types=("segm",), verbose=False)
    assert metrics["segm"]["AP"] >= 0.999


def test_unknown_image_id_is_an_error(coco_gt, gt_results):
    bad = [dict(gt_results[0], image_id=123456789)]
    with pytest.raises(ValueError, match="image_id"):
        evaluate_coco(coco_gt, bad, iou_types=("bbox",), verbose=False)


def test_extra_keys_accepted_and_results_untouched(coco_gt, gt_results):
    results = [dict(r, file_name=f"img_{r['image_id']}.jpg") for r in gt_results]
    before = copy.deepcopy(results)
    metrics = evaluate_coco(coco_gt, results, verbose=False)
    assert metrics["bbox"]["AP"] >= 0.999 and metrics["segm"]["AP"] >= 0.999
    assert results == before


def test_verbose_prints_summary(coco_gt, gt_results, capsys):
    evaluate_coco(coco_gt, gt_results[:5], iou_types=("bbox",), verbose=False)
    assert capsys.readouterr().out == ""
    evaluate_coco(coco_gt, gt_results[:5], iou_types=("bbox",), verbose=True)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in capsys.readouterr().out


def test_save_metrics_json(tmp_path, coco_gt):
    metrics = evaluate_coco(coco_gt, [], iou_types=("bbox",), verbose=False)
    path = tmp_path / "sub" / "metrics.json"
    save_metrics_json(metrics, path)
    text = path.read_text()
    assert json.loads(text) == metrics
    assert '\n  "bbox"' in text  # indent 2
