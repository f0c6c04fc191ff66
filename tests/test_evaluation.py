"""Tests for keras_maskrcnn.evaluation (coco_eval, report) on the ten real COCO val2017 images."""

import contextlib
import copy
import io
import json
import logging
import math

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from keras_maskrcnn.evaluation import (
    METRIC_NAMES,
    PER_CLASS_METRICS,
    CocoMetrics,
    PrecisionRecall,
    detections_to_coco_results,
    encode_mask_rle,
    evaluate_coco,
    format_per_class_table,
    format_size_table,
    print_per_class_table,
    save_metrics_json,
    save_pr_curves,
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
        assert set(metrics[iou_type]) == {*METRIC_NAMES, "per_class"}
        assert all(isinstance(metrics[iou_type][name], float) for name in METRIC_NAMES)
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
    present = _names_with_ground_truth(coco_gt)
    for iou_type in ("bbox", "segm"):
        assert {k: metrics[iou_type][k] for k in METRIC_NAMES} == {n: 0.0 for n in METRIC_NAMES}
        for name, row in metrics[iou_type]["per_class"].items():
            for value in row.values():
                assert value == 0.0 if name in present else math.isnan(value), (name, row)


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


def _reject_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def test_save_metrics_json(tmp_path, coco_gt):
    metrics = evaluate_coco(coco_gt, [], iou_types=("bbox",), verbose=False)
    path = tmp_path / "sub" / "metrics.json"
    save_metrics_json(metrics, path)
    text = path.read_text()
    loaded = json.loads(text, parse_constant=_reject_constant)
    assert {k: loaded["bbox"][k] for k in METRIC_NAMES} == {
        k: metrics["bbox"][k] for k in METRIC_NAMES}
    assert '\n  "bbox"' in text  # indent 2
    plain = {"bbox": {"AP": 0.5, "APl": -1.0}}
    save_metrics_json(plain, path)
    assert json.loads(path.read_text()) == plain


# -- per-class AP, tables, PR curves, pycocotools output -----------------------------------------


def _names_with_ground_truth(coco_gt):
    """Category names with at least one non-crowd annotation, read off the annotations."""
    ids = {a["category_id"] for a in coco_gt.dataset["annotations"] if not a["iscrowd"]}
    return {coco_gt.cats[c]["name"] for c in ids}


@pytest.fixture(scope="module")
def mixed_results(coco_gt, gt_results):
    """Imperfect detections: boxes and masks shifted by 0..40 % of their size, random scores,
    every fifth ground truth missed, and false positives of two categories absent from the
    ground truth (so that per-class APs spread over (0, 1) and some categories have no GT)."""
    rng = np.random.default_rng(3)
    results = []
    for i, r in enumerate(gt_results):
        if i % 5 == 4:
            continue
        shifted = _shift(r, coco_gt, (0.0, 0.1, 0.25, 0.4)[i % 4])
        shifted["score"] = float(rng.uniform(0.05, 1.0))
        results.append(shifted)
    present_ids = {a["category_id"] for a in coco_gt.dataset["annotations"]}
    absent_ids = [c for c in sorted(coco_gt.getCatIds()) if c not in present_ids][:2]
    for j, cat_id in enumerate(absent_ids):
        fp = dict(gt_results[j], category_id=cat_id, score=0.99)
        results.append(fp)
    return results


@pytest.fixture(scope="module")
def mixed_metrics(coco_gt, mixed_results):
    return evaluate_coco(coco_gt, mixed_results, verbose=False)


def _single_category_stats(coco_gt, results, iou_type, cat_id):
    """AP, AP50, AP75 from a COCOeval of one category alone (`params.catIds = [cat_id]`)."""
    key = "bbox" if iou_type == "bbox" else "segmentation"
    typed = [{"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"],
              key: copy.deepcopy(r[key])} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(typed), iouType=iou_type)
        evaluator.params.catIds = [cat_id]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats[:3]]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_per_class_ap_matches_cocoeval_run_per_category(coco_gt, mixed_results, mixed_metrics,
                                                        iou_type):
    per_class = mixed_metrics[iou_type]["per_class"]
    assert list(per_class) == [coco_gt.cats[c]["name"] for c in sorted(coco_gt.getCatIds())]
    present = _names_with_ground_truth(coco_gt)
    fp_ids = {r["category_id"] for r in mixed_results} - {
        a["category_id"] for a in coco_gt.dataset["annotations"]}
    checked = 0
    for cat_id in sorted(coco_gt.getCatIds()):
        name = coco_gt.cats[cat_id]["name"]
        if name not in present and cat_id not in fp_ids and checked > 20:
            continue  # a sample of the categories that nothing mentions is enough
        expected = _single_category_stats(coco_gt, mixed_results, iou_type, cat_id)
        got = [per_class[name][m] for m in PER_CLASS_METRICS]
        if name in present:
            np.testing.assert_allclose(got, expected, atol=1e-12, err_msg=name)
        else:  # pycocotools' -1: no ground truth (false positives or not)
            assert expected == [-1.0, -1.0, -1.0] and all(math.isnan(v) for v in got), name
        checked += 1
    values = [per_class[n]["AP"] for n in present]
    assert len({round(v, 6) for v in values}) >= 4, "the APs should differ between classes"
    assert any(0.05 < v < 0.95 for v in values)


def test_ground_truth_gives_one_for_each_present_class(coco_gt, gt_results):
    metrics = evaluate_coco(coco_gt, gt_results, verbose=False)
    present = _names_with_ground_truth(coco_gt)
    assert len(present) >= 10
    for iou_type in ("bbox", "segm"):
        per_class = metrics[iou_type]["per_class"]
        assert len(per_class) == len(coco_gt.getCatIds()) == 80
        for name, row in per_class.items():
            for metric in PER_CLASS_METRICS:
                if name in present:
                    assert row[metric] == pytest.approx(1.0, abs=1e-12), (iou_type, name)
                else:
                    assert math.isnan(row[metric]), (iou_type, name)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_overall_ap_is_mean_of_per_class_and_of_pr_curves(mixed_metrics, iou_type):
    metrics = mixed_metrics[iou_type]
    for metric in PER_CLASS_METRICS:
        values = [row[metric] for row in metrics["per_class"].values()]
        np.testing.assert_allclose(np.nanmean(values), metrics[metric], atol=1e-12)
    pr = mixed_metrics.precision_recall[iou_type]
    assert isinstance(pr, PrecisionRecall)
    assert pr.precision.shape == (10, 101, 80)
    np.testing.assert_allclose(pr.recall, np.linspace(0.0, 1.0, 101))
    np.testing.assert_allclose(pr.curve(0.5).mean(), metrics["AP50"], atol=1e-12)
    np.testing.assert_allclose(pr.curve(0.75).mean(), metrics["AP75"], atol=1e-12)
    np.testing.assert_allclose(pr.curve().mean(), metrics["AP"], atol=1e-12)
    assert np.all(np.diff(pr.curve(0.5)) <= 1e-12)  # interpolated precision never rises
    with pytest.raises(ValueError, match="IoU threshold"):
        pr.curve(0.6001)


def test_per_class_ap_by_hand_on_synthetic_gt():
    """Two categories of one image: one perfect, one with half its objects found."""
    coco, detections = _synthetic_gt(80.0, 0.0)
    coco.dataset["categories"].append({"id": 9, "name": "other"})
    coco.dataset["annotations"] += [
        dict(a, id=a["id"] + 10, category_id=9) for a in coco.dataset["annotations"]]
    coco.createIndex()
    detections = detections + [dict(detections[0], category_id=9)]
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = evaluate_coco(coco, detections, iou_types=("bbox",), verbose=False)["bbox"]
    assert metrics["per_class"]["thing"] == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}
    for value in metrics["per_class"]["other"].values():  # recall 0.5 of 101 points
        assert value == pytest.approx(51.0 / 101.0, abs=1e-12)


def test_save_metrics_json_keeps_keys_and_adds_per_class(tmp_path, coco_gt, mixed_metrics):
    path = tmp_path / "metrics.json"
    save_metrics_json(mixed_metrics, path)
    loaded = json.loads(path.read_text(), parse_constant=_reject_constant)
    present = _names_with_ground_truth(coco_gt)
    assert set(loaded) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert set(loaded[iou_type]) == {*METRIC_NAMES, "per_class"}
        for name in METRIC_NAMES:
            assert loaded[iou_type][name] == mixed_metrics[iou_type][name]
        per_class = loaded[iou_type]["per_class"]
        assert list(per_class) == list(mixed_metrics[iou_type]["per_class"])
        for name, row in per_class.items():
            assert set(row) == set(PER_CLASS_METRICS)
            if name in present:
                assert row == mixed_metrics[iou_type]["per_class"][name]
            else:
                assert row == {"AP": None, "AP50": None, "AP75": None}


def test_metrics_are_a_plain_dict_with_precision_arrays(coco_gt, mixed_metrics):
    assert isinstance(mixed_metrics, CocoMetrics) and isinstance(mixed_metrics, dict)
    assert set(mixed_metrics.precision_recall) == {"bbox", "segm"}
    json.dumps(mixed_metrics)  # NaN allowed by json.dumps; strict JSON via save_metrics_json
    assert copy.deepcopy(mixed_metrics).precision_recall.keys() == {"bbox", "segm"}


def test_per_class_table(coco_gt, mixed_metrics, tmp_path, capsys):
    table = format_per_class_table(mixed_metrics)
    lines = table.splitlines()
    assert "bbox" in lines[1] and "segm" in lines[1]
    rows = {line.split("|")[0].strip(): line for line in lines[4:] if "|" in line}
    present = _names_with_ground_truth(coco_gt)
    assert set(rows) == set(mixed_metrics["bbox"]["per_class"]) | {"all"}
    person = mixed_metrics["bbox"]["per_class"]["person"]
    assert f"{person['AP']:.3f}" in rows["person"]
    absent = next(n for n in rows if n not in present and n != "all")
    assert rows[absent].split("|")[1].split() == ["-", "-", "-"]
    assert rows["all"].split("|")[1].split() == [
        f"{mixed_metrics['bbox'][m]:.3f}" for m in PER_CLASS_METRICS]
    assert len({len(line) for line in lines[2:]}) == 1  # aligned columns
    # The same table from the JSON file (null for missing values).
    path = tmp_path / "m.json"
    save_metrics_json(mixed_metrics, path)
    assert format_per_class_table(json.loads(path.read_text())) == table
    short = format_per_class_table(mixed_metrics, iou_types=("segm",), hide_missing=True)
    names = {line.split("|")[0].strip() for line in short.splitlines()[4:] if "|" in line}
    assert names == present | {"all"}
    print_per_class_table(mixed_metrics, iou_types=("bbox",))
    assert "person" in capsys.readouterr().out
    with pytest.raises(KeyError, match="keypoints"):
        format_per_class_table(mixed_metrics, iou_types=("keypoints",))


def test_size_table(mixed_metrics):
    lines = format_size_table(mixed_metrics).splitlines()
    assert lines[1].split() == ["iou", "type", "|", "AP", "AP50", "AP75", "APs", "APm", "APl"]
    bbox = lines[3].split("|")[1].split()
    assert bbox == [f"{mixed_metrics['bbox'][m]:.3f}" for m in
                    ("AP", "AP50", "AP75", "APs", "APm", "APl")]
    assert format_size_table({"bbox": {"AP": 0.5, "APl": -1.0}}).splitlines()[3].split(
        "|")[1].split() == ["0.500", "-", "-", "-", "-", "-"]


def _color_pixels(image, color, tolerance=10):
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return np.all(np.abs(pixels - np.array(color)) <= tolerance, axis=-1)


def test_pr_curves_png_pillow(tmp_path, coco_gt, gt_results, mixed_metrics):
    from keras_maskrcnn.evaluation import report

    path = save_pr_curves(mixed_metrics, tmp_path / "sub" / "pr.png", backend="pillow")
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (2 * report._PANEL_W, report._PANEL_H)
    for color in report._CURVE_COLORS:
        assert _color_pixels(image, color).sum() > 200, color
    # Ground truth against itself: precision 1 at every recall, a horizontal line at y = 1 in
    # each panel (the thinnest, last-drawn mean curve on top).
    perfect = evaluate_coco(coco_gt, gt_results, verbose=False)
    image = Image.open(save_pr_curves(perfect, tmp_path / "perfect.png", backend="pillow"))
    green = _color_pixels(image, report._CURVE_COLORS[2])
    for x0 in (0, report._PANEL_W):
        x1, y1 = report._plot_xy(0.5, 1.0, x0)
        assert green[int(round(y1)) - 1:int(round(y1)) + 2, int(x1)].any()
        _, y_half = report._plot_xy(0.5, 0.5, x0)
        assert not green[int(y_half), int(x1)]
    # Only one iou type, from the precision arrays alone.
    image = Image.open(save_pr_curves(perfect.precision_recall, tmp_path / "b.png",
                                      iou_types=("bbox",), backend="pillow"))
    assert image.size == (report._PANEL_W, report._PANEL_H)


def test_pr_curves_need_the_precision_arrays(tmp_path, mixed_metrics):
    with pytest.raises(ValueError, match="precision arrays"):
        save_pr_curves(json.loads(json.dumps(mixed_metrics)), tmp_path / "pr.png")
    with pytest.raises(ValueError, match="backend"):
        save_pr_curves(mixed_metrics, tmp_path / "pr.png", backend="svg")


def test_pr_curves_png_matplotlib(tmp_path, mixed_metrics):
    pytest.importorskip("matplotlib")
    path = save_pr_curves(mixed_metrics, tmp_path / "pr.png", backend="matplotlib")
    assert Image.open(path).format == "PNG"


_CHATTER = ("Loading and preparing results", "DONE (t=", "creating index", "index created",
            "Running per image evaluation", "Accumulating evaluation results")


@pytest.mark.parametrize("results", ["some", "none"])
def test_pycocotools_chatter_goes_to_debug_log(coco_gt, gt_results, capsys, caplog, results):
    results = gt_results[:5] if results == "some" else []
    with caplog.at_level(logging.INFO, logger="keras_maskrcnn"):
        evaluate_coco(coco_gt, results, verbose=True)
    out = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in out
    assert "Evaluating segm" in out
    for text in _CHATTER:
        assert text not in out, text
    assert not caplog.records
    with caplog.at_level(logging.DEBUG, logger="keras_maskrcnn"):
        evaluate_coco(coco_gt, results, iou_types=("bbox",), verbose=False)
    assert capsys.readouterr().out == ""
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "index created" in logged and "Accumulating evaluation results" in logged
