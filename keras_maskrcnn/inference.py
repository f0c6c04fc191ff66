"""Python API for inference: predict on images, evaluate on a dataset, write predictions.

The model works on the padded canvas; these functions map its padded outputs back to each
original image: boxes rescaled per axis (original size / resized size, as torchvision does), masks
pasted into the original image and thresholded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_maskrcnn.data.coco import load_rgb_image
from keras_maskrcnn.data.pipeline import compute_resized_shape, make_inference_inputs
from keras_maskrcnn.evaluation import detections_to_coco_results, evaluate_coco
from keras_maskrcnn.model import INFERENCE_INPUTS, MaskRCNN
from keras_maskrcnn.ops.masks import paste_masks
from keras_maskrcnn.visualize import draw_detections, save_image

logger = logging.getLogger("keras_maskrcnn")


def _inference_fn(model: MaskRCNN):
    fn = getattr(model, "_kmr_inference_fn", None)
    if fn is None:
        fn = tf.function(lambda inputs: model.inference_model(inputs, training=False))
        model._kmr_inference_fn = fn
    return fn


def run_model(model: MaskRCNN, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs the inference graph on a prepared batch (`make_inference_inputs`) -> numpy dict."""
    outputs = _inference_fn(model)({k: tf.convert_to_tensor(batch[k]) for k in INFERENCE_INPUTS})
    return {k: v.numpy() for k, v in outputs.items()}


def postprocess(
    outputs: dict[str, np.ndarray], batch: dict[str, np.ndarray], index: int,
    mask_threshold: float = 0.5, paste_method: str = "exact",
) -> dict[str, np.ndarray]:
    """One image's detections in original pixels.

    Returns dict: `boxes [D, 4]` float32 (y1, x1, y2, x2) original pixels, `scores [D]`,
    `labels [D]` int32 (1..K), `masks [D, h, w]` uint8 (0/1) pasted into the original image.
    """
    n = int(outputs["num_detections"][index])
    h, w = (int(v) for v in batch["original_shape"][index])
    resized_h, resized_w = batch["image_shape"][index]
    ratio = np.array([h / resized_h, w / resized_w, h / resized_h, w / resized_w], np.float32)
    boxes = outputs["detection_boxes"][index, :n] * ratio
    boxes = np.clip(boxes, 0.0, np.array([h, w, h, w], np.float32))
    masks = paste_masks(outputs["detection_masks"][index, :n], boxes, (h, w),
                        threshold=mask_threshold, method=paste_method)
    return {
        "boxes": boxes.astype(np.float32),
        "scores": outputs["detection_scores"][index, :n].astype(np.float32),
        "labels": outputs["detection_classes"][index, :n].astype(np.int32),
        "masks": masks.astype(np.uint8),
    }


def predict_images(
    model: MaskRCNN, images: Sequence[np.ndarray], batch_size: int = 1,
    paste_method: str | None = None,
) -> list[dict[str, np.ndarray]]:
    """Detections for each RGB uint8 image `[h, w, 3]` (any size), in original pixels.

    `paste_method` ("exact" / "torchvision") defaults to the config's `mask_paste`.
    """
    c = model.config
    paste_method = paste_method or c.mask_paste
    if c.canvas == "per_image":
        batch_size = 1
    results = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        runner = model
        canvas = c.image_size
        if c.canvas == "per_image":
            h, w = np.asarray(chunk[0]).shape[:2]
            canvas = tuple(-(-s // 32) * 32 for s in compute_resized_shape(h, w, c.min_size,
                                                                          c.max_size))
            runner = model_for_canvas(model, canvas)
        batch = make_inference_inputs(chunk, canvas, c.min_size, c.max_size)
        outputs = run_model(runner, batch)
        results.extend(postprocess(outputs, batch, i, c.mask_threshold, paste_method)
                       for i in range(len(chunk)))
    return results


def model_for_canvas(model: MaskRCNN, canvas: tuple[int, int]) -> MaskRCNN:
    """`model` rebuilt on another canvas (anchors are constants of the canvas) with the same
    weights; cached on `model` per canvas size."""
    canvas = (int(canvas[0]), int(canvas[1]))
    if canvas == tuple(model.config.image_size):
        return model
    cache = model.__dict__.setdefault("_kmr_canvas_models", {})
    if canvas not in cache:
        c = model.config
        config = c.replace(image_size=canvas, min_size=min(c.min_size, min(canvas)),
                           max_size=min(c.max_size, max(canvas)))
        other = MaskRCNN(config, roi_align_implementation=model.roi_align_implementation)
        other.inference_model.set_weights(model.inference_model.get_weights())
        cache[canvas] = other
    return cache[canvas]


def category_map(config, source=None) -> dict[int, int]:
    """Label -> category id: the config's `category_ids` when set; else the dataset's map when the
    model has the dataset's classes; else the identity (e.g. torchvision's 91-index COCO labels)."""
    if not config.category_ids and source is not None \
            and config.num_classes == source.num_classes:
        return dict(source.label_to_category_id)
    return config.label_to_category_id


def evaluate(
    model: MaskRCNN, source, batch_size: int = 2, iou_types=("bbox", "segm"),
    max_images: int | None = None, verbose: bool = True,
) -> dict[str, dict[str, float]]:
    """COCO bbox/segm metrics of `model` on a dataset source (CocoDataset, ShapesDataset)."""
    image_ids = list(source.image_ids)[:max_images] if max_images else list(source.image_ids)
    mapping = category_map(model.config, source)
    results: list[dict] = []
    for start in range(0, len(image_ids), batch_size):
        ids = image_ids[start:start + batch_size]
        images = [source.load_image(i) for i in ids]
        for image_id, det in zip(ids, predict_images(model, images, batch_size), strict=True):
            results.extend(detections_to_coco_results(
                image_id, det["boxes"], det["scores"], det["labels"],
                mapping, masks=det["masks"]))
    return evaluate_coco(source.coco, results, iou_types=iou_types, image_ids=image_ids,
                         verbose=verbose)


def predict_files(
    model: MaskRCNN, paths: Sequence[str | Path], output_dir: str | Path,
    class_names: Sequence[str] | None = None, score_threshold: float = 0.5,
    label_to_category_id: dict[int, int] | None = None,
) -> list[dict]:
    """Predicts each image file, writes `<stem>.png` drawings and `predictions.json`.

    `predictions.json` lists COCO-style records: `file_name`, `category_id`, `bbox` [x, y, w, h]
    in original pixels, `score`, `segmentation` (COCO RLE). Detections below `score_threshold`
    are left out of both. Returns the records.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = list(class_names or model.config.class_names
                 or ["background", *(f"class_{i}" for i in range(1, model.config.num_classes + 1))])
    mapping = label_to_category_id or category_map(model.config)
    records: list[dict] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"image not found: {path}")
        image = load_rgb_image(path)
        det = predict_images(model, [image])[0]
        keep = det["scores"] >= score_threshold
        det = {k: v[keep] for k, v in det.items()}
        drawing = draw_detections(image, det["boxes"], det["labels"], det["scores"],
                                  det["masks"], names)
        save_image(drawing, output_dir / f"{path.stem}.png")
        for record in detections_to_coco_results(0, det["boxes"], det["scores"], det["labels"],
                                                 mapping, masks=det["masks"]):
            record.pop("image_id")
            records.append({"file_name": path.name, **record})
    with open(output_dir / "predictions.json", "w") as f:
        json.dump(records, f)
    logger.info("wrote %d detections for %d images to %s", len(records), len(paths), output_dir)
    return records
