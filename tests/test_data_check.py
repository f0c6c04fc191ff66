"""`data check`: per-class counts, errors (exit 1) and warnings (exit 0) of a COCO file and its
images; malformed records named as `train` (CocoDataset) names them."""

import copy
import json

import numpy as np
import pytest
from PIL import Image

from keras_maskrcnn.cli import main
from keras_maskrcnn.data import CocoDataset
from keras_maskrcnn.data.check import check_coco_file

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CLEAN = {
    "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 60},
               {"id": 2, "file_name": "sub/b.png", "height": 30, "width": 50}],
    "categories": [{"id": 3, "name": "cat"}, {"id": 8, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 60.0,
         "bbox": [2, 3, 10, 6], "segmentation": [[2, 3, 12, 3, 12, 9, 2, 9]]},
        {"id": 2, "image_id": 1, "category_id": 8, "iscrowd": 0, "area": 20.0,
         "bbox": [20, 20, 5, 4], "segmentation": [[20, 20, 25, 20, 25, 24, 20, 24]]},
        {"id": 3, "image_id": 2, "category_id": 3, "iscrowd": 1, "area": 12.0,
         "bbox": [1, 1, 4, 3], "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]},
    ],
}


def _write(tmp_path, data, sizes=None):
    images = tmp_path / "images"
    for img in data["images"]:
        if not isinstance(img.get("height"), int) or img.get("height", 0) <= 0 or \
                not isinstance(img.get("width"), int) or img.get("width", 0) <= 0:
            continue
        path = images / img["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        h, w = (sizes or {}).get(img["file_name"], (img["height"], img["width"]))
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)
    ann = tmp_path / "coco.json"
    ann.write_text(json.dumps(data))
    return ann, images


def test_clean_file_counts_per_class(tmp_path, capsys):
    ann, images = _write(tmp_path, CLEAN)
    report = check_coco_file(ann, images)
    assert report.ok and not report.warnings.kinds
    counts = {c.name: (c.category_id, c.annotations, c.images, c.crowd) for c in report.classes}
    assert counts == {"cat": (3, 2, 2, 1), "dog": (8, 1, 1, 0)}
    assert main(["data", "check", str(ann), "--images", str(images)]) == 0
    out = capsys.readouterr().out
    assert "2 images, 3 annotations (1 crowd), 2 categories" in out
    assert "OK: 0 error(s), 0 warning(s)" in out


def test_warnings_alone_exit_zero(tmp_path, capsys):
    data = copy.deepcopy(CLEAN)
    data["images"].append({"id": 4, "file_name": "c.png", "height": 20, "width": 20})
    anns = data["annotations"]
    anns.append({**anns[0], "id": 9})  # duplicate of annotation 1
    anns.append({"id": 10, "image_id": 1, "category_id": 8, "area": 1.0, "bbox": [50, 30, 20, 5],
                 "segmentation": [[50, 30, 70, 30, 70, 35, 50, 35]]})  # reaches past x = 60
    anns.append({"id": 11, "image_id": 1, "category_id": 8, "area": 1.0, "bbox": [5, 5, 0, 3],
                 "segmentation": [[5, 5, 5, 6, 5, 8]]})  # zero width, zero area
    anns.append({"id": 12, "image_id": 1, "category_id": 3, "area": 1.0, "bbox": [0, 0, 30, 30],
                 "segmentation": [[2, 3, 12, 3, 12, 9, 2, 10]]})  # box off its polygon
    data["categories"].append({"id": 9, "name": "emu"})
    ann, images = _write(tmp_path, data)
    report = check_coco_file(ann, images)
    assert report.ok
    kinds = {k.split(" (")[0]: v[0] for k, v in report.warnings.kinds.items()}
    assert kinds == {
        "duplicate annotation(s)": 1,
        "box(es) reaching outside their image": 1,
        "annotation(s) whose box has zero width or height": 1,
        "box(es) differing from their mask's extent by more than 1 pixel": 1,
        "image(s) without annotations": 1,
        "categories without annotations": 1,
    }
    assert main(["data", "check", str(ann), "--images", str(images)]) == 0
    out = capsys.readouterr().out
    assert "annotation id 9 (image id 1) repeats annotation id 1" in out
    assert "OK: 0 error(s), 6 warning(s)" in out


def test_errors_exit_one(tmp_path, capsys):
    data = copy.deepcopy(CLEAN)
    data["images"].append({"id": 2, "file_name": "c.png", "height": 10, "width": 10})
    data["images"].append({"id": 5, "file_name": "a.png", "height": 40, "width": 60})
    data["images"].append({"id": 6, "file_name": "gone.png", "height": 10, "width": 10})
    data["categories"].append({"id": 8, "name": "dog again"})
    data["annotations"].append({"id": 20, "image_id": 1, "category_id": 3, "area": 4.0,
                                "bbox": [70, 5, 2, 2],
                                "segmentation": [[70, 5, 72, 5, 72, 7, 70, 7]]})
    ann, images = _write(tmp_path, data, sizes={"sub/b.png": (31, 50)})
    (images / "gone.png").unlink()
    report = check_coco_file(ann, images)
    assert not report.ok
    kinds = {k: v[0] for k, v in report.errors.kinds.items()}
    assert kinds == {
        "repeated image id(s)": 1,
        "image file(s) listed twice": 1,
        "repeated category id(s)": 1,
        "box(es) entirely outside their image": 1,
        f"image file(s) missing in {images}": 1,
        "image(s) whose size on disk differs from the json": 1,
    }
    assert main(["data", "check", str(ann), "--images", str(images)]) == 1
    out = capsys.readouterr().out
    assert "sub/b.png: 50x31 on disk, 50x30 in the json (w x h)" in out
    assert "gone.png (image id 6)" in out and "FAILED: 6 error(s)" in out


@pytest.mark.parametrize("field, value", [
    ("bbox", [1, 2, 3]),
    ("segmentation", [[1, 2, 3, 4]]),
    ("segmentation", {"size": [10, 10], "counts": [100]}),
    ("category_id", 4),
    ("image_id", 99),
])
def test_malformed_records_are_named_as_train_names_them(tmp_path, field, value):
    data = copy.deepcopy(CLEAN)
    data["annotations"][1][field] = value
    ann, images = _write(tmp_path, data)
    with pytest.raises(ValueError) as train_error:
        CocoDataset(ann, images)
    report = check_coco_file(ann, images)
    (count, examples), = report.errors.kinds.values()
    assert count == 1 and examples == [str(train_error.value)]
    assert "annotation id 2" in examples[0]


def test_every_malformed_record_is_reported(tmp_path):
    data = copy.deepcopy(CLEAN)
    data["images"][1]["width"] = 0
    data["annotations"][0]["bbox"] = "x"
    data["annotations"][1]["segmentation"] = []
    data["categories"][1] = {"name": "no id"}
    ann, images = _write(tmp_path, data)
    report = check_coco_file(ann, images)
    errors = report.errors.kinds
    assert errors["malformed image record(s)"][0] == 1
    assert "images[1] (id 2): 'width' must be a positive integer" in \
        errors["malformed image record(s)"][1][0]
    assert errors["malformed category record(s)"][0] == 1
    # Annotation 2 (dog) now names an unknown category; annotation 3's image is malformed
    # (already reported): not reported again.
    assert errors["malformed annotation record(s)"][0] == 2


def test_unreadable_file_and_no_images_folder(tmp_path, capsys):
    ann, images = _write(tmp_path, CLEAN)
    (images / "a.png").write_bytes(b"not an image")
    report = check_coco_file(ann, images)
    assert list(report.errors.kinds) == ["unreadable image file(s)"]
    assert "not an image" in report.errors.kinds["unreadable image file(s)"][1][0]
    report = check_coco_file(ann)
    assert report.ok and "image files not checked" in report.format()


@pytest.mark.parametrize("content, pattern", [
    ("{", r"coco\.json is not valid JSON"),
    ('{"images": [], "annotations": []}', r"coco\.json is missing the 'categories' field"),
])
def test_unreadable_json_is_one_line(tmp_path, capsys, content, pattern):
    path = tmp_path / "coco.json"
    path.write_text(content)
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    import re

    assert re.search(pattern, err)


def test_converted_files_check_clean(tmp_path):
    """What `data convert` writes passes `data check` without errors."""
    from keras_maskrcnn.data.formats import convert, write_coco

    data = copy.deepcopy(CLEAN)
    for a in data["annotations"]:
        del a["area"], a["iscrowd"]
    ann, images = _write(tmp_path, data)
    out = write_coco(convert("coco", ann).data, tmp_path / "clean.json")
    report = check_coco_file(out, images)
    assert report.ok and not report.warnings.kinds
