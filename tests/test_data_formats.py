"""`data convert`: labelme, VIA 2 and COCO (CVAT-style) files -> clean COCO that CocoDataset
reads; polygons, ids and categories preserved; every bad input a one-line error naming it."""

import base64
import io
import json
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from keras_maskrcnn.cli import main
from keras_maskrcnn.data import CocoDataset
from keras_maskrcnn.data.formats import convert, write_coco
from keras_maskrcnn.data.formats.common import CURVE_TOLERANCE, ellipse_polygon, polygon_area

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

POLY = [[1.5, 2.25], [20.0, 3.0], [10.125, 15.5]]  # non-integer: kept exactly


def _image(path, height, width):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)


def _png_b64(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _shape(label, points, kind="polygon", group=None, **extra):
    return {"label": label, "points": points, "shape_type": kind, "group_id": group,
            "flags": {}, **extra}


def _labelme(folder, name, shapes, image="", height=40, width=60, **extra):
    image = image or f"{name}.png"
    data = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": image,
            "imageData": None, "imageHeight": height, "imageWidth": width, **extra}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def labelme_dir(tmp_path):
    folder = tmp_path / "lm"
    _image(folder / "b.png", 40, 60)
    _image(folder / "a.png", 30, 50)
    part = np.zeros((5, 6), np.uint8)
    part[1:4, 2:5] = 255
    _labelme(folder, "b", [
        _shape("zebra", POLY),
        _shape("cat", [[30, 5], [40, 20]], "rectangle", group=1),
        _shape("cat", [[45, 5], [50, 10]], "rectangle", group=1),  # same instance
        _shape("zebra", [[44, 10], [48, 14]], "rectangle", group=1),  # other label: its own
        _shape("ant", [[30, 30], [34, 30]], "circle"),
        _shape("ant", [[1, 1], [5, 5]], "line"),
        _shape("bee", [[10, 20], [15, 24]], "mask", mask=_png_b64(part)),
    ])
    _labelme(folder, "a", [], height=30, width=50)
    return folder


def test_labelme_polygons_ids_and_categories(labelme_dir):
    result = convert("labelme", labelme_dir)
    data = result.data
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in data["images"]] == [
        (1, "a.png", 30, 50), (2, "b.png", 40, 60)]  # sorted JSON names -> 1..N
    assert data["categories"] == [{"id": 1, "name": "ant"}, {"id": 2, "name": "bee"},
                                  {"id": 3, "name": "cat"}, {"id": 4, "name": "zebra"}]
    anns = data["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3, 4, 5]
    assert all(a["image_id"] == 2 and a["iscrowd"] == 0 for a in anns)
    zebra, cat, zebra2, ant, bee = anns
    assert zebra["segmentation"] == [[v for p in POLY for v in p]]  # exact coordinates
    assert zebra["bbox"] == [1.5, 2.25, 18.5, 13.25]
    assert cat["category_id"] == 3 and cat["segmentation"] == [
        [30, 5, 40, 5, 40, 20, 30, 20], [45, 5, 50, 5, 50, 10, 45, 10]]
    assert cat["bbox"] == [30, 5, 20, 15] and cat["area"] == pytest.approx(10 * 15 + 5 * 5)
    assert zebra2["category_id"] == 4 and zebra2["bbox"] == [44, 10, 4, 4]
    ring = np.asarray(ant["segmentation"][0]).reshape(-1, 2)
    np.testing.assert_allclose(np.hypot(ring[:, 0] - 30, ring[:, 1] - 30), 4.0)
    assert ant["bbox"] == pytest.approx([26, 26, 8, 8])
    assert bee["bbox"] == [12, 21, 3, 3] and bee["area"] == 9  # the PNG placed at (10, 20)
    assert any("no region" in n for n in result.notes)


def test_labelme_round_trips_into_coco_dataset(labelme_dir, tmp_path):
    out = write_coco(convert("labelme", labelme_dir).data, tmp_path / "coco.json")
    ds = CocoDataset(out, labelme_dir)
    assert ds.class_names == ["background", "ant", "bee", "cat", "zebra"]
    ann = ds.load_annotations(2)
    assert list(ann["labels"]) == [4, 3, 4, 1, 2]
    # The labelme mask, placed by hand: rows 1..3, cols 2..4 of the PNG at x=10, y=20.
    expected = np.zeros((40, 60), np.uint8)
    expected[21:24, 12:15] = 1
    np.testing.assert_array_equal(ann["masks"][4], expected)
    # The rectangle pair: the union of both boxes (pycocotools' polygon raster).
    assert ann["masks"][1].sum() == 10 * 15 + 5 * 5
    np.testing.assert_allclose(ann["boxes"][1], [5, 30, 20, 50])  # (y1, x1, y2, x2)
    assert len(ds.load_annotations(1)["labels"]) == 0


def test_circles_and_ellipses_stay_within_tolerance():
    for rx, ry, theta in ((4.0, 4.0, 0.0), (50.0, 20.0, 0.7), (300.0, 300.0, 0.0)):
        poly = np.asarray(ellipse_polygon(10.0, 20.0, rx, ry, theta)).reshape(-1, 2)
        c, s = math.cos(theta), math.sin(theta)
        dx, dy = poly[:, 0] - 10.0, poly[:, 1] - 20.0
        u, v = dx * c + dy * s, -dx * s + dy * c  # back into the ellipse's axes
        np.testing.assert_allclose((u / rx) ** 2 + (v / ry) ** 2, 1.0, atol=1e-9)
        # Sagitta of the widest chord on the largest radius stays within the tolerance.
        n = len(poly)
        assert max(rx, ry) * (1 - math.cos(math.pi / n)) <= CURVE_TOLERANCE + 1e-9
        # Equally spaced parameters: the affine image of a regular n-gon inscribed in a circle.
        assert polygon_area(poly.reshape(-1).tolist()) == pytest.approx(
            n / 2 * rx * ry * math.sin(2 * math.pi / n), rel=1e-9)


def test_labelme_categories_file_and_sizes_from_image_data(tmp_path):
    folder = tmp_path / "lm"
    folder.mkdir()
    embedded = base64.b64encode(_encoded_png(24, 36)).decode()
    path = _labelme(folder, "x", [_shape("dog", POLY), _shape("cat", POLY)],
                    image="..\\pics\\x.png", imageData=embedded)
    data = json.loads(path.read_text())
    del data["imageHeight"], data["imageWidth"]
    path.write_text(json.dumps(data))
    names = tmp_path / "names.txt"
    names.write_text("dog\n\ncat\nbird\n")
    (tmp_path / "pics").mkdir()
    result = convert("labelme", folder, categories=names, images_dir=tmp_path / "pics")
    d = result.data
    assert d["categories"] == [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"},
                               {"id": 3, "name": "bird"}]
    assert [a["category_id"] for a in d["annotations"]] == [1, 2]
    assert d["images"][0]["file_name"] == "x.png"  # relative to --images (backslashes read)
    assert (d["images"][0]["height"], d["images"][0]["width"]) == (24, 36)
    names.write_text("dog\n")
    with pytest.raises(ValueError, match=r"label 'cat' of .*x\.json is not in the categories"):
        convert("labelme", folder, categories=names)


def _encoded_png(height, width):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case, pattern", [
    ("not_json", r"bad\.json is not valid JSON"),
    ("no_shapes", r"bad\.json is not a labelme annotation \(no 'shapes' list\)"),
    ("no_label", r"bad\.json: shapes\[0\] has no 'label'"),
    ("unknown_shape", r"bad\.json: shapes\[0\] \('cat', cuboid\): unknown shape_type 'cuboid'"),
    ("bad_points", r"bad\.json: shapes\[0\] \('cat', polygon\): 'points' must be a list"),
    ("circle_points", r"bad\.json: shapes\[0\] \('cat', circle\): a circle needs 2 points"),
    ("no_image_path", r"bad\.json has no 'imagePath'"),
    ("no_size", r"bad\.json has no valid imageHeight / imageWidth .*file not found"),
    ("bad_mask", r"bad\.json: shapes\[0\] \('cat', mask\): 'mask' is not a base64 PNG"),
])
def test_labelme_errors_name_the_file(tmp_path, case, pattern):
    folder = tmp_path / "lm"
    folder.mkdir()
    path = _labelme(folder, "bad", [_shape("cat", POLY)])
    data = json.loads(path.read_text())
    shape = data["shapes"][0]
    if case == "not_json":
        path.write_text("{\"shapes\": [")
    else:
        if case == "no_shapes":
            del data["shapes"]
        elif case == "no_label":
            del shape["label"]
        elif case == "unknown_shape":
            shape["shape_type"] = "cuboid"
        elif case == "bad_points":
            shape["points"] = [[1, 2], [3]]
        elif case == "circle_points":
            shape["shape_type"] = "circle"
        elif case == "no_image_path":
            del data["imagePath"]
        elif case == "no_size":
            del data["imageHeight"]
        elif case == "bad_mask":
            shape.update(shape_type="mask", points=[[0, 0], [3, 3]], mask="bm90IGEgcG5n")
        path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=pattern) as info:
        convert("labelme", folder)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ VIA
def _via_region(shape, label="car", key="type"):
    return {"shape_attributes": shape, "region_attributes": {key: label} if key else {}}


@pytest.fixture
def via_project(tmp_path):
    images = tmp_path / "img"
    _image(images / "p.jpg", 48, 64)
    _image(images / "q.png", 20, 30)
    meta = {
        "p.jpg1234": {"filename": "p.jpg", "size": 1234, "file_attributes": {}, "regions": [
            _via_region({"name": "polygon", "all_points_x": [1.5, 20, 10.125],
                         "all_points_y": [2.25, 3, 15.5]}),
            _via_region({"name": "rect", "x": 30, "y": 5, "width": 10, "height": 15},
                        "bus"),
            _via_region({"name": "circle", "cx": 40, "cy": 30, "r": 5}, "bus"),
            _via_region({"name": "ellipse", "cx": 20, "cy": 30, "rx": 8, "ry": 4,
                         "theta": 0.5}),
            _via_region({"name": "polyline", "all_points_x": [1, 5], "all_points_y": [1, 5]}),
            _via_region({"name": "point", "cx": 3, "cy": 3}),
        ]},
        "q.png99": {"filename": "q.png", "size": 99, "file_attributes": {}, "regions": []},
    }
    path = tmp_path / "via.json"
    path.write_text(json.dumps({"_via_settings": {}, "_via_img_metadata": meta,
                                "_via_attributes": {"region": {"type": {}}}}))
    return path, images, meta


def test_via_project_converts_and_round_trips(via_project, tmp_path):
    path, images, _ = via_project
    result = convert("via", path, images_dir=images)
    d = result.data
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in d["images"]] == [
        (1, "p.jpg", 48, 64), (2, "q.png", 20, 30)]  # sizes read from the files
    assert d["categories"] == [{"id": 1, "name": "bus"}, {"id": 2, "name": "car"}]
    anns = d["annotations"]
    assert [a["category_id"] for a in anns] == [2, 1, 1, 2]
    assert anns[0]["segmentation"] == [[1.5, 2.25, 20, 3, 10.125, 15.5]]
    assert anns[1]["segmentation"] == [[30, 5, 40, 5, 40, 20, 30, 20]]
    assert anns[2]["bbox"] == pytest.approx([35, 25, 10, 10])
    assert any("polyline" in n and n.startswith("2 ") for n in result.notes)
    ds = CocoDataset(write_coco(d, tmp_path / "coco.json"), images)
    assert ds.class_names == ["background", "bus", "car"]
    assert list(ds.load_annotations(1)["labels"]) == [2, 1, 1, 2]


def test_via_bare_export_v1_regions_and_checkbox(via_project, tmp_path):
    path, images, meta = via_project
    entry = meta["p.jpg1234"]
    entry["regions"] = {"1": _via_region(entry["regions"][1]["shape_attributes"], {"bus": True}),
                        "0": _via_region(entry["regions"][0]["shape_attributes"])}
    bare = tmp_path / "export.json"
    bare.write_text(json.dumps(meta))
    d = convert("via", bare, images_dir=images).data
    assert [a["category_id"] for a in d["annotations"]] == [2, 1]  # VIA 1's dict in key order


@pytest.mark.parametrize("case, pattern", [
    ("ambiguous", r"via\.json: regions have several attributes \(colour, type\): name the "
                  r"one holding the class with `label_key`"),
    ("no_images", r"VIA files store no image sizes: give `images_dir`"),
    ("missing_image", r"via\.json: the size of image 'q\.png' cannot be read \(file not found"),
    ("unknown_shape", r"via\.json: image 'p\.jpg' region 0: unknown shape 'blob'"),
    ("no_label", r"via\.json: image 'p\.jpg' region 0 has no class in region attribute 'type'"),
    ("bad_points", r"via\.json: image 'p\.jpg' region 0: 'all_points_x' must be a list of "
                   "numbers"),
    ("not_via", r"via\.json is not a VIA 2 project or annotation export"),
    ("via3", r"via\.json is a VIA 3 project"),
])
def test_via_errors_name_the_file(via_project, case, pattern):
    path, images, meta = via_project
    regions = meta["p.jpg1234"]["regions"]
    images_dir = images
    if case == "ambiguous":
        regions[0]["region_attributes"]["colour"] = "red"
    elif case == "no_images":
        images_dir = None
    elif case == "missing_image":
        (images / "q.png").unlink()
    elif case == "unknown_shape":
        regions[0]["shape_attributes"]["name"] = "blob"
    elif case == "no_label":
        regions[0]["region_attributes"]["type"] = ""
    elif case == "bad_points":
        regions[0]["shape_attributes"]["all_points_x"] = [1, "2", 3]
    if case == "not_via":
        path.write_text(json.dumps({"images": []}))
    elif case == "via3":
        path.write_text(json.dumps({"project": {}, "config": {}, "attribute": {}, "file": {},
                                    "metadata": {}, "view": {}}))
    else:
        path.write_text(json.dumps({"_via_img_metadata": meta}))
    with pytest.raises((ValueError, FileNotFoundError), match=pattern) as info:
        convert("via", path, images_dir=images_dir)
    assert "\n" not in str(info.value)


def test_via_label_key_picks_the_attribute(via_project):
    path, images, meta = via_project
    for region in meta["p.jpg1234"]["regions"]:
        region["region_attributes"]["colour"] = "red"
    path.write_text(json.dumps({"_via_img_metadata": meta}))
    d = convert("via", path, images_dir=images, label_key="colour").data
    assert d["categories"] == [{"id": 1, "name": "red"}]


# ------------------------------------------------------------------------------ COCO
def _cvat_coco(tmp_path):
    images = tmp_path / "images"
    _image(images / "sub" / "a.png", 40, 60)
    _image(images / "b.png", 30, 50)
    data = {
        "info": {"description": "cvat"},
        "licenses": [],
        "categories": [{"id": 0, "name": "person", "supercategory": ""},
                       {"id": 7, "name": "car", "supercategory": ""}],
        "images": [{"id": 5, "file_name": "sub\\a.png", "height": 40, "width": 60},
                   {"id": 9, "file_name": "./b.png", "height": 30, "width": 50}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 0, "area": 0,
             "bbox": [0, 0, 100, 100],  # inconsistent: recomputed from the polygon
             "segmentation": [[2, 3, 12, 3, 12, 9, 2, 9], [20, 20, 25, 25]]},  # 2-point dropped
            {"id": 2, "image_id": 5, "category_id": 7, "iscrowd": 0, "area": 24.0,
             "bbox": [30, 10, 6, 4], "segmentation": [[30.5, 10.25, 36, 10, 36, 14, 30, 14]],
             "attributes": {"occluded": False}},
            {"id": 3, "image_id": 9, "category_id": 7, "iscrowd": 0, "area": 50,
             "bbox": [5, 5, 10, 5], "segmentation": []},
        ],
    }
    path = tmp_path / "cvat.json"
    path.write_text(json.dumps(data))
    return path, images, data


def test_coco_quirks_are_normalized(tmp_path):
    path, images, raw = _cvat_coco(tmp_path)
    result = convert("coco", path, empty_segmentation="box")
    d = result.data
    assert d["info"] == raw["info"] and d["categories"] == raw["categories"]  # ids kept
    assert [(i["id"], i["file_name"]) for i in d["images"]] == [(5, "sub/a.png"), (9, "b.png")]
    first, second, third = d["annotations"]
    assert first["iscrowd"] == 0
    assert first["segmentation"] == [[2, 3, 12, 3, 12, 9, 2, 9]]
    assert first["bbox"] == [2, 3, 10, 6] and first["area"] == pytest.approx(60)
    assert second == {**raw["annotations"][1], "bbox": [30, 10, 6, 4]}  # untouched
    assert third["segmentation"] == [[5, 5, 15, 5, 15, 10, 5, 10]]  # box as its mask
    notes = " | ".join(result.notes)
    for expected in ("1 polygon(s) with fewer than 3 points dropped",
                     "1 annotation(s) without 'iscrowd'", "1 bbox(es) missing or off",
                     "1 area(s) missing or <= 0", "1 annotation(s) with an empty segmentation"):
        assert expected in notes
    ds = CocoDataset(write_coco(d, tmp_path / "clean.json"), images)
    assert ds.label_to_category_id == {1: 0, 2: 7} and ds.class_names[1:] == ["person", "car"]
    assert ds.load_annotations(5)["masks"].shape == (2, 40, 60)


def test_coco_empty_segmentation_policies(tmp_path):
    path, _, _ = _cvat_coco(tmp_path)
    with pytest.raises(ValueError, match=r"cvat\.json: annotation id 3 has an empty "
                       r"'segmentation' .*`empty_segmentation='box'`"):
        convert("coco", path)
    d = convert("coco", path, empty_segmentation="drop").data
    assert [a["id"] for a in d["annotations"]] == [1, 2]


def test_coco_categories_file_renumbers_by_name(tmp_path):
    path, _, _ = _cvat_coco(tmp_path)
    names = tmp_path / "names.txt"
    names.write_text("car\nperson\n")
    d = convert("coco", path, categories=names, empty_segmentation="drop").data
    assert [(c["id"], c["name"]) for c in d["categories"]] == [(1, "car"), (2, "person")]
    assert [a["category_id"] for a in d["annotations"]] == [2, 1]


def test_coco_sizes_from_images_and_ids_renumbered(tmp_path):
    path, images, data = _cvat_coco(tmp_path)
    del data["images"][0]["height"]
    for ann in data["annotations"]:
        ann["id"] = 4
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"images\[0\] \(id 5\) has no valid 'height' / 'width'"
                       ": give `images_dir`"):
        convert("coco", path, empty_segmentation="drop")
    result = convert("coco", path, images_dir=images, empty_segmentation="drop")
    assert result.data["images"][0]["height"] == 40
    assert [a["id"] for a in result.data["annotations"]] == [1, 2]
    assert any("renumbered" in n for n in result.notes)


@pytest.mark.parametrize("case, pattern", [
    ("dup_names", r"cvat\.json: categories 0 and 7 are both named 'person'"),
    ("unknown_category", r"cvat\.json: annotation id 2 refers to unknown category id 3"),
    ("unknown_image", r"cvat\.json: annotation id 2 refers to unknown image id 6"),
    ("odd_polygon", r"cvat\.json: annotation id 2: 'segmentation' polygon 0 has an odd number"),
    ("dup_files", r"cvat\.json: image id 9 and .*cvat\.json: image id 5 both annotate the image "
                  r"sub/a\.png"),
    ("dup_image_ids", r"cvat\.json: images\[1\]: image id 5 appears twice"),
    ("no_categories", r"cvat\.json is missing the 'categories' field"),
    ("bad_rle", r"cvat\.json: annotation id 2: 'segmentation' RLE size"),
])
def test_coco_errors_name_the_record(tmp_path, case, pattern):
    path, _, data = _cvat_coco(tmp_path)
    ann = data["annotations"][1]
    if case == "dup_names":
        data["categories"][1]["name"] = "person"
    elif case == "unknown_category":
        ann["category_id"] = 3
    elif case == "unknown_image":
        ann["image_id"] = 6
    elif case == "odd_polygon":
        ann["segmentation"] = [[1, 2, 3, 4, 5, 6, 7]]
    elif case == "dup_files":
        data["images"][1]["file_name"] = "sub/a.png"
    elif case == "dup_image_ids":
        data["images"][1]["id"] = 5
    elif case == "no_categories":
        del data["categories"]
    elif case == "bad_rle":
        ann["segmentation"] = {"size": [10, 10], "counts": [100]}
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=pattern) as info:
        convert("coco", path, empty_segmentation="drop")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ the command
def test_cli_convert_writes_and_reports(labelme_dir, tmp_path, capsys):
    out = tmp_path / "out" / "coco.json"
    assert main(["data", "convert", "--from", "labelme", str(labelme_dir),
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 2 images, 5 annotations, 4 categories (ant, bee, cat, zebra)" \
        in printed
    assert "note: 1 labelme shape(s) that are no region" in printed
    assert len(json.loads(out.read_text())["annotations"]) == 5


@pytest.mark.parametrize("extra, pattern", [
    (["--label-key", "x"], "--label-key applies to --from via only"),
    (["--output-is-input"], "is the input file"),
])
def test_cli_convert_one_line_errors(tmp_path, capsys, extra, pattern):
    path, _, _ = _cvat_coco(tmp_path)
    output = path if extra == ["--output-is-input"] else tmp_path / "x.json"
    args = ["data", "convert", "--from", "coco", str(path), "--output", str(output)]
    args += [] if extra == ["--output-is-input"] else extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("keras-maskrcnn data: error:") and pattern in err
    assert "\n" not in err


def test_cli_convert_bad_input_is_one_line(tmp_path, capsys):
    folder = tmp_path / "lm"
    folder.mkdir()
    (folder / "broken.json").write_text("{")
    assert main(["data", "convert", "--from", "labelme", str(folder), "--output",
                 str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "broken.json is not valid JSON" in err and "\n" not in err
    assert not (tmp_path / "o.json").exists()


def test_polygon_area_matches_a_raster():
    poly = [2.0, 3.0, 30.0, 5.0, 20.0, 25.0, 4.0, 18.0]
    img = Image.new("L", (40, 40))
    ImageDraw.Draw(img).polygon(poly, fill=1)
    assert polygon_area(poly) == pytest.approx(np.asarray(img).sum(), rel=0.1)


def test_labelme_ignore_labels_and_labels_txt(tmp_path):
    """labelme's labels.txt (first lines __ignore__, _background_) works as --categories; shapes
    with those labels are no instances."""
    folder = tmp_path / "lm"
    folder.mkdir()
    _labelme(folder, "x", [_shape("person", POLY), _shape("__ignore__", POLY)])
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\nbottle\nperson\n")
    result = convert("labelme", folder, categories=labels)
    assert result.data["categories"] == [{"id": 1, "name": "bottle"}, {"id": 2, "name": "person"}]
    assert [a["category_id"] for a in result.data["annotations"]] == [2]
    assert any("__ignore__" in n for n in result.notes)
