"""Image files in, drawings and COCO-style predictions out (what `keras-maskrcnn predict` runs).

File handling and drawing live here, beside the inference API (`inference.predict_images`),
not inside it.
"""

from __future__ import annotations

import glob
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_maskrcnn.atomic import atomic_path, atomic_write_json
from keras_maskrcnn.data.images import DEFAULT_MAX_IMAGE_PIXELS, BadImageError, load_rgb_image
from keras_maskrcnn.evaluation import detections_to_coco_results
from keras_maskrcnn.inference import category_map, predict_images, predict_tiled
from keras_maskrcnn.model import MaskRCNN
from keras_maskrcnn.tiling import DEFAULT_OVERLAP, check_tiling, coco_records
from keras_maskrcnn.visualize import blend_mask_crops, draw_detections, save_image

logger = logging.getLogger("keras_maskrcnn")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PREDICTIONS_FILE = "predictions.json"


def expand_image_paths(items: Sequence[str | Path]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in order, without
    duplicates. A name that matches nothing is kept, so that it is reported as missing."""
    paths: list[Path] = []
    for item in items:
        item = str(item)
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir()
                                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif any(ch in item for ch in "*?[") and not path.exists():
            paths.extend(sorted(Path(p) for p in glob.glob(item, recursive=True)
                                if Path(p).is_file()))
        else:
            paths.append(path)
    seen: set[Path] = set()
    return [p for p in paths if not (p in seen or seen.add(p))]


class Progress:
    """A one-line progress bar with ETA on stderr (only for a terminal, or when forced)."""

    def __init__(self, total: int, label: str = "", enabled: bool | None = None) -> None:
        self.total, self.label, self.start = total, label, time.monotonic()
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def update(self, done: int) -> None:
        if not self.enabled or self.total < 2:
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / max(done, 1) * (self.total - done)
        width = 30
        filled = int(width * done / self.total)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{self.total} {elapsed:.0f}s eta {eta:.0f}s")
        if done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def predict_files(
    model: MaskRCNN, paths: Sequence[str | Path], output_dir: str | Path,
    class_names: Sequence[str] | None = None, score_threshold: float = 0.5,
    label_to_category_id: dict[int, int] | None = None, draw: bool = True,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, progress: bool | None = None,
    tile: int | None = None, tile_overlap: float = DEFAULT_OVERLAP,
    tile_full_image: bool = False, batch_size: int = 4,
) -> list[dict]:
    """Predicts each image file (files, folders or globs), writes `<stem>.png` drawings (with
    `draw`) and `predictions.json`.

    `predictions.json` lists COCO-style records: `file_name`, `category_id`, `bbox` [x, y, w, h]
    in original pixels, `score`, `segmentation` (COCO RLE). Detections below `score_threshold`
    are left out of both. A file that cannot be read (missing, not an image, truncated, above
    `max_image_pixels`) is named in a warning and skipped; the others are still processed.
    `tile`: sliced inference (`inference.predict_tiled`, `batch_size` tiles per model call);
    its masks stay crops for drawing and RLE (no `[D, h, w]` array). Returns the records.
    """
    if tile is not None:
        check_tiling(tile, tile_overlap)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files = expand_image_paths(paths)
    names = list(class_names or model.config.class_names
                 or ["background", *(f"class_{i}" for i in range(1, model.config.num_classes + 1))])
    mapping = label_to_category_id or category_map(model.config)
    records: list[dict] = []
    bad: list[str] = []
    bar = Progress(len(files), "predict", progress)
    for done, path in enumerate(files, start=1):
        try:
            image = load_rgb_image(path, max_image_pixels)
        except BadImageError as err:
            logger.warning("predict: skipping %s", err)
            bad.append(str(path))
            bar.update(done)
            continue
        if tile is None:
            drawing, found = _predict_whole(model, image, score_threshold, mapping, names, draw)
        else:
            drawing, found = _predict_sliced(model, image, score_threshold, mapping, names, draw,
                                             (tile, tile_overlap, tile_full_image, batch_size))
        if drawing is not None:
            with atomic_path(output_dir / f"{path.stem}.png", suffix=".png") as tmp:
                save_image(drawing, tmp)
        for record in found:
            record.pop("image_id")
            records.append({"file_name": path.name, **record})
        bar.update(done)
    atomic_write_json(output_dir / PREDICTIONS_FILE, records, indent=None)
    if bad:
        logger.warning("predict: %d of %d images could not be read: %s", len(bad), len(files),
                       ", ".join(bad[:5]))
    logger.info("wrote %d detections for %d images to %s", len(records),
                len(files) - len(bad), output_dir)
    return records


def _predict_whole(model: MaskRCNN, image: np.ndarray, score_threshold: float,
                   mapping: dict[int, int], names: Sequence[str],
                   draw: bool) -> tuple[np.ndarray | None, list[dict]]:
    """(drawing or None, COCO records) of one image, the model on the whole image."""
    det = predict_images(model, [image])[0]
    keep = det["scores"] >= score_threshold
    det = {k: v[keep] for k, v in det.items()}
    drawing = draw_detections(image, det["boxes"], det["labels"], det["scores"], det["masks"],
                              names) if draw else None
    return drawing, detections_to_coco_results(0, det["boxes"], det["scores"], det["labels"],
                                               mapping, masks=det["masks"])


def _predict_sliced(model: MaskRCNN, image: np.ndarray, score_threshold: float,
                    mapping: dict[int, int], names: Sequence[str], draw: bool,
                    tiling: tuple[int, float, bool, int]) -> tuple[np.ndarray | None, list[dict]]:
    """`_predict_whole` by sliced inference; `tiling` = (tile, overlap, full_image, batch)."""
    tile, overlap, full_image, batch_size = tiling
    det = predict_tiled(model, image, tile, overlap, full_image, batch_size,
                        score_threshold=score_threshold)
    drawing = None
    if draw:
        blended = blend_mask_crops(image, det.mask_crops, det.mask_origins)
        drawing = draw_detections(blended, det.boxes, det.labels, det.scores, None, names)
    return drawing, coco_records(det, 0, image.shape[:2], mapping)
