"""COCO-format instance segmentation dataset (read with pycocotools).

`CocoDataset` implements the dataset-source protocol of docs/CONVENTIONS.md: contiguous labels
`1..K` (categories sorted by id), `load_image` -> uint8 RGB `[h, w, 3]`, `load_annotations` ->
boxes `[G, 4]` float32 (y1, x1, y2, x2) in original pixels, labels `[G]` int32, masks
`[G, h, w]` uint8, is_crowd `[G]` bool.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from keras_maskrcnn.data.images import DEFAULT_MAX_IMAGE_PIXELS, BadImageError, load_rgb_image

logger = logging.getLogger("keras_maskrcnn")

_REQUIRED_FIELDS = ("images", "annotations", "categories")
_MAX_IDS_IN_MESSAGE = 5
# The characters of pycocotools' compressed RLE strings (6 bits per character from '0').
RLE_CHARS = frozenset(chr(c) for c in range(48, 112))


def coco_bbox_to_yxyx(bbox: Any) -> np.ndarray:
    """COCO `[x, y, w, h]` -> `[4]` float32 `(y1, x1, y2, x2)` in the same pixels."""
    x, y, w, h = (float(v) for v in bbox)
    return np.array([y, x, y + h, x + w], dtype=np.float32)


def empty_annotations(height: int, width: int) -> dict[str, np.ndarray]:
    """The annotation dict of an image without instances (G = 0)."""
    return {
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros((0,), np.int32),
        "masks": np.zeros((0, height, width), np.uint8),
        "is_crowd": np.zeros((0,), bool),
    }


def read_coco_json(path: Path) -> dict:
    """The JSON object of a COCO file; FileNotFoundError / ValueError naming the file when it is
    missing, not JSON, or lacks "images", "annotations" or "categories" (lists)."""
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"COCO annotation file {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"COCO annotation file {path} must hold a JSON object, got "
                         f"{type(data).__name__}")
    for field in _REQUIRED_FIELDS:
        if field not in data:
            raise ValueError(f"COCO annotation file {path} is missing the {field!r} field "
                             f"(expected fields: {', '.join(_REQUIRED_FIELDS)})")
        if not isinstance(data[field], list):
            raise ValueError(f"COCO annotation file {path}: field {field!r} must be a list")
    return data


def build_coco_index(data: dict) -> COCO:
    """A pycocotools `COCO` indexed from an in-memory COCO-format dict, without its prints.

    `data` needs "images", "annotations" and "categories"; it becomes `coco.dataset` (not
    copied). Used for file-backed (`CocoDataset`) and generated (`ShapesDataset`) ground truth.
    """
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _is_degenerate(ann: dict) -> bool:
    bbox = ann["bbox"]  # checked by CocoDataset._check_annotation
    return float(bbox[2]) <= 0 or float(bbox[3]) <= 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _all_finite(values: list) -> bool:
    """Every item a finite number (one C-level sum instead of a check per coordinate: COCO
    train2017 holds 40M polygon coordinates)."""
    try:
        return math.isfinite(sum(values, 0.0))
    except TypeError:
        return False


def segmentation_problem(seg: Any, height: int, width: int) -> str | None:
    """What is wrong with a COCO "segmentation" of an image of `height` x `width`, or None.

    Valid: a non-empty list of polygons, each a flat list of an even number >= 6 of finite
    coordinates; or an RLE {"size": [height, width], "counts": string (compressed) or list of
    non-negative run lengths summing to height * width}.
    """
    if isinstance(seg, list):
        if not seg:
            return "is an empty list (no polygon): give the instance's mask"
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or not _all_finite(poly):
                return f"polygon {k} must be a flat list of numbers [x1, y1, x2, y2, ...]"
            if len(poly) < 6 or len(poly) % 2:
                return (f"polygon {k} has {len(poly)} coordinates: a polygon needs an even "
                        "number, at least 6 (three points)")
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if size != [height, width]:
            return f"RLE size {size!r} is not the image's [height, width] [{height}, {width}]"
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                return (f"RLE counts must be non-negative run lengths summing to height x width "
                        f"= {height * width}")
            return None
        if not isinstance(counts, str) or not counts or not RLE_CHARS.issuperset(counts):
            return ("RLE 'counts' must be a compressed RLE string (pycocotools' encoding) or "
                    "a list of run lengths")
        return None
    return f"must be a list of polygons or an RLE object, got {type(seg).__name__}"


def check_image_record(img: Any, k: int, path: str | Path) -> None:
    """ValueError naming `path`, the index `k` and the field of a malformed COCO image record
    (needs an integer "id", a "file_name", positive integer "height" and "width")."""
    where = f"{path}: images[{k}]"
    if not isinstance(img, dict):
        raise ValueError(f"{where} must be an object, got {img!r}")
    for key in ("id", "file_name", "height", "width"):
        if key not in img:
            raise ValueError(f"{where} (id {img.get('id')}) has no {key!r}")
    if not _is_int(img["id"]):
        raise ValueError(f"{where}: 'id' must be an integer, got {img['id']!r}")
    for key in ("height", "width"):
        if not _is_int(img[key]) or int(img[key]) <= 0:
            raise ValueError(f"{where} (id {img['id']}): {key!r} must be a positive "
                             f"integer, got {img[key]!r}")


def index_images(images: list, path: str | Path) -> dict[int, dict]:
    """id -> image record of a COCO "images" list, each checked (`check_image_record`); a
    repeated id is a ValueError too."""
    by_id: dict[int, dict] = {}
    for k, img in enumerate(images):
        check_image_record(img, k, path)
        if int(img["id"]) in by_id:
            raise ValueError(f"{path}: images[{k}]: image id {img['id']} appears twice")
        by_id[int(img["id"])] = img
    return by_id


def check_category_record(cat: Any, k: int, path: str | Path) -> None:
    """ValueError naming `path` and the index `k` of a category without an integer "id" and a
    "name"."""
    if not isinstance(cat, dict) or not _is_int(cat.get("id")) or "name" not in cat:
        raise ValueError(f"{path}: categories[{k}] must have an integer 'id' and a 'name', got "
                         f"{cat!r}")


def check_annotation_record(ann: Any, path: str | Path, images: dict[int, dict],
                            category_ids: set[int]) -> None:
    """Raises ValueError naming the file, the annotation id and the field of a malformed
    annotation (ids, bbox, polygon or RLE mask), given the file's image records by id and its
    category ids."""
    if not isinstance(ann, dict):
        raise ValueError(f"{path}: an annotation must be an object, got {ann!r}")
    where = f"{path}: annotation id {ann.get('id')}"
    for key in ("id", "image_id", "category_id", "bbox", "segmentation"):
        if key not in ann:
            raise ValueError(f"{where} has no {key!r}")
    for key in ("id", "image_id", "category_id"):
        if not _is_int(ann[key]):
            raise ValueError(f"{where}: {key!r} must be an integer, got {ann[key]!r}")
    if int(ann["category_id"]) not in category_ids:
        raise ValueError(f"{where} refers to unknown category id {ann['category_id']}")
    if int(ann["image_id"]) not in images:
        raise ValueError(f"{where} refers to unknown image id {ann['image_id']}")
    bbox = ann["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_finite, bbox)):
        raise ValueError(f"{where}: 'bbox' must be 4 finite numbers [x, y, width, height], "
                         f"got {bbox!r}")
    image = images[int(ann["image_id"])]
    problem = segmentation_problem(ann["segmentation"], int(image["height"]),
                                   int(image["width"]))
    if problem:
        raise ValueError(f"{where}: 'segmentation' {problem}")


class CocoDataset:
    """A COCO instance-segmentation annotation file and its image folder.

    Args:
        annotations: path of the COCO instances JSON (needs "images", "annotations",
            "categories").
        images_dir: folder holding the images named by each image's "file_name".
        class_names: optional category names fixing the label order (label i = i-th name; a
            leading "background" is allowed), e.g. to reuse a training label map. Every name must
            be a category of the file; annotations of the file's other categories are skipped
            (one warning). Default: all categories sorted by id.

    Attributes:
        class_names: `["background", name_1, ..., name_K]`.
        num_classes: K.
        label_to_category_id / category_id_to_label: contiguous label <-> COCO category id.
        image_ids: sorted list of int (images without annotations included).
        coco: the pycocotools `COCO` of the whole file (untouched ground truth for evaluation).
        skipped_annotations: number of annotations skipped for a box with width or height <= 0.
        skipped_category_annotations: number skipped because their category is not in
            `class_names` (0 unless `class_names` is given).
    """

    def __init__(
        self,
        annotations: str | Path,
        images_dir: str | Path,
        class_names: list | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.annotations_path = Path(annotations)
        self.max_image_pixels = max_image_pixels
        self.images_dir = Path(images_dir)
        data = read_coco_json(self.annotations_path)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images folder not found: {self.images_dir}; check `images_dir`")
        # Every record is checked before pycocotools indexes it (it would raise a bare
        # KeyError, or decode a malformed mask later, in the middle of a run).
        self._images = self._index_images(data["images"])
        self.image_ids = sorted(self._images)
        self._init_labels(data["categories"], class_names)
        for ann in data["annotations"]:
            self._check_annotation(ann)
        self.coco = build_coco_index(data)
        self._anns_by_image = self._index_annotations(data["annotations"])
        first = self.image_ids[:20]
        if first and not any((self.images_dir / self.file_name(i)).is_file() for i in first):
            raise FileNotFoundError(  # fail fast on a wrong images folder
                f"none of the first {len(first)} images of {self.annotations_path} is in "
                f"{self.images_dir} (e.g. {self.file_name(first[0])}); check `images_dir`")

    # ----------------------------------------------------------------------------- set-up
    def _index_images(self, images: list) -> dict[int, dict]:
        """id -> image record, each with an integer id, a file_name and positive sizes."""
        return index_images(images, self.annotations_path)

    def _init_labels(self, categories: list, class_names: list | None) -> None:
        for k, cat in enumerate(categories):
            check_category_record(cat, k, self.annotations_path)
        cats = sorted(categories, key=lambda c: int(c["id"]))
        if class_names is None:
            chosen = cats
        else:
            chosen = self._categories_by_name(cats, class_names)
        self.label_to_category_id = {i + 1: int(c["id"]) for i, c in enumerate(chosen)}
        self.category_id_to_label = {v: k for k, v in self.label_to_category_id.items()}
        self.class_names = ["background"] + [str(c["name"]) for c in chosen]
        self.num_classes = len(chosen)
        self._known_category_ids = {int(c["id"]) for c in cats}

    def _categories_by_name(self, cats: list, class_names: list) -> list:
        names = [str(n) for n in class_names]
        if names and names[0] == "background":
            names = names[1:]
        if len(set(names)) != len(names):
            raise ValueError(f"class_names has duplicates: {class_names}")
        by_name = {str(c["name"]): c for c in cats}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"class_names {missing} are not categories of "
                             f"{self.annotations_path} (categories: {sorted(by_name)})")
        return [by_name[n] for n in names]

    def _index_annotations(self, anns: list) -> dict[int, list[dict]]:
        by_image: dict[int, list[dict]] = {i: [] for i in self.image_ids}
        degenerate, other_category = [], 0
        for ann in anns:  # each checked by __init__
            if _is_degenerate(ann):
                degenerate.append(ann.get("id"))
                continue
            if int(ann["category_id"]) not in self.category_id_to_label:
                other_category += 1
                continue
            by_image[int(ann["image_id"])].append(ann)
        self.skipped_annotations = len(degenerate)
        self.skipped_category_annotations = other_category
        if degenerate:
            logger.warning(
                "%s: skipped %d annotation(s) whose box has zero or negative width/height "
                "(first ids: %s)", self.annotations_path, len(degenerate),
                degenerate[:_MAX_IDS_IN_MESSAGE])
        if other_category:
            logger.warning("%s: skipped %d annotation(s) of categories not in class_names",
                           self.annotations_path, other_category)
        return by_image

    def _check_annotation(self, ann: dict) -> None:
        check_annotation_record(ann, self.annotations_path, self._images,
                                self._known_category_ids)

    # ----------------------------------------------------------------------------- access
    def image_info(self, image_id: int) -> dict:
        """The JSON image record (has "height", "width", "file_name", "id")."""
        try:
            return self._images[int(image_id)]
        except KeyError:
            raise ValueError(f"unknown image id {image_id} in {self.annotations_path}") from None

    def file_name(self, image_id: int) -> str:
        """The image's "file_name", relative to `images_dir`."""
        return str(self.image_info(image_id)["file_name"])

    def missing_images(self) -> list[int]:
        """Ids of the images whose file is not in `images_dir` (one stat per image: a second
        for COCO train2017's 118k files), so that a run can refuse them before it starts."""
        return [i for i in self.image_ids if not (self.images_dir / self.file_name(i)).is_file()]

    def image_path(self, image_id: int) -> Path:
        """Full path of the image file; BadImageError if it is not on disk."""
        path = self.images_dir / self.file_name(image_id)
        if not path.is_file():
            raise BadImageError(path, f"file not found (image id {image_id} of "
                                f"{self.annotations_path}; check `images_dir`, the folder holding "
                                "its images)")
        return path

    def load_image(self, image_id: int) -> np.ndarray:
        """The image as uint8 RGB `[h, w, 3]`. BadImageError naming the file, the image id and
        the annotation file for a missing or unreadable file, or one whose size differs from its
        json record (the masks would not fit it)."""
        path = self.image_path(image_id)
        context = f" (image id {image_id} of {self.annotations_path})"
        try:
            image = load_rgb_image(path, self.max_image_pixels)
        except BadImageError as err:
            raise BadImageError(path, err.reason, context) from None
        info = self.image_info(image_id)
        expected = (int(info["height"]), int(info["width"]))
        if image.shape[:2] != expected:
            raise BadImageError(path, f"{image.shape[0]}x{image.shape[1]} (h x w) on disk but "
                                f"{expected[0]}x{expected[1]} in the annotations", context)
        return image

    def load_annotations(self, image_id: int) -> dict[str, np.ndarray]:
        """Instances of one image (crowd included, degenerate boxes skipped).

        Returns:
            dict with boxes `[G, 4]` float32 (y1, x1, y2, x2) in original pixels (from the COCO
            bbox), labels `[G]` int32 in 1..K, masks `[G, h, w]` uint8 {0, 1} (polygons, also
            multi-part, and RLE decoded by pycocotools), is_crowd `[G]` bool.
        """
        info = self.image_info(image_id)
        height, width = int(info["height"]), int(info["width"])
        anns = self._anns_by_image[int(image_id)]
        if not anns:
            return empty_annotations(height, width)
        return {
            "boxes": np.stack([coco_bbox_to_yxyx(a["bbox"]) for a in anns]),
            "labels": np.array([self.category_id_to_label[int(a["category_id"])] for a in anns],
                               np.int32),
            "masks": np.stack([self.coco.annToMask(a).astype(np.uint8) for a in anns]),
            "is_crowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], bool),
        }

    def image_labels(self, image_id: int) -> list[int]:
        """Labels 1..K of the image's non-crowd instances (those `load_annotations` returns),
        without decoding a mask: what repeat-factor sampling counts."""
        return [self.category_id_to_label[int(a["category_id"])]
                for a in self._anns_by_image[int(image_id)] if not a.get("iscrowd", 0)]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return (f"CocoDataset({str(self.annotations_path)!r}, images={len(self.image_ids)}, "
                f"num_classes={self.num_classes})")
