"""Shared parts of the annotation converters (internal): the result type, repair notes,
polygon geometry, category ids, and the COCO dict assembly and checks."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from keras_maskrcnn.data.coco import (
    check_annotation_record,
    check_category_record,
    index_images,
)

CURVE_TOLERANCE = 0.25  # pixels between a circle / ellipse and its polygon's chords
MIN_CURVE_VERTICES = 16
MAX_CURVE_VERTICES = 720
_EXAMPLES = 3
# Lines of labelme's labels.txt that name no category.
NOT_CATEGORIES = ("__ignore__", "_background_")


@dataclasses.dataclass
class Conversion:
    """A converted annotation set: `data` is the COCO dict, `notes` one line per kind of record
    repaired or dropped ("3 polygon(s) with fewer than 3 points dropped (e.g. a.json
    shapes[2])")."""

    data: dict
    notes: list[str]

    def summary(self) -> str:
        d = self.data
        names = ", ".join(str(c["name"]) for c in d["categories"][:10])
        more = ", ..." if len(d["categories"]) > 10 else ""
        return (f"{len(d['images'])} images, {len(d['annotations'])} annotations, "
                f"{len(d['categories'])} categories ({names}{more})")


class Notes:
    """Counts of repaired / dropped records by kind, with their first examples."""

    def __init__(self) -> None:
        self._kinds: dict[str, list] = {}

    def add(self, kind: str, example: str) -> None:
        entry = self._kinds.setdefault(kind, [0, []])
        entry[0] += 1
        if len(entry[1]) < _EXAMPLES:
            entry[1].append(example)

    def count(self, kind: str) -> int:
        return self._kinds.get(kind, [0])[0]

    def lines(self) -> list[str]:
        return [f"{count} {kind} (e.g. {', '.join(examples)})"
                for kind, (count, examples) in self._kinds.items()]


# ------------------------------------------------------------------------------ geometry
def rectangle_polygon(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    """The 4 corners (clockwise in image axes, from the top-left) of an axis-aligned box."""
    x1, x2 = min(x1, x2), max(x1, x2)
    y1, y2 = min(y1, y2), max(y1, y2)
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def ellipse_polygon(cx: float, cy: float, rx: float, ry: float,
                    theta: float = 0.0) -> list[float]:
    """Vertices on an ellipse (centre (cx, cy), semi-axes rx along the x axis rotated by `theta`
    radians towards +y, ry across), as many as keep each chord within `CURVE_TOLERANCE` pixels of
    the curve (the sagitta of a chord spanning angle a on radius r is r (1 - cos(a / 2)))."""
    radius = max(abs(rx), abs(ry))
    if radius <= CURVE_TOLERANCE:
        count = MIN_CURVE_VERTICES
    else:
        count = math.ceil(math.pi / math.acos(1.0 - CURVE_TOLERANCE / radius))
        count = min(max(count, MIN_CURVE_VERTICES), MAX_CURVE_VERTICES)
    t = np.arange(count) * (2.0 * math.pi / count)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    xs = cx + rx * np.cos(t) * cos_t - ry * np.sin(t) * sin_t
    ys = cy + rx * np.cos(t) * sin_t + ry * np.sin(t) * cos_t
    return np.stack([xs, ys], axis=1).reshape(-1).tolist()


def polygon_area(poly: list[float]) -> float:
    """Shoelace area of a flat [x1, y1, x2, y2, ...] polygon (pixels^2, >= 0). Plain Python:
    COCO polygons are short, and a file holds hundreds of thousands of them."""
    xs, ys = poly[0::2], poly[1::2]
    twice = sum(x0 * y1 - x1 * y0 for x0, y0, x1, y1 in zip(xs, ys, xs[1:] + xs[:1],
                                                             ys[1:] + ys[:1], strict=True))
    return abs(float(twice)) / 2.0


def polygons_bbox(polygons: list[list[float]]) -> list[float]:
    """COCO [x, y, width, height] of the extent of flat polygons."""
    xs = [v for poly in polygons for v in poly[0::2]]
    ys = [v for poly in polygons for v in poly[1::2]]
    x1, y1 = float(min(xs)), float(min(ys))
    return [x1, y1, float(max(xs)) - x1, float(max(ys)) - y1]


def to_rle(segmentation: Any, height: int, width: int) -> dict:
    """One pycocotools RLE of a polygon list or RLE (uncompressed counts accepted)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}


def segmentation_area(segmentation: Any, height: int, width: int) -> float:
    """Area in pixels of the rasterized mask (pycocotools), as COCO's `area`."""
    from pycocotools import mask as mask_utils

    return float(mask_utils.area(to_rle(segmentation, height, width)))


def segmentation_bbox(segmentation: Any, height: int, width: int) -> list[float]:
    """COCO bbox of a segmentation: the polygons' extent, or the RLE mask's pixel extent
    (zeros for an empty mask)."""
    if isinstance(segmentation, list):
        return polygons_bbox(segmentation)
    from pycocotools import mask as mask_utils

    return [float(v) for v in mask_utils.toBbox(to_rle(segmentation, height, width))]


def segmentation_area_bbox(segmentation: Any, height: int, width: int) -> tuple[float, list]:
    """(`segmentation_area`, `segmentation_bbox`)."""
    return (segmentation_area(segmentation, height, width),
            segmentation_bbox(segmentation, height, width))


def encode_mask(mask: np.ndarray) -> dict:
    """A binary mask `[h, w]` as a COCO compressed RLE {"size", "counts": str}."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def clean_polygons(polygons: list[list[float]], where: str, notes: Notes) -> list[list[float]]:
    """The polygons with at least 3 points and a non-zero area (the others counted in
    `notes`)."""
    kept = []
    for k, poly in enumerate(polygons):
        if len(poly) < 6:
            notes.add("polygon(s) with fewer than 3 points dropped", f"{where} polygon {k}")
        elif polygon_area(poly) == 0.0:
            notes.add("polygon(s) with zero area dropped", f"{where} polygon {k}")
        else:
            kept.append(list(poly))
    return kept


# ------------------------------------------------------------------------------ shared
def read_json_file(path: Path, what: str) -> Any:
    """The JSON value of `path`; ValueError / FileNotFoundError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: {err}") from None


def read_category_names(path: str | Path) -> list[str]:
    """Category names from a text file, one a line (blank lines, surrounding spaces and
    labelme's "__ignore__" / "_background_" lines ignored): ids 1..K in this order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"categories file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n and n not in NOT_CATEGORIES]
    if not names:
        raise ValueError(f"categories file {path} names no category (one name a line)")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"categories file {path} names {n!r} twice")
        seen.add(n)
    return names


def category_ids(labels: dict[str, str], names: list[str] | None,
                 names_file: str | Path | None) -> dict[str, int]:
    """name -> id: `names` (a names file's) in order -> 1..K, else the sorted labels -> 1..K.

    `labels` maps each label used to the first record using it (for the error naming a label
    missing from the names file)."""
    if names is None:
        return {name: k for k, name in enumerate(sorted(labels), start=1)}
    ids = {name: k for k, name in enumerate(names, start=1)}
    for label, where in labels.items():
        if label not in ids:
            raise ValueError(f"label {label!r} of {where} is not in the categories file "
                             f"{names_file}: add it there (or fix the label)")
    return ids


def annotation_from_polygons(polygons: list[list[float]], height: int, width: int) -> dict:
    """segmentation, area and bbox of an instance made of polygons."""
    area, bbox = segmentation_area_bbox(polygons, height, width)
    return {"segmentation": polygons, "area": area, "bbox": bbox}


def annotation_from_mask(mask: np.ndarray) -> dict:
    """segmentation (compressed RLE), area and bbox of an instance given as a binary mask."""
    rle = encode_mask(mask)
    area, bbox = segmentation_area_bbox(rle, *mask.shape)
    return {"segmentation": rle, "area": area, "bbox": bbox}


def check_coco(data: dict, name: str) -> None:
    """The checks `CocoDataset` makes (`keras_maskrcnn.data.coco`): ValueError on the first
    malformed record."""
    images = index_images(data["images"], name)
    for k, cat in enumerate(data["categories"]):
        check_category_record(cat, k, name)
    known = {int(c["id"]) for c in data["categories"]}
    for ann in data["annotations"]:
        check_annotation_record(ann, name, images, known)


def write_coco(data: dict, path: str | Path) -> Path:
    """Writes a COCO dict as compact strict JSON, atomically."""
    from keras_maskrcnn.atomic import atomic_write_json

    return atomic_write_json(path, data, indent=None)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def posix_name(path: str) -> str:
    """A file name as COCO stores it: forward slashes, no leading "./"."""
    name = str(PurePosixPath(path.replace("\\", "/")))
    return name[2:] if name.startswith("./") else name


def assemble(images: list[dict], instances: list[list[dict]], ids: dict[str, int]) -> dict:
    """COCO dict from image records (ids 1..N in order) and each image's instances (dicts with
    "label", "segmentation", "area", "bbox"); annotation ids 1..M in order."""
    annotations = []
    for image_id, (image, anns) in enumerate(zip(images, instances, strict=True), start=1):
        image["id"] = image_id
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": ids[ann["label"]], "iscrowd": 0,
                                "area": ann["area"], "bbox": ann["bbox"],
                                "segmentation": ann["segmentation"]})
    categories = [{"id": k, "name": name} for name, k in sorted(ids.items(), key=lambda x: x[1])]
    return {"images": images, "annotations": annotations, "categories": categories}


def refuse_duplicate_files(images: list[dict], sources: list[str]) -> None:
    """ValueError if two records name the same image file."""
    first: dict[str, str] = {}
    for image, where in zip(images, sources, strict=True):
        name = image["file_name"]
        if name in first:
            raise ValueError(f"{where} and {first[name]} both annotate the image {name}: keep "
                             "one of them")
        first[name] = where


