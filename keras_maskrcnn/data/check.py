"""`keras-maskrcnn data check`: what is wrong with a COCO instances file and its images.

Errors are what stops `train` or makes it learn wrong: the malformed records `CocoDataset`
refuses (the same one-line messages, every one of them instead of the first), repeated image ids
or file names, repeated category ids, missing or unreadable image files, a size on disk that
differs from the json, a box entirely outside its image. Warnings are what training survives:
images without annotations, categories without annotations, boxes of zero width or height
(skipped by training), polygons of zero area, boxes reaching outside the image (clipped), boxes
that disagree with their segmentation, duplicate annotations (same image, class and mask),
repeated category names, images above the pixel limit of `train`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from keras_maskrcnn.data.coco import (
    check_annotation_record,
    check_category_record,
    check_image_record,
    read_coco_json,
)
from keras_maskrcnn.data.formats.common import polygon_area, polygons_bbox, to_rle
from keras_maskrcnn.data.images import DEFAULT_MAX_IMAGE_PIXELS, BadImageError, image_file_size

BOX_TOLERANCE = 1.0  # pixels a box may reach past the image, or differ from its mask's extent
EXAMPLES = 5


class Issues:
    """Counts and first examples of problems, by kind, in the order first seen."""

    def __init__(self) -> None:
        self.kinds: dict[str, list] = {}

    def add(self, kind: str, example: str) -> None:
        entry = self.kinds.setdefault(kind, [0, []])
        entry[0] += 1
        if len(entry[1]) < EXAMPLES:
            entry[1].append(example)

    def total(self) -> int:
        return sum(count for count, _ in self.kinds.values())

    def lines(self) -> list[str]:
        out = []
        for kind, (count, examples) in self.kinds.items():
            out.append(f"  {count} {kind}:")
            out.extend(f"    {e}" for e in examples)
            if count > len(examples):
                out.append(f"    ... and {count - len(examples)} more")
        return out


@dataclasses.dataclass
class ClassCount:
    category_id: int
    name: str
    annotations: int = 0
    images: int = 0
    crowd: int = 0


@dataclasses.dataclass
class CheckReport:
    """The findings of `check_coco_file`; `format()` is the printed report."""

    path: Path
    images_dir: Path | None
    num_images: int = 0
    num_annotations: int = 0
    classes: list[ClassCount] = dataclasses.field(default_factory=list)
    errors: Issues = dataclasses.field(default_factory=Issues)
    warnings: Issues = dataclasses.field(default_factory=Issues)

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.errors.kinds

    def format(self) -> str:
        crowd = sum(c.crowd for c in self.classes)
        lines = [f"{self.path}: {self.num_images} images, {self.num_annotations} annotations "
                 f"({crowd} crowd), {len(self.classes)} categories"]
        width = max([len(c.name) for c in self.classes] + [5])
        lines.append(f"  {'class':<{width}}  {'id':>6}  {'annotations':>11}  {'images':>7}  "
                     f"{'crowd':>6}")
        for c in self.classes:
            lines.append(f"  {c.name:<{width}}  {c.category_id:>6}  {c.annotations:>11}  "
                         f"{c.images:>7}  {c.crowd:>6}")
        if self.images_dir is None:
            lines.append("image files not checked (no images folder given)")
        for title, issues in (("errors", self.errors), ("warnings", self.warnings)):
            if issues.kinds:
                lines.append(f"{title}:")
                lines.extend(issues.lines())
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{verdict}: {self.errors.total()} error(s), {self.warnings.total()} "
                     "warning(s)")
        return "\n".join(lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _check_images(data: dict, report: CheckReport) -> tuple[dict[int, dict], set[int]]:
    """(id -> well-formed image record, ids of every record with an integer id)."""
    valid: dict[int, dict] = {}
    any_ids: set[int] = set()
    names: dict[str, int] = {}
    for k, img in enumerate(data["images"]):
        try:
            check_image_record(img, k, report.path)
        except ValueError as err:
            report.errors.add("malformed image record(s)", str(err))
            if isinstance(img, dict) and isinstance(img.get("id"), int):
                any_ids.add(img["id"])
            continue
        image_id = int(img["id"])
        if image_id in any_ids:
            report.errors.add("repeated image id(s)", f"images[{k}]: id {image_id}")
            continue
        any_ids.add(image_id)
        name = str(img["file_name"])
        if name in names:
            report.errors.add("image file(s) listed twice",
                              f"{name} (image ids {names[name]} and {image_id})")
        names[name] = image_id
        valid[image_id] = img
    report.num_images = len(data["images"])
    return valid, any_ids


def _check_categories(data: dict, report: CheckReport) -> dict[int, ClassCount]:
    classes: dict[int, ClassCount] = {}
    names: dict[str, int] = {}
    for k, cat in enumerate(data["categories"]):
        try:
            check_category_record(cat, k, report.path)
        except ValueError as err:
            report.errors.add("malformed category record(s)", str(err))
            continue
        if cat["id"] in classes:
            report.errors.add("repeated category id(s)", f"categories[{k}]: id {cat['id']}")
            continue
        name = str(cat["name"])
        if name in names:
            report.warnings.add("repeated category name(s)",
                                f"{name!r} (ids {names[name]} and {cat['id']})")
        names[name] = cat["id"]
        classes[cat["id"]] = ClassCount(int(cat["id"]), name)
    report.classes = [classes[i] for i in sorted(classes)]
    return classes


def _segmentation_extent(seg: Any, height: int, width: int) -> list[float] | None:
    """COCO [x, y, w, h] of a (checked) segmentation: polygon extent or RLE mask extent."""
    if isinstance(seg, list):
        return polygons_bbox(seg)
    from pycocotools import mask as mask_utils

    rle = to_rle(seg, height, width)
    if float(mask_utils.area(rle)) == 0:
        return None
    return [float(v) for v in mask_utils.toBbox(rle)]


def _check_geometry(ann: dict, image: dict, where: str, report: CheckReport) -> None:
    height, width = int(image["height"]), int(image["width"])
    x, y, w, h = (float(v) for v in ann["bbox"])
    if w <= 0 or h <= 0:
        report.warnings.add("annotation(s) whose box has zero width or height (training "
                            "skips them)", f"{where}: bbox {ann['bbox']}")
        return
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        report.errors.add("box(es) entirely outside their image",
                          f"{where}: bbox {ann['bbox']}, image {width}x{height} (w x h)")
        return
    tol = BOX_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        report.warnings.add("box(es) reaching outside their image (clipped in training)",
                            f"{where}: bbox {ann['bbox']}, image {width}x{height} (w x h)")
    seg = ann["segmentation"]
    if isinstance(seg, list):
        for k, poly in enumerate(seg):
            if polygon_area(poly) == 0.0:
                report.warnings.add("polygon(s) of zero area", f"{where}: polygon {k}")
    extent = _segmentation_extent(seg, height, width)
    if extent is None:
        report.warnings.add("RLE mask(s) with no pixel set", where)
        return
    a, b = np.array([x, y, x + w, y + h]), np.array(extent[:2] + [extent[0] + extent[2],
                                                                   extent[1] + extent[3]])
    if np.abs(a - b).max() > tol:
        report.warnings.add(f"box(es) differing from their mask's extent by more than {tol:g} "
                            "pixel (training uses the box)",
                            f"{where}: bbox {[round(v, 1) for v in (x, y, w, h)]}, mask "
                            f"{[round(v, 1) for v in extent]}")


def _check_annotations(data: dict, report: CheckReport, images: dict[int, dict],
                       image_ids: set[int], classes: dict[int, ClassCount]) -> set[int]:
    """Checks every annotation; returns the ids of the images that have one."""
    known_categories = set(classes)
    annotated: set[int] = set()
    images_of_class: dict[int, set[int]] = defaultdict(set)
    seen: dict[tuple, Any] = {}
    malformed_images = image_ids - set(images)
    for ann in data["annotations"]:
        if isinstance(ann, dict) and ann.get("image_id") in malformed_images:
            continue  # its image record is malformed, already reported
        try:
            check_annotation_record(ann, report.path, images, known_categories)
        except ValueError as err:
            report.errors.add("malformed annotation record(s)", str(err))
            continue
        image_id, cat = int(ann["image_id"]), int(ann["category_id"])
        where = f"annotation id {ann['id']} (image id {image_id})"
        annotated.add(image_id)
        images_of_class[cat].add(image_id)
        classes[cat].annotations += 1
        classes[cat].crowd += int(bool(ann.get("iscrowd", 0)))
        key = (image_id, cat, json.dumps(ann["segmentation"], sort_keys=True))
        if key in seen:
            report.warnings.add("duplicate annotation(s) (same image, class and mask)",
                                f"{where} repeats annotation id {seen[key]}")
        else:
            seen[key] = ann["id"]
        _check_geometry(ann, images[image_id], where, report)
    for cat, ids in images_of_class.items():
        classes[cat].images = len(ids)
    report.num_annotations = len(data["annotations"])
    return annotated


def _check_files(images: dict[int, dict], images_dir: Path, report: CheckReport,
                 max_pixels: int | None) -> None:
    for image_id in sorted(images):
        img = images[image_id]
        path = images_dir / str(img["file_name"])
        if not path.is_file():
            report.errors.add(f"image file(s) missing in {images_dir}",
                              f"{img['file_name']} (image id {image_id})")
            continue
        try:
            height, width = image_file_size(path)
        except BadImageError as err:
            report.errors.add("unreadable image file(s)", f"{err} (image id {image_id})")
            continue
        if (height, width) != (int(img["height"]), int(img["width"])):
            report.errors.add("image(s) whose size on disk differs from the json",
                              f"{img['file_name']}: {width}x{height} on disk, "
                              f"{img['width']}x{img['height']} in the json (w x h)")
        if max_pixels is not None and height * width > max_pixels:
            report.warnings.add(f"image(s) above train's pixel limit of {max_pixels}",
                                f"{img['file_name']}: {width}x{height}")


def check_coco_file(path: str | Path, images_dir: str | Path | None = None,
                    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> CheckReport:
    """Checks a COCO instances file (and, given `images_dir`, its image files' presence and
    header sizes; nothing is decoded).

    Raises FileNotFoundError / ValueError (one line) when the file cannot be read as COCO at
    all (missing, not JSON, no "images" / "annotations" / "categories" list); every other
    problem is collected in the returned `CheckReport`.
    """
    report = CheckReport(Path(path), Path(images_dir) if images_dir else None)
    if report.images_dir is not None and not report.images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {report.images_dir}; check `images_dir`")
    data = read_coco_json(report.path)
    images, image_ids = _check_images(data, report)
    classes = _check_categories(data, report)
    annotated = _check_annotations(data, report, images, image_ids, classes)
    for image_id in sorted(set(images) - annotated):
        report.warnings.add("image(s) without annotations (kept as negatives by training)",
                            f"{images[image_id]['file_name']} (image id {image_id})")
    for c in report.classes:
        if not c.annotations:
            report.warnings.add("categories without annotations", f"{c.name!r} (id "
                                f"{c.category_id})")
    if report.images_dir is not None:
        _check_files(images, report.images_dir, report, max_image_pixels)
    return report

