"""Annotation formats -> one clean COCO instances file that `CocoDataset` reads.

`convert(fmt, source, ...)` reads labelme folders, VIA 2 projects / exports, or COCO files as
CVAT and other tools export them, and returns a `Conversion`: the COCO dict and one line per
kind of repaired or dropped record (with its count and first examples). Every malformed input
is a ValueError naming the file, the record and the field.

What is kept, and how ids are given:
- Polygon coordinates are copied exactly (no rounding); rectangles become their 4 corners;
  circles and ellipses become polygons whose vertices lie on the curve, spaced so the chords
  stay within 0.25 pixel of it (at least 16 vertices). labelme "mask" shapes, and instances
  mixing them with polygons, become a compressed RLE of the union.
- Images: one record per image, ids 1..N (labelme: sorted JSON file names; VIA: the project's
  order); COCO input keeps its image ids. `width` / `height` come from the annotation (labelme's
  imageWidth / imageHeight, COCO's fields) or, where it has none (VIA), from the image file.
- Categories: labelme and VIA names sorted -> ids 1..K; with a names file (one name a line),
  ids 1..K in its order and a label not in it is an error. COCO input keeps its category ids
  (0-based and non-contiguous ids are fine: `CocoDataset` maps them to labels 1..K by id) unless
  a names file is given, which renumbers them by name.
- Polygons with fewer than 3 points or zero area are dropped (counted); an instance left with
  no polygon is dropped (counted). `bbox` is the polygons' extent (RLE: the mask's), `area`
  pycocotools' mask area; a COCO bbox that is missing or off by more than `BBOX_TOLERANCE`
  pixels from its segmentation is recomputed, an `area` missing or <= 0 likewise.
- COCO annotations with an empty `segmentation` (a box without a mask; CVAT writes these for
  rectangles) are refused by default: Mask R-CNN learns masks from them. `empty_segmentation=
  "box"` uses the box itself as the mask polygon, `"drop"` leaves them out (both counted).
"""

from __future__ import annotations

from pathlib import Path

from keras_maskrcnn.data.formats.coco_clean import EMPTY_SEGMENTATION, normalize_coco
from keras_maskrcnn.data.formats.common import Conversion, check_coco, write_coco
from keras_maskrcnn.data.formats.labelme import labelme_to_coco
from keras_maskrcnn.data.formats.via import via_to_coco

FORMATS = ("labelme", "via", "coco")

__all__ = ["EMPTY_SEGMENTATION", "FORMATS", "Conversion", "convert", "labelme_to_coco",
           "normalize_coco", "via_to_coco", "write_coco"]


def convert(fmt: str, source: str | Path, *, images_dir: str | Path | None = None,
            categories: str | Path | None = None, label_key: str | None = None,
            empty_segmentation: str = "error") -> Conversion:
    """Converts `source` in format `fmt` ("labelme", "via", "coco") to a clean COCO dict (see
    the module docstring), checked as `CocoDataset` checks it."""
    if label_key is not None and fmt != "via":
        raise ValueError("`label_key` applies to `fmt='via'` only")
    if empty_segmentation != "error" and fmt != "coco":
        raise ValueError("`empty_segmentation` applies to `fmt='coco'` only")
    if fmt == "labelme":
        result = labelme_to_coco(source, images_dir, categories)
    elif fmt == "via":
        result = via_to_coco(source, images_dir, label_key, categories)
    elif fmt == "coco":
        result = normalize_coco(source, images_dir, categories, empty_segmentation)
    else:
        raise ValueError(f"unknown annotation format {fmt!r} (known: {', '.join(FORMATS)})")
    check_coco(result.data, f"the {fmt} conversion of {source}")
    return result
