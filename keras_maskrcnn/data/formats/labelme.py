"""labelme folders (one JSON per image) -> COCO."""

from __future__ import annotations

import base64
import io
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from keras_maskrcnn.data.formats.common import (
    Conversion,
    Notes,
    annotation_from_mask,
    annotation_from_polygons,
    assemble,
    category_ids,
    clean_polygons,
    ellipse_polygon,
    is_number,
    positive_int,
    posix_name,
    read_category_names,
    read_json_file,
    rectangle_polygon,
    refuse_duplicate_files,
    to_rle,
)
from keras_maskrcnn.data.images import BadImageError, image_file_size

LABELME_REGIONS = ("polygon", "rectangle", "circle", "mask")
LABELME_NOT_REGIONS = ("line", "linestrip", "point", "points")
# labelme's own labels.txt convention: regions that are no object (skipped, counted).
LABELME_SKIPPED_LABELS = ("__ignore__", "_background_")


def labelme_files(source: Path) -> list[Path]:
    """The labelme JSON files of a folder (sorted, not recursive) or the one file given."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"labelme input not found: {source} (give the folder of "
                                "labelme .json files, or one of them)")
    files = sorted(p for p in source.iterdir() if p.suffix.lower() == ".json" and p.is_file())
    if not files:
        raise ValueError(f"no .json files in {source}: give the folder of labelme annotations")
    return files


def _labelme_points(shape: dict, where: str) -> np.ndarray:
    points = shape.get("points")
    ok = isinstance(points, list) and all(
        isinstance(p, list) and len(p) == 2 and all(map(is_number, p)) for p in points)
    if not ok:
        raise ValueError(f"{where}: 'points' must be a list of [x, y] number pairs, got "
                         f"{str(points)[:80]}")
    return np.asarray(points, np.float64).reshape(-1, 2)


def _labelme_mask(shape: dict, points: np.ndarray, height: int, width: int,
                  where: str) -> np.ndarray:
    """A labelme "mask" shape as a full-image bool mask: the PNG in "mask" (base64) covers the
    box from points[0] to points[1] (integer pixels, both included)."""
    from PIL import Image

    if len(points) != 2 or not isinstance(shape.get("mask"), str):
        raise ValueError(f"{where}: a 'mask' shape needs 2 points (its box corners) and a "
                         "base64 PNG 'mask'")
    try:
        with Image.open(io.BytesIO(base64.b64decode(shape["mask"]))) as img:
            part = np.asarray(img.convert("L")) > 0
    except (ValueError, OSError) as err:
        raise ValueError(f"{where}: 'mask' is not a base64 PNG ({err})") from None
    (x1, y1), _ = points.astype(int)
    full = np.zeros((height, width), bool)
    ys, xs = slice(max(y1, 0), min(y1 + part.shape[0], height)), \
        slice(max(x1, 0), min(x1 + part.shape[1], width))
    full[ys, xs] = part[ys.start - y1: ys.stop - y1, xs.start - x1: xs.stop - x1]
    return full


def _labelme_shape(shape: Any, k: int, path: Path, size: tuple[int, int], notes: Notes):
    """(label, group key, polygon or None, mask or None) of shape k; None for a shape that is
    no region (line, point: counted)."""
    where = f"{path}: shapes[{k}]"
    if not isinstance(shape, dict):
        raise ValueError(f"{where} must be an object, got {str(shape)[:80]}")
    label = shape.get("label")
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"{where} has no 'label' (a non-empty string), got {label!r}")
    label = label.strip()
    if label in LABELME_SKIPPED_LABELS:
        notes.add("labelme shape(s) labelled __ignore__ / _background_ skipped",
                  f"{path.name} shapes[{k}]")
        return None
    kind = shape.get("shape_type") or "polygon"
    where = f"{where} ({label!r}, {kind})"
    if kind in LABELME_NOT_REGIONS:
        notes.add("labelme shape(s) that are no region (line, linestrip, point) skipped",
                  f"{path.name} shapes[{k}]")
        return None
    if kind not in LABELME_REGIONS:
        raise ValueError(f"{where}: unknown shape_type {kind!r} (known: "
                         f"{', '.join(LABELME_REGIONS + LABELME_NOT_REGIONS)})")
    points = _labelme_points(shape, where)
    group = shape.get("group_id")
    key = (label, group) if group is not None else (label, ("shape", k))
    if kind == "mask":
        return label, key, None, _labelme_mask(shape, points, *size, where)
    if kind == "rectangle":
        if len(points) < 2:
            raise ValueError(f"{where}: a rectangle needs 2 points (opposite corners)")
        (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
        return label, key, rectangle_polygon(x1, y1, x2, y2), None
    if kind == "circle":
        if len(points) != 2:
            raise ValueError(f"{where}: a circle needs 2 points (centre, a point on it)")
        (cx, cy), (px, py) = points
        r = math.hypot(px - cx, py - cy)
        return label, key, ellipse_polygon(cx, cy, r, r), None
    return label, key, [v for p in shape["points"] for v in p], None


def _labelme_size(data: dict, path: Path, image_path: Path) -> tuple[int, int]:
    """(height, width): imageHeight / imageWidth, else the embedded image's, else the file's."""
    height, width = data.get("imageHeight"), data.get("imageWidth")
    if positive_int(height) and positive_int(width):
        return height, width
    if isinstance(data.get("imageData"), str):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(base64.b64decode(data["imageData"]))) as img:
                return img.size[1], img.size[0]
        except (ValueError, OSError):
            pass
    try:
        return image_file_size(image_path)
    except BadImageError as err:
        raise ValueError(f"{path} has no valid imageHeight / imageWidth ({height!r}, "
                         f"{width!r}) and its image cannot tell them: {err}") from None


def _labelme_image(path: Path, data: dict, root: Path) -> tuple[dict, Path]:
    """The COCO image record (file name relative to `root`) and the image path."""
    image_path = data.get("imagePath")
    if not isinstance(image_path, str) or not image_path.strip():
        raise ValueError(f"{path} has no 'imagePath' (the image file it annotates)")
    relative = posix_name(image_path.strip())
    candidate = Path(os.path.normpath(path.parent / relative))
    if not candidate.is_file() and (root / PurePosixPath(relative).name).is_file():
        candidate = root / PurePosixPath(relative).name  # the JSONs moved away from the images
    name = posix_name(os.path.relpath(candidate, root))
    height, width = _labelme_size(data, path, candidate)
    return {"file_name": name, "height": int(height), "width": int(width)}, candidate


def _labelme_instances(path: Path, data: dict, size: tuple[int, int], notes: Notes) -> list:
    """Instances of one labelme file: shapes sharing (label, group_id) form one instance."""
    shapes = data["shapes"]
    groups: dict[Any, dict] = {}
    for k, shape in enumerate(shapes):
        parsed = _labelme_shape(shape, k, path, size, notes)
        if parsed is None:
            continue
        label, key, polygon, mask = parsed
        try:
            group = groups.setdefault(key, {"label": label, "polygons": [], "masks": []})
        except TypeError:
            raise ValueError(f"{path}: shapes[{k}]: 'group_id' must be a number or null, got "
                             f"{shape.get('group_id')!r}") from None
        if polygon is not None:
            group["polygons"].extend(clean_polygons([polygon], f"{path.name} shapes[{k}]",
                                                    notes))
        else:
            group["masks"].append(mask)
    out = []
    for group in groups.values():
        height, width = size
        if group["masks"]:
            mask = np.logical_or.reduce(group["masks"])
            if group["polygons"]:
                from pycocotools import mask as mask_utils

                rle = to_rle(group["polygons"], height, width)
                mask = mask | mask_utils.decode(rle).astype(bool)
            if not mask.any():
                notes.add("empty labelme mask(s) dropped", path.name)
                continue
            out.append({"label": group["label"], **annotation_from_mask(mask)})
        elif group["polygons"]:
            out.append({"label": group["label"],
                        **annotation_from_polygons(group["polygons"], height, width)})
        else:
            notes.add("instance(s) left without a polygon dropped", path.name)
    return out


def labelme_to_coco(source: str | Path, images_dir: str | Path | None = None,
                    categories: str | Path | None = None) -> Conversion:
    """labelme annotations (a folder of per-image .json files, or one) -> COCO.

    Args:
        source: the folder of labelme JSON files (not recursive) or one file.
        images_dir: the folder the COCO `file_name`s are relative to (the one to give
            `CocoDataset`); default: the labelme folder. Each image is `imagePath` read from its
            JSON's folder, else the file of that name in `images_dir`.
        categories: a names file fixing the category ids (default: sorted labels -> 1..K).

    Shapes: polygon, rectangle, circle and mask are regions; line, linestrip, point(s) are
    skipped (counted), as are shapes labelled "__ignore__" or "_background_"; shapes with the
    same label and `group_id` are parts of one instance.
    """
    source = Path(source)
    files = labelme_files(source)
    if images_dir is not None and not Path(images_dir).is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}; check `images_dir`")
    root = Path(images_dir) if images_dir else (source if source.is_dir() else source.parent)
    notes, images, instances, labels, sources = Notes(), [], [], {}, []
    for path in files:
        data = read_json_file(path, "labelme")
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            raise ValueError(f"{path} is not a labelme annotation (no 'shapes' list)")
        image, _ = _labelme_image(path, data, root)
        anns = _labelme_instances(path, data, (image["height"], image["width"]), notes)
        for ann in anns:
            labels.setdefault(ann["label"], str(path))
        images.append(image)
        instances.append(anns)
        sources.append(str(path))
    refuse_duplicate_files(images, sources)
    names = read_category_names(categories) if categories else None
    data = assemble(images, instances, category_ids(labels, names, categories))
    return Conversion(data, notes.lines())


