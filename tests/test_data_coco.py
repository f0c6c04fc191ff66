"""CocoDataset on ten real COCO val2017 images (category gaps, crowd RLE, multi-part polygons)."""

import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from keras_maskrcnn.data.coco import CocoDataset
from keras_maskrcnn.data.images import BadImageError

# pycocotools (numpy 2) warns about its RLE objects' __array__; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CROWD_ANN_ID = 900100193245


@pytest.fixture(scope="module")
def raw(coco10_dir):
    with open(coco10_dir / "annotations.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def ds(coco10_dir):
    return CocoDataset(coco10_dir / "annotations.json", coco10_dir / "images")


def _write_copy(tmp_path, coco10_dir, data, copy_images=True):
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(data))
    images = tmp_path / "images"
    if copy_images:
        shutil.copytree(coco10_dir / "images", images)
    else:
        images.mkdir()
    return ann, images


def test_labels_are_contiguous_in_category_id_order(ds, raw):
    cat_ids = sorted(c["id"] for c in raw["categories"])
    names = {c["id"]: c["name"] for c in raw["categories"]}
    assert ds.num_classes == 80 == len(cat_ids)
    assert ds.class_names[0] == "background"
    assert ds.class_names[1:] == [names[i] for i in cat_ids]
    assert ds.label_to_category_id == {i + 1: c for i, c in enumerate(cat_ids)}
    assert ds.category_id_to_label[90] == 80 and ds.label_to_category_id[80] == 90
    assert ds.class_names[1] == "person" and ds.category_id_to_label[1] == 1
    for label, cat in ds.label_to_category_id.items():
        assert ds.category_id_to_label[cat] == label


def test_image_ids_and_info(ds, raw):
    assert ds.image_ids == sorted(img["id"] for img in raw["images"])
    for img in raw["images"]:
        info = ds.image_info(img["id"])
        assert (info["height"], info["width"]) == (img["height"], img["width"])
        assert ds.file_name(img["id"]) == img["file_name"]
    assert ds.coco.getImgIds() and len(ds.coco.getAnnIds()) == 77


def test_load_image_is_rgb_uint8(ds, coco10_dir):
    image_id = ds.image_ids[0]
    image = ds.load_image(image_id)
    info = ds.image_info(image_id)
    assert image.dtype == np.uint8 and image.shape == (info["height"], info["width"], 3)
    expected = np.asarray(Image.open(coco10_dir / "images" / info["file_name"]).convert("RGB"))
    np.testing.assert_array_equal(image, expected)


def test_annotations_match_json(ds, raw):
    cat_ids = sorted(c["id"] for c in raw["categories"])
    for image_id in ds.image_ids:
        anns = [a for a in raw["annotations"] if a["image_id"] == image_id]
        out = ds.load_annotations(image_id)
        assert len(out["labels"]) == len(anns)
        assert out["boxes"].dtype == np.float32 and out["labels"].dtype == np.int32
        assert out["masks"].dtype == np.uint8 and out["is_crowd"].dtype == bool
        for k, a in enumerate(anns):
            x, y, w, h = a["bbox"]
            np.testing.assert_allclose(out["boxes"][k], [y, x, y + h, x + w], rtol=1e-6)
            assert out["labels"][k] == cat_ids.index(a["category_id"]) + 1
            assert out["is_crowd"][k] == bool(a["iscrowd"])
            np.testing.assert_array_equal(out["masks"][k], ds.coco.annToMask(a))


def test_crowd_rle_annotation(ds, raw):
    ann = next(a for a in raw["annotations"] if a["id"] == CROWD_ANN_ID)
    out = ds.load_annotations(ann["image_id"])
    anns = [a for a in raw["annotations"] if a["image_id"] == ann["image_id"]]
    k = [a["id"] for a in anns].index(CROWD_ANN_ID)
    assert out["is_crowd"][k] and out["is_crowd"].sum() == 1
    h, w = ann["segmentation"]["size"]
    expected = mask_utils.decode(mask_utils.frPyObjects(ann["segmentation"], h, w))
    assert expected.sum() > 0
    np.testing.assert_array_equal(out["masks"][k], expected)


def test_multi_part_polygons_are_merged(ds, raw):
    multi = [a for a in raw["annotations"]
             if isinstance(a["segmentation"], list) and len(a["segmentation"]) > 1]
    assert len(multi) >= 2
    for ann in multi:
        info = ds.image_info(ann["image_id"])
        parts = [mask_utils.decode(mask_utils.frPyObjects([poly], info["height"],
                                                          info["width"]))[..., 0]
                 for poly in ann["segmentation"]]
        union = np.any(np.stack(parts), axis=0).astype(np.uint8)
        assert all(p.sum() > 0 for p in parts)
        anns = [a["id"] for a in raw["annotations"] if a["image_id"] == ann["image_id"]]
        mask = ds.load_annotations(ann["image_id"])["masks"][anns.index(ann["id"])]
        np.testing.assert_array_equal(mask, union)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDataset(tmp_path / "nope.json", tmp_path)


@pytest.mark.parametrize("field", ["images", "annotations", "categories"])
def test_missing_field(tmp_path, coco10_dir, raw, field):
    data = {k: v for k, v in raw.items() if k != field}
    ann, images = _write_copy(tmp_path, coco10_dir, data, copy_images=False)
    with pytest.raises(ValueError, match=field) as err:
        CocoDataset(ann, images)
    assert str(ann) in str(err.value)


def test_missing_image_file(tmp_path, coco10_dir, raw, ds):
    ann, images = _write_copy(tmp_path, coco10_dir, raw)
    victim = ds.image_ids[-1]
    (images / ds.file_name(victim)).unlink()
    dataset = CocoDataset(ann, images)
    dataset.load_image(ds.image_ids[0])
    with pytest.raises(BadImageError, match="file not found.*`images_dir`") as err:
        dataset.load_image(victim)
    assert str(images / ds.file_name(victim)) in str(err.value)


def test_wrong_images_folder_fails_at_construction(tmp_path, coco10_dir, raw):
    ann, images = _write_copy(tmp_path, coco10_dir, raw, copy_images=False)
    with pytest.raises(FileNotFoundError, match="`images_dir`"):
        CocoDataset(ann, images)


def test_unknown_category_names_annotation(tmp_path, coco10_dir, raw):
    data = json.loads(json.dumps(raw))
    data["annotations"][3]["category_id"] = 1000
    ann, images = _write_copy(tmp_path, coco10_dir, data, copy_images=False)
    with pytest.raises(ValueError, match=f"annotation id {data['annotations'][3]['id']}"):
        CocoDataset(ann, images)


def test_degenerate_boxes_skipped_with_one_warning(tmp_path, coco10_dir, raw, caplog):
    data = json.loads(json.dumps(raw))
    bad = [data["annotations"][i] for i in (0, 5)]
    bad[0]["bbox"][2] = 0.0
    bad[1]["bbox"][3] = -1.0
    ann, images = _write_copy(tmp_path, coco10_dir, data)
    with caplog.at_level(logging.WARNING, logger="keras_maskrcnn"):
        dataset = CocoDataset(ann, images)
    warnings = [r for r in caplog.records if r.name == "keras_maskrcnn"]
    assert len(warnings) == 1
    assert "2" in warnings[0].getMessage() and str(bad[0]["id"]) in warnings[0].getMessage()
    assert dataset.skipped_annotations == 2
    out = dataset.load_annotations(bad[0]["image_id"])
    n = sum(a["image_id"] == bad[0]["image_id"] for a in raw["annotations"])
    assert len(out["labels"]) == n - sum(b["image_id"] == bad[0]["image_id"] for b in bad)


def test_image_size_mismatch(tmp_path, coco10_dir, raw):
    data = json.loads(json.dumps(raw))
    data["images"][0]["height"] += 3
    ann, images = _write_copy(tmp_path, coco10_dir, data)
    dataset = CocoDataset(ann, images)
    with pytest.raises(ValueError, match=data["images"][0]["file_name"]):
        dataset.load_image(data["images"][0]["id"])


def test_gray_and_rgba_images_and_image_without_annotations(tmp_path, raw):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((6, 8), 77, np.uint8), "L").save(images / "g.png")
    Image.fromarray(np.full((5, 4, 4), 200, np.uint8), "RGBA").save(images / "a.png")
    data = {"images": [{"id": 2, "file_name": "g.png", "height": 6, "width": 8},
                       {"id": 1, "file_name": "a.png", "height": 5, "width": 4}],
            "annotations": [], "categories": raw["categories"]}
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(data))
    dataset = CocoDataset(ann, images)
    assert dataset.image_ids == [1, 2]
    gray = dataset.load_image(2)
    assert gray.shape == (6, 8, 3) and gray.dtype == np.uint8 and (gray == 77).all()
    assert dataset.load_image(1).shape == (5, 4, 3)
    empty = dataset.load_annotations(2)
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 6, 8)
    assert empty["labels"].dtype == np.int32 and empty["is_crowd"].dtype == bool


def test_class_names_fix_label_order(coco10_dir):
    dataset = CocoDataset(coco10_dir / "annotations.json", coco10_dir / "images",
                          class_names=["background", "toothbrush", "person"])
    assert dataset.class_names == ["background", "toothbrush", "person"]
    assert dataset.label_to_category_id == {1: 90, 2: 1}
    assert dataset.skipped_category_annotations > 0
    labels = np.concatenate([dataset.load_annotations(i)["labels"] for i in dataset.image_ids])
    assert set(labels.tolist()) <= {1, 2} and (labels == 2).sum() > 0
    with pytest.raises(ValueError, match="unicorn"):
        CocoDataset(coco10_dir / "annotations.json", coco10_dir / "images",
                    class_names=["unicorn"])


def _set(path, value):
    def change(data):
        record = data
        for key in path[:-1]:
            record = record[key]
        if value is KeyError:
            del record[path[-1]]
        else:
            record[path[-1]] = value
    return change


MALFORMED = {
    # case: (change, words the one-line error must hold)
    "bbox_text": (_set(("annotations", 0, "bbox"), [1, 2, "x", 4]), ["annotation id", "'bbox'"]),
    "bbox_short": (_set(("annotations", 0, "bbox"), [1, 2, 3]), ["annotation id", "'bbox'"]),
    "no_bbox": (_set(("annotations", 0, "bbox"), KeyError), ["annotation id", "'bbox'"]),
    "no_ann_id": (_set(("annotations", 0, "id"), KeyError), ["annotation id None", "'id'"]),
    "image_id_text": (_set(("annotations", 0, "image_id"), "abc"), ["'image_id'", "integer"]),
    "odd_polygon": (_set(("annotations", 0, "segmentation"), [[1, 2, 3]]),
                    ["'segmentation'", "polygon 0", "3 coordinates"]),
    "two_points": (_set(("annotations", 0, "segmentation"), [[1, 2, 3, 4]]),
                   ["polygon 0", "at least 6"]),
    "empty_segmentation": (_set(("annotations", 0, "segmentation"), []), ["empty list"]),
    "polygon_text": (_set(("annotations", 0, "segmentation"), [[1, 2, "a", 4, 5, 6]]),
                     ["polygon 0", "numbers"]),
    "rle_size": (_set(("annotations", 0, "segmentation"), {"counts": "PP", "size": [1, 2]}),
                 ["RLE size [1, 2]", "[height, width]"]),
    "rle_counts": (lambda d: d["annotations"][0].update(segmentation={
        "counts": "zzz", "size": [d["images"][0]["height"], d["images"][0]["width"]]}),
        ["RLE 'counts'"]),
    "rle_runs": (lambda d: d["annotations"][0].update(segmentation={
        "counts": [5, 5], "size": [d["images"][0]["height"], d["images"][0]["width"]]}),
        ["run lengths summing to"]),
    "no_height": (_set(("images", 0, "height"), KeyError), ["images[0]", "'height'"]),
    "zero_width": (_set(("images", 0, "width"), 0), ["images[0]", "'width'", "positive"]),
    "duplicate_image": (lambda d: d["images"].append(dict(d["images"][0])),
                        ["appears twice"]),
    "category_without_name": (_set(("categories", 0, "name"), KeyError), ["categories[0]"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_record_named_at_construction(tmp_path, coco10_dir, raw, case):
    """Each malformed record fails when the file is opened (not mid-run), in one line naming
    the file, the record and the field."""
    import copy

    change, words = MALFORMED[case]
    data = copy.deepcopy(raw)
    first = data["images"][0]["id"]
    data["annotations"].sort(key=lambda a: a["image_id"] != first)  # [0] is on images[0]
    change(data)
    ann, images = _write_copy(tmp_path, coco10_dir, data, copy_images=False)
    with pytest.raises(ValueError) as info:
        CocoDataset(ann, images)
    message = str(info.value)
    assert "\n" not in message and "instances.json" in message, message
    for word in words:
        assert word in message, (word, message)


def test_valid_rle_forms_are_accepted(tmp_path, coco10_dir, raw):
    """Compressed (string) and uncompressed (run lengths) RLE of the image's size load."""
    import collections
    import copy

    data = copy.deepcopy(raw)
    counts = collections.Counter(a["image_id"] for a in data["annotations"])
    image = next(i for i in data["images"] if counts[i["id"]] >= 2)
    h, w = image["height"], image["width"]
    mask = np.zeros((h, w), np.uint8, order="F")
    mask[10:20, 30:50] = 1
    compressed = mask_utils.encode(mask)["counts"].decode()
    runs = [10 * h + 10, 10, h * w - (10 * h + 20)]  # column-major: 10 pixels of column 10
    mine = [a for a in data["annotations"] if a["image_id"] == image["id"]]
    for ann in mine:
        ann["iscrowd"] = 0
    mine[0]["segmentation"] = {"size": [h, w], "counts": compressed}
    mine[1]["segmentation"] = {"size": [h, w], "counts": runs}
    ann, images = _write_copy(tmp_path, coco10_dir, data)
    sums = CocoDataset(ann, images).load_annotations(image["id"])["masks"].sum(axis=(1, 2))
    assert 200 in sums.tolist() and 10 in sums.tolist()
