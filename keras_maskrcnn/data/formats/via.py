"""VGG Image Annotator (VIA 2) projects and annotation exports -> COCO."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from keras_maskrcnn.data.formats.common import (
    Conversion,
    Notes,
    annotation_from_polygons,
    assemble,
    category_ids,
    clean_polygons,
    ellipse_polygon,
    is_number,
    posix_name,
    read_category_names,
    read_json_file,
    rectangle_polygon,
    refuse_duplicate_files,
)
from keras_maskrcnn.data.images import BadImageError, image_file_size

VIA_REGIONS = ("polygon", "rect", "circle", "ellipse")
VIA_NOT_REGIONS = ("polyline", "point")


def via_entries(data: Any, path: Path) -> list[dict]:
    """The per-image records of a VIA 2 project (`_via_img_metadata`) or annotation export."""
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a VIA project or export (a JSON object)")
    if "_via_img_metadata" in data:
        data = data["_via_img_metadata"]
    elif {"project", "file", "metadata"} <= set(data):
        raise ValueError(f"{path} is a VIA 3 project: export it from VIA 2 (Annotation -> "
                         "Export Annotations (as json)) or convert it to COCO first")
    if not isinstance(data, dict) or not all(
            isinstance(v, dict) and "filename" in v and "regions" in v for v in data.values()):
        raise ValueError(f"{path} is not a VIA 2 project or annotation export (expected "
                         "'_via_img_metadata' or records with 'filename' and 'regions')")
    return list(data.values())


def via_regions(entry: dict, path: Path) -> list[dict]:
    regions = entry["regions"]
    if isinstance(regions, dict):  # VIA 1 wrote {"0": region, ...}
        regions = [regions[k] for k in sorted(regions, key=lambda k: int(k) if k.isdigit()
                                              else 0)]
    if not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
        raise ValueError(f"{path}: image {entry['filename']!r}: 'regions' must be a list of "
                         "objects")
    return regions


def via_label_key(entries: list[dict], path: Path, label_key: str | None) -> str:
    """The region attribute holding the class: `label_key`, or the only one present."""
    if label_key is not None:
        return label_key
    keys: set[str] = set()
    for entry in entries:
        for region in via_regions(entry, path):
            attributes = region.get("region_attributes") or {}
            if isinstance(attributes, dict):
                keys.update(k for k, v in attributes.items() if v not in ("", None, {}))
    if len(keys) == 1:
        return keys.pop()
    if not keys:
        raise ValueError(f"{path}: no region has a region attribute (the class): add one in "
                         "VIA, or name it with `label_key`")
    raise ValueError(f"{path}: regions have several attributes ({', '.join(sorted(keys))}): "
                     "name the one holding the class with `label_key`")


def _via_label(region: dict, key: str, where: str) -> str:
    attributes = region.get("region_attributes")
    value = attributes.get(key) if isinstance(attributes, dict) else None
    if isinstance(value, dict):  # a checkbox attribute: {option: true}
        chosen = [k for k, on in value.items() if on]
        if len(chosen) != 1:
            raise ValueError(f"{where}: attribute {key!r} must have one option checked, got "
                             f"{value!r}")
        value = chosen[0]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} has no class in region attribute {key!r} (got {value!r}): "
                         "label it, or choose the attribute with `label_key`")
    return value.strip()


def _via_numbers(shape: dict, names: Iterable[str], where: str) -> list:
    values = [shape.get(n) for n in names]
    for name, value in zip(names, values, strict=True):
        if isinstance(value, list):
            if not all(map(is_number, value)):
                raise ValueError(f"{where}: {name!r} must be a list of numbers")
        elif not is_number(value):
            raise ValueError(f"{where}: {name!r} must be a number, got {value!r}")
    return values


def _via_polygon(shape: Any, where: str, notes: Notes) -> list[float] | None:
    """A VIA shape_attributes as a flat polygon; None for a polyline / point (counted)."""
    if not isinstance(shape, dict) or "name" not in shape:
        raise ValueError(f"{where} has no 'shape_attributes' with a 'name'")
    kind = shape["name"]
    if kind in VIA_NOT_REGIONS:
        notes.add("VIA region(s) that enclose no area (polyline, point) skipped", where)
        return None
    if kind == "polygon":
        xs, ys = _via_numbers(shape, ("all_points_x", "all_points_y"), where)
        if not isinstance(xs, list) or len(xs) != len(ys):
            raise ValueError(f"{where}: all_points_x and all_points_y must be lists of the "
                             "same length")
        return [v for xy in zip(xs, ys, strict=True) for v in xy]
    if kind == "rect":
        x, y, w, h = _via_numbers(shape, ("x", "y", "width", "height"), where)
        return rectangle_polygon(x, y, x + w, y + h)
    if kind == "circle":
        cx, cy, r = _via_numbers(shape, ("cx", "cy", "r"), where)
        return ellipse_polygon(cx, cy, r, r)
    if kind == "ellipse":
        cx, cy, rx, ry = _via_numbers(shape, ("cx", "cy", "rx", "ry"), where)
        theta = shape.get("theta", 0.0)
        return ellipse_polygon(cx, cy, rx, ry, theta if is_number(theta) else 0.0)
    raise ValueError(f"{where}: unknown shape {kind!r} (known: "
                     f"{', '.join(VIA_REGIONS + VIA_NOT_REGIONS)})")


def via_to_coco(source: str | Path, images_dir: str | Path | None,
                label_key: str | None = None,
                categories: str | Path | None = None) -> Conversion:
    """A VIA 2 project or annotation export (JSON) -> COCO.

    Args:
        source: the VIA JSON file.
        images_dir: the folder holding the images: VIA stores no image size, so each is read
            from its file (required).
        label_key: the region attribute holding the class (default: the only one used).
        categories: a names file fixing the category ids (default: sorted labels -> 1..K).

    Regions: polygon, rect, circle, ellipse (rotated by `theta`); polyline and point are
    skipped (counted). Each region is one instance.
    """
    path = Path(source)
    if images_dir is None:
        raise ValueError("VIA files store no image sizes: give `images_dir`, the folder "
                         "holding the images, to read them from the files")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}; check `images_dir`")
    entries = via_entries(read_json_file(path, "VIA"), path)
    key = via_label_key(entries, path, label_key)
    notes, images, instances, labels, sources = Notes(), [], [], {}, []
    for entry in entries:
        name = entry["filename"]
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}: a record has no 'filename'")
        try:
            height, width = image_file_size(images_dir / name)
        except BadImageError as err:
            raise ValueError(f"{path}: the size of image {name!r} cannot be read ({err.reason}"
                             f", {err.path}): VIA stores none; check `images_dir`") from None
        anns = []
        for k, region in enumerate(via_regions(entry, path)):
            where = f"{path}: image {name!r} region {k}"
            poly = _via_polygon(region.get("shape_attributes"), where, notes)
            if poly is None:
                continue
            label = _via_label(region, key, where)
            polygons = clean_polygons([poly], f"{name} region {k}", notes)
            if not polygons:
                continue
            labels.setdefault(label, where)
            anns.append({"label": label, **annotation_from_polygons(polygons, height, width)})
        images.append({"file_name": posix_name(name), "height": height, "width": width})
        instances.append(anns)
        sources.append(f"{path}: {name!r}")
    refuse_duplicate_files(images, sources)
    names = read_category_names(categories) if categories else None
    data = assemble(images, instances, category_ids(labels, names, categories))
    return Conversion(data, notes.lines())


