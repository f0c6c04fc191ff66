"""Sliced (tiled) inference: tile geometry, masks kept as crops (paste and RLE against the
full-frame references), the merge across tile borders (a perfect per-tile detector must give
back the ground truth exactly; per-class NMS, from its definition, for whole detections), and a briefly trained
shapes model on a large generated image: the tiles find what whole-image inference misses
(pycocotools), without duplicates on objects crossing tile borders; the CLI, the Python API and
the SavedModel client example agree."""

import itertools
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers import box_iou
from PIL import Image
from pycocotools import mask as mask_utils

from keras_maskrcnn.cli import build_parser, main
from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import ScatteredShapesDataset, ShapesDataset
from keras_maskrcnn.evaluation import evaluate_coco
from keras_maskrcnn.evaluation.coco_eval import encode_mask_rle
from keras_maskrcnn.inference import evaluate, predict_images, predict_tiled, run_views
from keras_maskrcnn.ops.paste import paste_masks
from keras_maskrcnn.tiling import (
    Detections,
    check_tiling,
    coco_records,
    crop_rle,
    crop_tiles,
    is_cut,
    merge_detections,
    tight_crop,
    tile_detections,
    tile_grid,
)
from keras_maskrcnn.visualize import blend_mask_crops, draw_detections

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_MASKRCNN_DISABLE_CUSTOM_OP": "1"}
TRAIN_STEPS = 100  # the shapes preset (128 x 128): about 40-90 s on two CPU cores
TILE, OVERLAP = 128, 0.35  # overlap 44 px >= the largest shape (40 px): each is whole in a tile
BIG = dict(image_size=(768, 1024), seed=3, min_shapes=20, max_shapes=30, min_side=20,
           max_side=40)


# ------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("shape, tile, overlap", [
    ((3000, 4000), 1024, 0.2), ((768, 1024), 128, 0.35), ((300, 129), 128, 0.0),
    ((100, 700), 128, 0.5), ((128, 128), 128, 0.2), ((40, 50), 64, 0.9), ((1000, 999), 97, 0.13)])
def test_tiles_cover_the_image_overlap_as_asked_and_edge_tiles_are_flush(shape, tile, overlap):
    tiles = tile_grid(shape, tile, overlap)
    h, w = shape
    covered = np.zeros(shape, np.int32)
    for y0, x0, y1, x1 in tiles:
        assert (y1 - y0, x1 - x0) == (min(tile, h), min(tile, w))  # no padding, no shrinking
        assert 0 <= y0 and 0 <= x0 and y1 <= h and x1 <= w
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    for axis, length in ((0, h), (1, w)):
        starts = np.unique(tiles[:, axis])
        ends = starts + min(tile, length)
        assert starts[0] == 0 and ends[-1] == length  # first and last tile flush
        if len(starts) > 1:
            overlaps = ends[:-1] - starts[1:]
            assert overlaps.min() >= overlap * tile - 1e-9
            # the fewest tiles: one tile fewer would need a longer step than the overlap allows
            stride = max(1, int(np.floor(tile * (1 - overlap))))
            if len(starts) >= 3:
                assert (length - tile) / (len(starts) - 2) > stride


def test_tiles_are_views_of_the_one_image():
    image = np.zeros((300, 500, 3), np.uint8)
    for crop in crop_tiles(image, tile_grid(image.shape[:2], 128, 0.2)):
        assert crop.base is image and np.shares_memory(crop, image)


@pytest.mark.parametrize("tile, overlap", [(0, 0.2), (16, 0.2), (128.0, 0.2), (True, 0.2),
                                           (128, 1.0), (128, -0.1), (128, "0.2")])
def test_bad_tiling_values_are_value_errors(tile, overlap):
    with pytest.raises(ValueError, match="tile must be|tile_overlap must be"):
        check_tiling(tile, overlap)


@pytest.mark.parametrize("command", [["predict", "--model", "m", "x.png", "--output", "o"],
                                     ["evaluate", "--model", "m"]])
@pytest.mark.parametrize("flags, name", [(["--tile", "0"], "--tile"), (["--tile", "16"], "--tile"),
                                         (["--tile", "1.5"], "--tile"),
                                         (["--tile", "128", "--tile-overlap", "1.0"], "--tile-overlap"),
                                         (["--tile", "128", "--tile-overlap", "-0.2"], "--tile-overlap"),
                                         (["--tile", "128", "--tile-overlap", "x"], "--tile-overlap")])
def test_bad_tiling_flags_are_one_line_errors(command, flags, name, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(command + flags)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {name}" in err and ("must be" in err or "invalid" in err), err


@pytest.mark.parametrize("flags", [["--tile-overlap", "0.3"], ["--tile-full-image"]])
def test_tiling_flags_without_tile_are_one_line_errors(flags, tmp_path, capsys):
    rc = main(["predict", "--model", str(tmp_path / "none"), "x.png", "--output",
               str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{flags[0]} needs --tile" in err[0], err


# ------------------------------------------------------------------------------- masks
def test_masks_pasted_per_tile_equal_the_full_frame_paste_and_rle_equals_pycocotools():
    rng = np.random.default_rng(0)
    image_shape, view = (300, 400), np.array([100, 150, 228, 278])
    for method in ("exact", "torchvision"):
        for _ in range(40):
            y1, x1 = rng.uniform(-3, 120, 2)
            box = np.clip([y1, x1, y1 + rng.uniform(1, 90), x1 + rng.uniform(1, 90)], 0, 128)
            box = box.astype(np.float32)
            probs = rng.uniform(size=(1, 28, 28)).astype(np.float32)
            det = tile_detections(box[None], [0.9], [2], probs, view, 0.5, method)
            # reference: the mask pasted into the whole tile, the tile placed in the image
            reference = np.zeros(image_shape, np.uint8)
            reference[100:228, 150:278] = paste_masks(probs, box[None], (128, 128),
                                                      method=method)[0]
            np.testing.assert_array_equal(det.mask(0, image_shape), reference)
            np.testing.assert_allclose(det.boxes[0], box + [100, 150, 100, 150])
            assert crop_rle(det.mask_crops[0], det.mask_origins[0], image_shape) \
                == encode_mask_rle(reference)
            assert det.mask_crops[0].size <= (box[2] - box[0] + 6) * (box[3] - box[1] + 6)


@pytest.mark.parametrize("origin, size", [((0, 0), (5, 7)), ((295, 393), (5, 7)),
                                          ((10, 0), (290, 400)), ((17, 23), (0, 0)),
                                          ((-2, 390), (6, 20))])
def test_crop_rle_equals_pycocotools_on_the_full_mask(origin, size):
    rng = np.random.default_rng(sum(size))
    crop = (rng.uniform(size=size) > 0.4).astype(np.uint8)
    full = np.zeros((300, 400), np.uint8)
    r0, c0 = max(origin[0], 0), max(origin[1], 0)
    r1, c1 = min(origin[0] + size[0], 300), min(origin[1] + size[1], 400)
    full[r0:r1, c0:c1] = crop[r0 - origin[0]:r1 - origin[0], c0 - origin[1]:c1 - origin[1]]
    rle = crop_rle(crop, origin, (300, 400))
    assert rle == encode_mask_rle(full)
    np.testing.assert_array_equal(mask_utils.decode({**rle, "counts": rle["counts"].encode()}),
                                  full)


def test_mask_crops_are_blended_like_full_masks():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (60, 80, 3)).astype(np.uint8)
    full = np.zeros((2, 60, 80), np.uint8)
    full[0, 5:20, 10:30] = rng.integers(0, 2, (15, 20))
    full[1, 30:58, 50:79] = 1
    crops, origins = zip(*(tight_crop(m, (0, 0)) for m in full), strict=True)
    boxes, labels, scores = np.array([[5, 10, 20, 30], [30, 50, 58, 79]], float), [1, 2], [.9, .8]
    expected = draw_detections(image, boxes, labels, scores, full, ["bg", "a", "b"])
    blended = blend_mask_crops(image, list(crops), np.array(origins))
    got = draw_detections(blended, boxes, labels, scores, None, ["bg", "a", "b"])
    np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------------------------- merge
def _objects(rng, shape, count, sides):
    """Non-overlapping ellipse masks `[G, h, w]` with sizes in `sides` (pixels)."""
    masks, taken = [], np.zeros(shape, bool)
    ys, xs = np.mgrid[:shape[0], :shape[1]] + 0.5
    while len(masks) < count:
        hh, ww = rng.uniform(*sides, 2) / 2
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        mask = ((ys - cy) / hh) ** 2 + ((xs - cx) / ww) ** 2 <= 1
        if mask.sum() > 20 and not (mask & _dilate(taken)).any():
            masks.append(mask)
            taken |= mask
    return np.array(masks, np.uint8)


def _dilate(mask):
    out = mask.copy()
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        out |= np.roll(mask, (dy, dx), axis=(0, 1))
    return out


def _perfect_tiles(masks, labels, tiles, rng):
    """What an ideal detector reports per tile: each object's visible part (tight box, mask
    crop), a random score; parts smaller than 4 pixels are not detected."""
    parts = []
    for view in tiles:
        y0, x0, y1, x1 = view
        boxes, crops, origins, kept = [], [], [], []
        for g, mask in enumerate(masks):
            part = mask[y0:y1, x0:x1]
            if part.sum() < 4:
                continue
            crop, origin = tight_crop(part, (y0, x0))
            boxes.append([*origin, *(origin + crop.shape)])
            crops.append(crop)
            origins.append(origin)
            kept.append(g)
        n = len(kept)
        parts.append(Detections(np.array(boxes, np.float32).reshape(n, 4),
                                rng.uniform(0.5, 1.0, n).astype(np.float32),
                                np.asarray(labels)[kept].astype(np.int32),
                                np.array(origins, np.int64).reshape(n, 2), crops,
                                np.tile(view, (n, 1))))
    return parts


@pytest.mark.parametrize("sides, overlap, count", [((10, 40), 0.35, 14), ((30, 110), 0.25, 8),
                                                   ((60, 300), 0.2, 3), ((150, 380), 0.1, 1)])
def test_merge_of_a_perfect_tile_detector_gives_back_each_object_once(sides, overlap, count):
    """Small objects (whole in some tile), objects larger than the overlap and objects larger
    than a tile (only seen in parts): one detection each, its box and mask exactly the
    object's. Plain per-class NMS on the same detections keeps duplicates."""
    rng = np.random.default_rng(len(sides) + int(sides[1]))
    shape = (400, 520)
    masks = _objects(rng, shape, count, sides)
    labels = rng.integers(1, 4, len(masks))
    tiles = tile_grid(shape, 128, overlap)
    parts = _perfect_tiles(masks, labels, tiles, rng)
    merged = merge_detections(parts, shape, iou_threshold=0.5)
    assert len(merged) == len(masks)
    for i in range(len(merged)):
        full = merged.mask(i, shape)
        g = int(np.argmax([(full & m).sum() for m in masks]))
        np.testing.assert_array_equal(full, masks[g])
        rows, cols = np.flatnonzero(masks[g].any(1)), np.flatnonzero(masks[g].any(0))
        np.testing.assert_array_equal(merged.boxes[i], [rows[0], cols[0], rows[-1] + 1,
                                                        cols[-1] + 1])
        assert merged.labels[i] == labels[g]
    raw = Detections.concat(parts)
    nms = reference_batched_nms(raw.boxes, raw.scores, raw.labels, 0.5)
    assert len(nms) > len(masks), "plain NMS should keep some parts as duplicates here"


def reference_batched_nms(boxes, scores, labels, threshold: float) -> np.ndarray:
    """Greedy per-class NMS from its definition (the semantics of torchvision's
    `batched_nms`): by decreasing score, a box is kept unless its IoU with a kept box of its
    class is above `threshold`. Indices of the kept boxes, by decreasing score. (torchvision
    itself cannot be imported beside TensorFlow in this process.)"""
    iou = box_iou(np.asarray(boxes, np.float64), np.asarray(boxes, np.float64))
    keep: list[int] = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if all(labels[j] != labels[i] or iou[i, j] <= threshold for j in keep):
            keep.append(int(i))
    return np.array(keep, np.int64)


def test_whole_detections_merge_as_per_class_nms():
    """Detections never cut by a tile edge (one view, the whole image) merge exactly as
    per-class NMS keeps them (`reference_batched_nms`)."""
    rng = np.random.default_rng(7)
    n, shape = 300, (200, 300)
    yx = rng.uniform(0, 150, (n, 2))
    boxes = np.concatenate([yx, yx + rng.uniform(5, 50, (n, 2))], 1).astype(np.float32)
    det = Detections(boxes, rng.uniform(size=n).astype(np.float32),
                     rng.integers(1, 4, n).astype(np.int32), np.zeros((n, 2), np.int64),
                     [np.zeros((0, 0), np.uint8)] * n, np.tile([0, 0, *shape], (n, 1)))
    merged = merge_detections(det, shape, iou_threshold=0.5)
    keep = reference_batched_nms(boxes, det.scores, det.labels, 0.5)
    assert 0 < len(keep) < n
    np.testing.assert_array_equal(merged.boxes, boxes[keep])
    np.testing.assert_array_equal(merged.scores, det.scores[keep])


def test_touching_and_nested_objects_of_one_class_stay_apart():
    """Two same-class objects side by side across a tile border, and a small one inside a
    large one, are four objects: the merge compares boxes, it does not glue overlapping ones."""
    shape, tiles = (128, 224), np.array([[0, 0, 128, 128], [0, 96, 128, 224]])
    left = np.zeros(shape, np.uint8)
    left[40:80, 70:110] = 1  # whole in the first tile, cut by the second's left edge (x 96)
    right = np.zeros(shape, np.uint8)
    right[40:80, 112:160] = 1  # cut by the first tile's right edge (x 128), whole in the second
    big = np.zeros(shape, np.uint8)
    big[2:38, 2:60] = 1
    small = np.zeros(shape, np.uint8)
    small[10:20, 10:20] = 1
    masks = np.array([left, right, big, small])
    rng = np.random.default_rng(0)
    merged = merge_detections(_perfect_tiles(masks, [1, 1, 1, 1], tiles, rng), shape)
    assert len(merged) == 4
    assert sorted(int(c.sum()) for c in merged.mask_crops) == sorted(int(m.sum()) for m in masks)


def test_different_classes_are_never_merged():
    shape = (128, 224)
    view_a, view_b = [0, 0, 128, 128], [0, 96, 128, 224]
    box = np.array([[30, 100, 60, 128]], np.float32)  # cut by view_a's right edge
    crop = np.ones((30, 28), np.uint8)
    part_a = Detections(box, np.array([.9], np.float32), np.array([1], np.int32),
                        np.array([[30, 100]]), [crop], np.array([view_a]))
    part_b = Detections(np.array([[30, 100, 60, 140]], np.float32), np.array([.8], np.float32),
                        np.array([2], np.int32), np.array([[30, 100]]),
                        [np.ones((30, 40), np.uint8)], np.array([view_b]))
    assert len(merge_detections([part_a, part_b], shape)) == 2
    part_b.labels[:] = 1
    merged = merge_detections([part_a, part_b], shape)
    assert len(merged) == 1 and merged.scores[0] == np.float32(.9)
    np.testing.assert_array_equal(merged.boxes[0], [30, 100, 60, 140])  # the whole one's box


# ------------------------------------------------------------------------------- a trained model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The shapes preset (128 x 128; shapes of 15-45 px) trained briefly: (directory, model)."""
    from keras_maskrcnn.saving import load_model_dir
    from keras_maskrcnn.training import train

    directory = tmp_path_factory.mktemp("tiling") / "model"
    config = get_config("shapes", warmup_steps=20)
    train(config, ShapesDataset(num_images=512, image_size=128, seed=0), directory,
          max_steps=TRAIN_STEPS, steps_per_epoch=TRAIN_STEPS, batch_size=8, seed=0,
          print_fn=lambda line: None)
    return directory, load_model_dir(directory)


@pytest.fixture(scope="module")
def big_image():
    """1024 x 768 with 20-30 shapes of 20-40 px: whole-image inference sees them at 2.5-5 px
    (the model resizes to 128), tiles of 128 at full size."""
    source = ScatteredShapesDataset(1, **BIG)
    return source, source.load_image(0)


@pytest.fixture(scope="module")
def tile_parts(trained, big_image):
    """Each tile's detections (not merged) and the views, with the trained model."""
    _, model = trained
    _, image = big_image
    views = tile_grid(image.shape[:2], TILE, OVERLAP)
    return run_views(model, crop_tiles(image, views), views, 16, None, model.config.mask_paste)


def test_sliced_inference_finds_the_small_objects_whole_image_inference_misses(
        trained, big_image, tile_parts):
    _, model = trained
    source, image = big_image
    whole = evaluate(model, source, verbose=False)
    merged = merge_detections(tile_parts, image.shape[:2], model.config.nms_threshold)
    sliced = evaluate_coco(source.coco, coco_records(merged, 0, image.shape[:2], {1: 1, 2: 2, 3: 3}),
                           image_ids=[0], verbose=False)
    print("whole", {t: (round(m["AP50"], 3), round(m["AR100"], 3)) for t, m in whole.items()},
          "sliced", {t: (round(m["AP50"], 3), round(m["AR100"], 3)) for t, m in sliced.items()})
    for iou_type in ("bbox", "segm"):
        assert whole[iou_type]["AR100"] < 0.05 and whole[iou_type]["AP50"] < 0.05
        assert sliced[iou_type]["AP50"] > 0.4 and sliced[iou_type]["AR100"] > 0.3


def _overlaps(boxes, gt_box):
    """([D] IoU with `gt_box`, [D] fraction of each box's area on `gt_box`)."""
    lo = np.maximum(boxes[:, :2], gt_box[:2])
    hi = np.minimum(boxes[:, 2:], gt_box[2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + np.prod(gt_box[2:] - gt_box[:2]) - inter), inter / np.maximum(area, 1e-6)


def test_no_duplicates_on_objects_crossing_tile_borders(trained, big_image, tile_parts):
    """On every object that a tile border crosses (each is whole in some other tile): no
    detection cut by a tile edge is left (a truncated part lying on the object), and no two
    detections of one class from different tiles found it (IoU >= 0.5 with the object) that
    NMS would have merged in one tile (IoU >= nms_threshold with each other, or one of them
    cut). Without the merge the tiles' detections have both. (Two whole detections with a
    lower IoU are kept by the model's own NMS on any image, and are not counted.)"""
    _, model = trained
    source, image = big_image
    tiles = tile_grid(image.shape[:2], TILE, OVERLAP)
    raw = Detections.concat(tile_parts)
    merged = merge_detections(tile_parts, image.shape[:2], model.config.nms_threshold)
    counts = {"raw": [0, 0], "merged": [0, 0]}
    crossing = 0
    for box in source.load_annotations(0)["boxes"]:
        inside = (box[0] >= tiles[:, 0]) & (box[1] >= tiles[:, 1]) & (box[2] <= tiles[:, 2]) \
            & (box[3] <= tiles[:, 3])
        touches = (box[0] < tiles[:, 2]) & (box[2] > tiles[:, 0]) & (box[1] < tiles[:, 3]) \
            & (box[3] > tiles[:, 1])
        if not (touches & ~inside).any():
            continue  # no tile border through it
        crossing += 1
        for name, det in (("raw", raw), ("merged", merged)):
            iou, on = _overlaps(det.boxes, box)
            confident = det.scores >= 0.3
            cut = is_cut(det.boxes, det.views, image.shape[:2])
            counts[name][0] += int((confident & cut & (on >= 0.5)).sum())
            for label in (1, 2, 3):
                found = np.flatnonzero(confident & (iou >= 0.5) & (det.labels == label))
                for a, b in itertools.combinations(found, 2):
                    other_tile = not np.array_equal(det.views[a], det.views[b])
                    mutual = _overlaps(det.boxes[a:a + 1], det.boxes[b])[0][0]
                    if other_tile and (cut[a] or cut[b]
                                       or mutual >= model.config.nms_threshold):
                        counts[name][1] += 1
    print(f"{crossing} objects cross tile borders; [cut parts left, duplicates from other "
          f"tiles]: {counts}")
    assert crossing >= 10
    # no cross-tile duplicates; a cut part left alone (the model saw the object only in part
    # in every tile) is not a duplicate, and stays rare
    assert counts["merged"][1] == 0 and counts["merged"][0] <= max(1, crossing // 5), counts
    assert counts["raw"][0] >= 10 and counts["raw"][1] >= 5  # the case is exercised


def test_predict_tiled_holds_no_second_copy_of_a_large_image(trained):
    """4000 x 3000 (36 MB): numpy allocations during sliced inference (tiles are views, masks
    crops) stay below the image's size: no copy of it, no full-size mask per detection (12 MB
    each)."""
    _, model = trained
    image = ScatteredShapesDataset(1, image_size=(3000, 4000), seed=5, min_shapes=5,
                                   max_shapes=8, min_side=200, max_side=400).load_image(0)
    tracemalloc.start()
    try:
        det = predict_tiled(model, image, 1024, 0.2, batch_size=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < image.nbytes, f"peak {peak / 2**20:.1f} MiB"
    assert len(det) and all(c.size < image.shape[0] * image.shape[1] for c in det.mask_crops)


def test_cli_predict_and_python_api_agree(trained, big_image, tmp_path):
    directory, model = trained
    _, image = big_image
    part = np.ascontiguousarray(image[:384, :512])
    Image.fromarray(part).save(tmp_path / "big.png")
    rc = main(["predict", "--model", str(directory), str(tmp_path / "big.png"), "--output",
               str(tmp_path / "out"), "--tile", str(TILE), "--tile-overlap", str(OVERLAP),
               "--score-threshold", "0.3"])
    assert rc == 0
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    det = predict_tiled(model, part, TILE, OVERLAP, score_threshold=0.3)
    expected = coco_records(det, 0, part.shape[:2], {1: 1, 2: 2, 3: 3})
    assert len(records) == len(expected) > 0
    for got, want in zip(records, expected, strict=True):
        assert got["file_name"] == "big.png" and got["segmentation"] == want["segmentation"]
        np.testing.assert_allclose(got["bbox"], want["bbox"], atol=0.01)
    drawing = np.asarray(Image.open(tmp_path / "out" / "big.png"))
    assert drawing.shape == part.shape and not np.array_equal(drawing, part)
    api = predict_images(model, [part], tile=TILE, tile_overlap=OVERLAP)[0]
    every = predict_tiled(model, part, TILE, OVERLAP)  # no score threshold before the merge
    np.testing.assert_array_equal(api["masks"], every.full_masks(part.shape[:2]))
    np.testing.assert_array_equal(api["boxes"], every.boxes)


def test_cli_evaluate_tiled_on_coco_files(trained, tmp_path, capsys):
    directory, model = trained
    source = ScatteredShapesDataset(1, **{**BIG, "image_size": (384, 512)})
    (tmp_path / "images").mkdir()
    Image.fromarray(source.load_image(0)).save(tmp_path / "images" / source.file_name(0))
    (tmp_path / "gt.json").write_text(json.dumps(source.coco.dataset))
    metrics = {}
    for name, flags in (("whole", []), ("sliced", ["--tile", str(TILE), "--tile-overlap",
                                                   str(OVERLAP), "--tile-full-image"])):
        rc = main(["evaluate", "--model", str(directory), "--dataset", "coco", "--annotations",
                   str(tmp_path / "gt.json"), "--images", str(tmp_path / "images"),
                   "--json", str(tmp_path / f"{name}.json"), *flags])
        assert rc == 0, capsys.readouterr().err
        metrics[name] = json.loads((tmp_path / f"{name}.json").read_text())
    api = evaluate(model, source, verbose=False, tile=TILE, tile_overlap=OVERLAP,
                   tile_full_image=True)
    for iou_type in ("bbox", "segm"):
        assert metrics["sliced"][iou_type]["AP"] == pytest.approx(api[iou_type]["AP"], abs=1e-6)
        assert metrics["sliced"][iou_type]["AP50"] > metrics["whole"][iou_type]["AP50"] + 0.3


def test_saved_model_client_example_gives_the_keras_sliced_detections(trained, big_image,
                                                                      tmp_path):
    from keras_maskrcnn.export import export_saved_model

    directory, model = trained
    _, image = big_image
    part = np.ascontiguousarray(image[256:640, 200:712])
    Image.fromarray(part).save(tmp_path / "big.png")
    export_saved_model(directory, tmp_path / "sm", buckets="square")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "saved_model_tiled.py"), str(tmp_path / "sm"),
         str(tmp_path / "big.png"), "--tile", str(TILE), "--tile-overlap", str(OVERLAP),
         "--score-threshold", "0.3", "--output", str(tmp_path / "det.json")],
        capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    records = json.loads((tmp_path / "det.json").read_text())
    det = predict_tiled(model, part, TILE, OVERLAP, score_threshold=0.3)
    assert len(records) == len(det) > 0
    np.testing.assert_allclose([r["bbox"] for r in records],
                               [r["bbox"] for r in coco_records(det, 0, part.shape[:2],
                                                                {1: 1, 2: 2, 3: 3})], atol=0.05)
    np.testing.assert_allclose([r["score"] for r in records], det.scores, atol=1e-4)
