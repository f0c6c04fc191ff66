"""Python API for inference: predict on images, evaluate on a dataset, write predictions.

The model works on the padded canvas; these functions map its padded outputs back to each
original image: boxes rescaled per axis (original size / resized size, as torchvision does), masks
pasted into the original image and thresholded.

Sliced inference (`predict_tiled`, and `tile=` of `predict_images` / `evaluate`) runs the model
on overlapping tiles of the full-resolution image and merges the tiles' detections
(`keras_maskrcnn.tiling`: geometry, merge rule, masks kept as crops).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from keras import ops

from keras_maskrcnn import backend
from keras_maskrcnn.builder import model_for_canvas
from keras_maskrcnn.data.images import BadImageError
from keras_maskrcnn.data.pipeline import make_inference_inputs
from keras_maskrcnn.evaluation import detections_to_coco_results, evaluate_coco
from keras_maskrcnn.model import INFERENCE_INPUTS, MaskRCNN
from keras_maskrcnn.ops.paste import paste_masks
from keras_maskrcnn.tiling import (
    DEFAULT_OVERLAP,
    Detections,
    check_tiling,
    coco_records,
    crop_tiles,
    merge_detections,
    tile_detections,
    tile_grid,
)
from keras_maskrcnn.transform import boxes_to_original, canvas_for

logger = logging.getLogger("keras_maskrcnn")


def run_model(model: MaskRCNN, batch: dict[str, np.ndarray],
              dynamic: bool = False) -> dict[str, np.ndarray]:
    """Runs the inference graph on a prepared batch (`make_inference_inputs`) -> numpy dict;
    `dynamic`: a canvas other than the config's (any multiple of 32): TensorFlow runs the
    shape-polymorphic graph (one trace for all canvases), JAX and PyTorch the model rebuilt on
    that canvas (`builder.model_for_canvas`, cached; one compilation per canvas)."""
    if dynamic and not backend.is_tensorflow():
        model = model_for_canvas(model, tuple(int(v) for v in batch["images"].shape[1:3]))
        dynamic = False
    fn = model.dynamic_inference_function() if dynamic else model.inference_function()
    outputs = fn({k: ops.convert_to_tensor(batch[k]) for k in INFERENCE_INPUTS})
    return {k: ops.convert_to_numpy(v) for k, v in outputs.items()}


def postprocess(
    outputs: dict[str, np.ndarray], batch: dict[str, np.ndarray], index: int,
    mask_threshold: float = 0.5, paste_method: str = "exact",
) -> dict[str, np.ndarray]:
    """One image's detections in original pixels.

    Boxes go back by the inverse per-axis map `transform.boxes_to_original` (input pixels ->
    original pixels: `y * h / h'`, `x * w / w'`, clipped to the image).

    Returns dict: `boxes [D, 4]` float32 (y1, x1, y2, x2) original pixels, `scores [D]`,
    `labels [D]` int32 (1..K), `masks [D, h, w]` uint8 (0/1) pasted into the original image.
    """
    det = unpasted(outputs, batch, index)
    h, w = (int(v) for v in batch["original_shape"][index])
    det["masks"] = paste_masks(det["masks"], det["boxes"], (h, w), threshold=mask_threshold,
                               method=paste_method).astype(np.uint8)
    return det


def unpasted(outputs: dict[str, np.ndarray], batch: dict[str, np.ndarray],
             index: int) -> dict[str, np.ndarray]:
    """`postprocess` before pasting: boxes `[D, 4]` in original pixels, scores, labels and
    `masks [D, 28, 28]` float32 probabilities inside each box."""
    n = int(outputs["num_detections"][index])
    h, w = (int(v) for v in batch["original_shape"][index])
    boxes = boxes_to_original(outputs["detection_boxes"][index, :n],
                              batch["image_shape"][index], (h, w))
    return {
        "boxes": boxes.astype(np.float32),
        "scores": outputs["detection_scores"][index, :n].astype(np.float32),
        "labels": outputs["detection_classes"][index, :n].astype(np.int32),
        "masks": outputs["detection_masks"][index, :n].astype(np.float32),
    }


def model_runs(
    model: MaskRCNN, images: Sequence[np.ndarray], batch_size: int = 1,
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]]:
    """Runs the model over RGB uint8 images `[h, w, 3]` (any size): yields `(outputs, batch,
    count)` per model call (`count` images; `postprocess(outputs, batch, i)` maps image i back
    to original pixels). Per-image canvases run one image at a time."""
    model.ensure_finite_weights()
    c = model.config
    per_image = c.canvas == "per_image"
    if per_image:
        batch_size = 1
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        canvas = canvas_for(*np.asarray(chunk[0]).shape[:2], c) if per_image else c.image_size
        batch = make_inference_inputs(chunk, c, canvas)
        # Per-image canvases run the shape-polymorphic graph: no rebuild or retrace per size.
        yield run_model(model, batch, dynamic=per_image), batch, len(chunk)


def predict_images(
    model: MaskRCNN, images: Sequence[np.ndarray], batch_size: int = 1,
    paste_method: str | None = None, *, tile: int | None = None,
    tile_overlap: float = DEFAULT_OVERLAP, tile_full_image: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Detections for each RGB uint8 image `[h, w, 3]` (any size), in original pixels.

    `paste_method` ("exact" / "torchvision") defaults to the config's `mask_paste`.
    `tile`: sliced inference on `tile x tile` tiles (`predict_tiled`; `batch_size` tiles per
    model call), its masks returned full size; `predict_tiled` itself keeps them as crops.
    """
    c = model.config
    paste_method = paste_method or c.mask_paste
    if tile is not None:
        return [predict_tiled(model, image, tile, tile_overlap, tile_full_image, batch_size,
                              paste_method=paste_method).as_dict(np.shape(image)[:2])
                for image in images]
    return [postprocess(outputs, batch, i, c.mask_threshold, paste_method)
            for outputs, batch, count in model_runs(model, images, batch_size)
            for i in range(count)]


def predict_tiled(
    model: MaskRCNN, image: np.ndarray, tile: int, overlap: float = DEFAULT_OVERLAP,
    full_image: bool = False, batch_size: int = 4, score_threshold: float | None = None,
    paste_method: str | None = None,
) -> Detections:
    """Sliced inference on one RGB image `[h, w, 3]`: the model on `tile x tile` tiles
    (`tiling.tile_grid`: neighbours overlap by at least `overlap * tile` pixels, edge tiles
    flush with the border), each tile resized by the model's own rule like any image; with
    `full_image`, also on the whole (downscaled) image. Detections are mapped into the image and
    merged across tiles (`tiling.merge_detections`, IoU threshold `config.nms_threshold`).

    Tiles are views of `image` (no copy); `batch_size` tiles go through the model at once.
    Detections below `score_threshold` (None: keep all the model gives) are dropped before the
    merge. Returns `tiling.Detections` (masks as crops; `.as_dict(image.shape[:2])` gives
    `predict_images`' dict).
    """
    tile, overlap = check_tiling(tile, overlap)
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be [h, w, 3] RGB, got shape {image.shape}")
    c = model.config
    paste_method = paste_method or c.mask_paste
    views = tile_grid(image.shape[:2], tile, overlap)
    parts = run_views(model, crop_tiles(image, views), views, batch_size, score_threshold,
                      paste_method)
    if full_image and len(views) > 1:
        whole = np.array([[0, 0, *image.shape[:2]]])
        parts += run_views(model, [image], whole, 1, score_threshold, paste_method)
    return merge_detections(parts, image.shape[:2], iou_threshold=c.nms_threshold)


def run_views(model: MaskRCNN, crops: Sequence[np.ndarray], views: np.ndarray, batch_size: int,
              score_threshold: float | None, paste_method: str) -> list[Detections]:
    """`tiling.tile_detections` of each image region `crops[i]` (at `views[i]` in the image)."""
    parts, start = [], 0
    for outputs, batch, count in model_runs(model, crops, batch_size):
        for i in range(count):
            det = unpasted(outputs, batch, i)
            if score_threshold is not None:
                det = {k: v[det["scores"] >= score_threshold] for k, v in det.items()}
            parts.append(tile_detections(det["boxes"], det["scores"], det["labels"], det["masks"],
                                         views[start + i], model.config.mask_threshold,
                                         paste_method))
        start += count
    return parts


def category_map(config, source=None) -> dict[int, int]:
    """Label -> category id: the config's `category_ids` when set; else the dataset's map when the
    model has the dataset's classes; else the identity (e.g. torchvision's 91-index COCO labels)."""
    if not config.category_ids and source is not None \
            and config.num_classes == source.num_classes:
        return dict(source.label_to_category_id)
    return config.label_to_category_id


def class_mismatch(config, source, mapping: dict[int, int]) -> str | None:
    """Why the model's classes, mapped to category ids by `mapping`, are not the dataset's
    categories (then the AP compares different classes), or None. Names are compared where
    both are known (case and spaces ignored)."""
    known = getattr(source, "label_to_category_id", None)
    names = getattr(source, "class_names", None)
    if not known or not names:
        return None
    dataset = {int(cid): str(names[label]) for label, cid in known.items()}
    absent = sorted({cid for cid in mapping.values() if cid not in dataset})
    if len(absent) == len(mapping):
        return (f"none of the model's {len(mapping)} classes is a category of the dataset "
                f"(model category ids {sorted(mapping.values())[:5]}..., dataset "
                f"{sorted(dataset)[:5]}...): all AP will be 0; evaluate a model trained on "
                "these classes")

    def norm(name: str) -> str:
        return name.lower().replace(" ", "").replace("_", "")

    model_names = config.class_names
    if len(model_names) != config.num_classes + 1:
        return None
    differ = [(model_names[label], dataset[cid]) for label, cid in sorted(mapping.items())
              if cid in dataset and norm(model_names[label]) != norm(dataset[cid])]
    if len(differ) > len(mapping) // 2:
        pairs = ", ".join(f"{a!r} vs {b!r}" for a, b in differ[:3])
        return (f"{len(differ)} of the model's {len(mapping)} classes have another name in the "
                f"dataset under the same category id ({pairs}): is this the model of this "
                "dataset?")
    return None


def evaluate(
    model: MaskRCNN, source, batch_size: int = 2, iou_types=("bbox", "segm"),
    max_images: int | None = None, verbose: bool = True, *, tile: int | None = None,
    tile_overlap: float = DEFAULT_OVERLAP, tile_full_image: bool = False,
) -> dict[str, dict[str, float]]:
    """COCO bbox/segm metrics of `model` on a dataset source (CocoDataset, ShapesDataset).

    Three stages overlap: reading the next images, the model, and pasting + RLE-encoding the
    previous detections (threads: decoding, the model and pycocotools release the GIL). Images
    that cannot be read are named in a warning and left out of the metrics. `tile`: sliced
    inference (`predict_tiled`, `batch_size` tiles per model call), one image at a time."""
    if tile is not None:
        check_tiling(tile, tile_overlap)
    image_ids = list(source.image_ids)[:max_images] if max_images else list(source.image_ids)
    per_chunk = 1 if tile is not None else batch_size  # tiling: batch_size tiles per call
    chunks = [image_ids[s:s + per_chunk] for s in range(0, len(image_ids), per_chunk)]
    mapping = category_map(model.config, source)
    mismatch = class_mismatch(model.config, source, mapping)
    if mismatch:
        logger.warning("evaluate: %s", mismatch)
    bad: list[int] = []
    finished = []
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as finisher:
        loading = reader.submit(read_images, source, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            ids, images, failed = loading.result()
            bad.extend(failed)
            if k + 1 < len(chunks):
                loading = reader.submit(read_images, source, chunks[k + 1])
            if tile is not None:
                for image_id, image in zip(ids, images, strict=True):
                    det = predict_tiled(model, image, tile, tile_overlap, tile_full_image,
                                        batch_size)
                    finished.append(finisher.submit(coco_records, det, image_id,
                                                    image.shape[:2], mapping))
                continue
            offset = 0
            for outputs, batch, count in model_runs(model, images, batch_size):
                finished.append(finisher.submit(coco_results, model.config, outputs, batch,
                                                ids[offset:offset + count], mapping))
                offset += count
        results = [r for future in finished for r in future.result()]
    if bad:
        logger.warning("evaluate: %d of %d images could not be read and were left out",
                       len(bad), len(image_ids))
    kept = [i for i in image_ids if i not in set(bad)]
    if not kept:
        raise ValueError("evaluate: none of the images could be read (see the warnings)")
    return evaluate_coco(source.coco, results, iou_types=iou_types, image_ids=kept,
                         verbose=verbose)


def read_images(source, image_ids: Sequence[int]) -> tuple[list[int], list[np.ndarray], list[int]]:
    """(ids read, their RGB images, ids that could not be read: each named in a warning)."""
    ids, images, bad = [], [], []
    for image_id in image_ids:
        try:
            images.append(source.load_image(image_id))
            ids.append(image_id)
        except BadImageError as err:
            logger.warning("evaluate: skipping %s", err)
            bad.append(image_id)
    return ids, images, bad


def coco_results(config, outputs: dict[str, np.ndarray], batch: dict[str, np.ndarray],
                 image_ids: Sequence[int], mapping: dict[int, int]) -> list[dict]:
    """COCO result dicts (boxes and RLE masks in original pixels) of one model call."""
    results = []
    for i, image_id in enumerate(image_ids):
        det = postprocess(outputs, batch, i, config.mask_threshold, config.mask_paste)
        results.extend(detections_to_coco_results(
            image_id, det["boxes"], det["scores"], det["labels"], mapping, masks=det["masks"]))
    return results
