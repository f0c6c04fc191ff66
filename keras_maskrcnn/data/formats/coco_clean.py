"""COCO files as CVAT and other tools export them -> a clean COCO file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from keras_maskrcnn.data.coco import (
    check_category_record,
    index_images,
    read_coco_json,
    segmentation_problem,
)
from keras_maskrcnn.data.formats.common import (
    Conversion,
    Notes,
    clean_polygons,
    is_number,
    positive_int,
    posix_name,
    read_category_names,
    rectangle_polygon,
    refuse_duplicate_files,
    segmentation_area,
    segmentation_bbox,
)
from keras_maskrcnn.data.images import BadImageError, image_file_size

EMPTY_SEGMENTATION = ("error", "box", "drop")
BBOX_TOLERANCE = 1.0  # pixels


def _coco_categories(categories: list, path: Path) -> list[dict]:
    ids: dict[int, int] = {}
    names: dict[str, int] = {}
    for k, cat in enumerate(categories):
        check_category_record(cat, k, path)
        if not isinstance(cat["name"], str) or not cat["name"].strip():
            raise ValueError(f"{path}: categories[{k}] (id {cat['id']}): 'name' must be a "
                             f"non-empty string, got {cat['name']!r}")
        if cat["id"] in ids:
            raise ValueError(f"{path}: categories[{k}]: category id {cat['id']} appears twice")
        if cat["name"] in names:
            raise ValueError(f"{path}: categories {names[cat['name']]} and {cat['id']} are "
                             f"both named {cat['name']!r}: merge or rename them")
        ids[cat["id"]], names[cat["name"]] = k, cat["id"]
    return [dict(cat) for cat in categories]


def _coco_image(img: Any, k: int, path: Path, images_dir: Path | None) -> dict:
    where = f"{path}: images[{k}]"
    if not isinstance(img, dict):
        raise ValueError(f"{where} must be an object, got {str(img)[:80]}")
    if not isinstance(img.get("id"), int) or isinstance(img.get("id"), bool):
        raise ValueError(f"{where}: 'id' must be an integer, got {img.get('id')!r}")
    name = img.get("file_name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where} (id {img['id']}) has no 'file_name'")
    out = {**img, "file_name": posix_name(name.strip())}
    if not (positive_int(img.get("height")) and positive_int(img.get("width"))):
        if images_dir is None:
            raise ValueError(f"{where} (id {img['id']}) has no valid 'height' / 'width': give "
                             "`images_dir` to read them from the image files")
        try:
            out["height"], out["width"] = image_file_size(images_dir / out["file_name"])
        except BadImageError as err:
            raise ValueError(f"{where} (id {img['id']}) has no valid 'height' / 'width' and "
                             f"its file cannot tell them: {err}") from None
    return out


def _coco_images(images: list, path: Path, images_dir: Path | None) -> list[dict]:
    out = [_coco_image(img, k, path, images_dir) for k, img in enumerate(images)]
    index_images(out, path)  # repeated ids
    refuse_duplicate_files(out, [f"{path}: image id {img['id']}" for img in out])
    return out


def _empty_segmentation(ann: dict, where: str, policy: str, notes: Notes) -> list | None:
    """The polygon of an annotation with no mask under `policy` (None: dropped)."""
    if policy == "drop":
        notes.add("annotation(s) with an empty segmentation (a box only) dropped", where)
        return None
    if policy == "box":
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(is_number, bbox))
                and bbox[2] > 0 and bbox[3] > 0):
            raise ValueError(f"{where} has neither a segmentation nor a valid 'bbox' "
                             f"(got {bbox!r})")
        notes.add("annotation(s) with an empty segmentation given their box as mask", where)
        x, y, w, h = bbox
        return [rectangle_polygon(x, y, x + w, y + h)]
    raise ValueError(f"{where} has an empty 'segmentation' (a box without a mask): Mask R-CNN "
                     "learns masks; pass `empty_segmentation='box'` (the box as its mask) or "
                     "'drop'")


def _coco_segmentation(ann: dict, where: str, image: dict, policy: str, notes: Notes):
    """The annotation's segmentation, cleaned; None when the annotation is dropped."""
    seg = ann.get("segmentation")
    if seg is None or seg == [] or seg == {}:
        return _empty_segmentation(ann, where, policy, notes)
    if isinstance(seg, list):
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(map(is_number, poly)):
                raise ValueError(f"{where}: 'segmentation' polygon {k} must be a flat list of "
                                 "numbers [x1, y1, x2, y2, ...]")
            if len(poly) % 2:
                raise ValueError(f"{where}: 'segmentation' polygon {k} has an odd number "
                                 f"({len(poly)}) of coordinates")
        kept = clean_polygons(seg, where.split(": ", 1)[-1], notes)
        if not kept:
            notes.add("annotation(s) left without a polygon of 3+ points dropped", where)
            return None
        return kept
    problem = segmentation_problem(seg, int(image["height"]), int(image["width"]))
    if problem:
        raise ValueError(f"{where}: 'segmentation' {problem}")
    return seg


def _bbox_off(given: Any, computed: list[float]) -> bool:
    if not (isinstance(given, list) and len(given) == 4 and all(map(is_number, given))):
        return True
    a = np.array(given, np.float64)
    b = np.array(computed, np.float64)
    corners_a = np.concatenate([a[:2], a[:2] + a[2:]])
    corners_b = np.concatenate([b[:2], b[:2] + b[2:]])
    return bool(np.abs(corners_a - corners_b).max() > BBOX_TOLERANCE)


def _coco_annotation(ann: Any, k: int, path: Path, images: dict, category_set: set,
                     policy: str, notes: Notes) -> dict | None:
    if not isinstance(ann, dict):
        raise ValueError(f"{path}: annotations[{k}] must be an object, got {str(ann)[:80]}")
    where = f"{path}: annotation id {ann.get('id')}" if "id" in ann else \
        f"{path}: annotations[{k}]"
    for key, known in (("image_id", images), ("category_id", category_set)):
        value = ann.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{where}: {key!r} must be an integer, got {value!r}")
        if value not in known:
            raise ValueError(f"{where} refers to unknown {key.split('_')[0]} id {value}")
    image = images[ann["image_id"]]
    seg = _coco_segmentation(ann, where, image, policy, notes)
    if seg is None:
        return None
    out = dict(ann)
    out["segmentation"] = seg
    crowd = ann.get("iscrowd")
    if crowd is None:
        notes.add("annotation(s) without 'iscrowd' set to 0", where)
        crowd = 0
    if crowd not in (0, 1, True, False):
        raise ValueError(f"{where}: 'iscrowd' must be 0 or 1, got {crowd!r}")
    out["iscrowd"] = int(crowd)
    height, width = int(image["height"]), int(image["width"])
    bbox = segmentation_bbox(seg, height, width)
    if _bbox_off(ann.get("bbox"), bbox):
        notes.add("bbox(es) missing or off their segmentation by more than "
                  f"{BBOX_TOLERANCE:g} pixel, recomputed", where)
        out["bbox"] = bbox
    if not (is_number(ann.get("area")) and ann["area"] > 0):
        notes.add("area(s) missing or <= 0 recomputed", where)
        out["area"] = segmentation_area(seg, height, width)
    return out


def _renumber_annotations(anns: list[dict], notes: Notes, path: Path) -> None:
    ids = [a.get("id") for a in anns]
    valid = all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    if valid and len(set(ids)) == len(ids):
        return
    notes.add("annotation ids missing or repeated: all renumbered 1..M", str(path))
    for new, ann in enumerate(anns, start=1):
        ann["id"] = new


def _renumber_categories(data: dict, names: list[str], names_file: str | Path,
                         path: Path) -> None:
    """Category ids 1..K in the names file's order (annotations follow)."""
    by_name = {c["name"]: c for c in data["categories"]}
    missing = sorted(set(by_name) - set(names))
    if missing:
        raise ValueError(f"categories {missing} of {path} are not in the categories file "
                         f"{names_file}: add them there")
    new_id = {int(by_name[n]["id"]): k for k, n in enumerate(names, start=1) if n in by_name}
    data["categories"] = [{**by_name.get(n, {}), "id": k, "name": n}
                          for k, n in enumerate(names, start=1)]
    for ann in data["annotations"]:
        ann["category_id"] = new_id[ann["category_id"]]


def normalize_coco(source: str | Path, images_dir: str | Path | None = None,
                   categories: str | Path | None = None,
                   empty_segmentation: str = "error") -> Conversion:
    """A COCO file as CVAT and other tools export it -> a clean COCO file.

    Args:
        source: the COCO JSON.
        images_dir: image folder, read only where an image record has no valid height/width.
        categories: a names file renumbering the categories 1..K by name (default: ids kept).
        empty_segmentation: annotations without a mask: "error" (default), "box", "drop".

    Repairs (counted): `iscrowd` missing -> 0; `area` missing or <= 0 recomputed; `bbox`
    missing or inconsistent with the segmentation recomputed; polygons with < 3 points or zero
    area dropped; missing / repeated annotation ids renumbered; file names with backslashes or a
    leading "./" normalized. Refused (ValueError): unknown image / category ids, repeated image
    ids or file names, repeated category ids or names, malformed polygons or RLE.
    """
    if empty_segmentation not in EMPTY_SEGMENTATION:
        raise ValueError(f"empty_segmentation must be one of {EMPTY_SEGMENTATION}, got "
                         f"{empty_segmentation!r}")
    path = Path(source)
    data = read_coco_json(path)
    notes = Notes()
    cats = _coco_categories(data["categories"], path)
    images = _coco_images(data["images"], path, Path(images_dir) if images_dir else None)
    by_id = {img["id"]: img for img in images}
    category_set = {c["id"] for c in cats}
    anns = [_coco_annotation(a, k, path, by_id, category_set, empty_segmentation, notes)
            for k, a in enumerate(data["annotations"])]
    anns = [a for a in anns if a is not None]
    _renumber_annotations(anns, notes, path)
    out = {**data, "images": images, "annotations": anns, "categories": cats}
    if categories:
        _renumber_categories(out, read_category_names(categories), categories, path)
    return Conversion(out, notes.lines())


