"""Runs an exported keras-maskrcnn .tflite model on one image with LiteRT, numpy and Pillow only.

No TensorFlow and no keras_maskrcnn are imported: this is what an edge device runs.

    pip install ai-edge-litert numpy pillow
    keras-maskrcnn export --model runs/shapes --format tflite --output shapes.tflite --input-size 128
    python examples/tflite_predict.py shapes.tflite photo.jpg --output photo_pred.png

Steps: letterbox the image onto the model's canvas, run its signature, map the boxes back to
original pixels (per axis: original / resized size, clipped), paste each 28 x 28 mask into the
image (bilinear read of the mask at every pixel centre, as Detectron2 pastes), threshold, and draw
boxes, masks and labels. Two kinds of models (the `<model>.tflite.json` sidecar that
`export_tflite` writes says which; --metadata names another):

- one canvas H x W (`--input-size S` or `H W`), signature `serving_default`: the "fit" rule,
  scale = min(H / h, W / w) in Python floats (a square S canvas: the long side to S);
- canvas buckets (`--buckets auto|HxW,...`), one signature `canvas_<H>x<W>` per canvas: the
  model's own resize rule (scale = min(min_size / short side, max_size / long side), the
  sidecar's `min_size` / `max_size`) and the smallest-area canvas that holds the resized image.

Either way the size is floor(side * scale), the resize bilinear with half-pixel centres and no
antialias, the image top-left, zeros bottom/right. Class names and the mask threshold come from
the sidecar (without it labels read "class_<k>").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image, ImageDraw

SIGNATURE = "serving_default"
PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
                    (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)], np.uint8)


# ---------------------------------------------------------------------------- letterbox
def resized_shape(height: int, width: int, min_size: float,
                  max_size: float | None = None) -> tuple[int, int]:
    """(h', w') of the resize rule: scale = min(min_size / short side, max_size / long side)
    in Python floats, floor (max_size defaults to min_size: the long side to it)."""
    max_size = min_size if max_size is None else max_size
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(math.floor(height * scale), 1), max(math.floor(width * scale), 1)


def fit_sizes(height: int, width: int, canvas: tuple[int, int]) -> tuple[int, int]:
    """(min_size, max_size) whose rule gives the "fit" scale min(H / h, W / w) on `canvas`."""
    short, long = min(canvas), max(canvas)
    if canvas[0] == canvas[1] or height == width or (height < width) == (canvas[0] < canvas[1]):
        return short, long
    return short, short


def _axis_taps(in_size: int, out_size: int):
    """Source rows (low, high) and weight of `high` for bilinear, half-pixel centres."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(src)
    low = np.clip(floor.astype(np.int64), 0, in_size - 1)
    high = np.clip(np.ceil(src).astype(np.int64), 0, in_size - 1)
    return low, high, (src - floor).astype(np.float32)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w, 3] -> [height, width, 3] float32; bilinear, half-pixel centres, no antialias."""
    image = image.astype(np.float32)
    y0, y1, fy = _axis_taps(image.shape[0], height)
    x0, x1, fx = _axis_taps(image.shape[1], width)
    fx = fx[None, :, None]
    top = image[y0][:, x0] + (image[y0][:, x1] - image[y0][:, x0]) * fx
    bottom = image[y1][:, x0] + (image[y1][:, x1] - image[y1][:, x0]) * fx
    return top + (bottom - top) * fy[:, None, None]


def letterbox(image: np.ndarray, size, rule: tuple[float, float] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """RGB [h, w, 3] -> (canvas [1, H, W, 3] float32 0..255, image_shape [1, 2] float32).

    `size`: S (an S x S canvas) or (H, W). `rule`: (min_size, max_size) of the model's resize
    rule (bucketed models), or None for the "fit" rule of a one-canvas model.
    """
    canvas_hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    min_size, max_size = rule or fit_sizes(image.shape[0], image.shape[1], canvas_hw)
    new_h, new_w = resized_shape(image.shape[0], image.shape[1], min_size, max_size)
    if new_h > canvas_hw[0] or new_w > canvas_hw[1]:
        raise ValueError(f"the resized image {new_h} x {new_w} does not fit the canvas "
                         f"{canvas_hw[0]} x {canvas_hw[1]}")
    canvas = np.zeros((1, *canvas_hw, 3), np.float32)
    canvas[0, :new_h, :new_w] = resize_bilinear(image, new_h, new_w)
    return canvas, np.array([[new_h, new_w]], np.float32)


def choose_signature(image: np.ndarray, meta: dict) -> tuple[str, tuple[float, float] | None]:
    """(signature key, resize rule) for the image: `serving_default` and the fit rule for a
    one-canvas model; for a bucketed one the smallest canvas holding the resized image."""
    if meta.get("resize") != "min_max":
        return SIGNATURE, None
    rule = (meta["min_size"], meta["max_size"])
    h, w = resized_shape(image.shape[0], image.shape[1], *rule)
    fitting = [(c[0] * c[1], c[0], c[1], key) for key, c in meta["signatures"].items()
               if c[0] >= h and c[1] >= w]
    if not fitting:
        raise ValueError(f"the resized image {h} x {w} fits none of the model's canvases "
                         f"{sorted(meta['signatures'].values())}")
    return min(fitting)[3], rule


# ---------------------------------------------------------------------------- masks
def _paste_weights(start: float, end: float, mask_size: int, count: int) -> np.ndarray:
    """[count, mask_size] weights: pixel centre i reads mask coordinate
    (i + 0.5 - start) / (end - start) * mask_size - 0.5 bilinearly, zeros outside the mask."""
    weights = np.zeros((count, mask_size), np.float32)
    extent = np.float32(end) - np.float32(start)
    if not extent > 0:
        return weights
    centres = np.arange(count, dtype=np.float32) + np.float32(0.5)
    coord = (centres - np.float32(start)) / extent * np.float32(mask_size) - np.float32(0.5)
    low = np.floor(coord)
    frac = (coord - low).astype(np.float32)
    low = low.astype(np.int64)
    rows = np.arange(count)
    for index, weight in ((low, 1.0 - frac), (low + 1, frac)):
        ok = (index >= 0) & (index < mask_size)
        weights[rows[ok], index[ok]] += weight[ok]
    return weights


def paste_mask(mask: np.ndarray, box: np.ndarray, height: int, width: int,
               threshold: float) -> np.ndarray:
    """One [P, P] probability mask inside `box` (y1, x1, y2, x2) -> [height, width] bool."""
    wy = _paste_weights(box[0], box[2], mask.shape[0], height)
    wx = _paste_weights(box[1], box[3], mask.shape[1], width)
    return (wy @ mask.astype(np.float32) @ wx.T) >= threshold


# ---------------------------------------------------------------------------- model
def predict(runner, image: np.ndarray, mask_threshold: float = 0.5,
            rule: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Detections of one RGB image in original pixels: boxes [N, 4] (y1, x1, y2, x2),
    scores [N], labels [N] int32, masks [N, h, w] uint8. `rule`: see `letterbox`."""
    shape = runner.get_input_details()["images"]["shape"]
    canvas, image_shape = letterbox(image, (int(shape[1]), int(shape[2])), rule)
    out = runner(images=canvas, image_shape=image_shape)
    n = int(out["num_detections"][0])
    h, w = image.shape[:2]
    ratio = np.array([h, w, h, w], np.float32) / np.tile(image_shape[0], 2)
    boxes = np.clip(out["detection_boxes"][0, :n] * ratio, 0, np.array([h, w, h, w], np.float32))
    masks = np.stack([paste_mask(m, b, h, w, mask_threshold)
                      for m, b in zip(out["detection_masks"][0, :n], boxes, strict=True)]
                     ) if n else np.zeros((0, h, w), bool)
    return {"boxes": boxes.astype(np.float32), "scores": out["detection_scores"][0, :n],
            "labels": out["detection_classes"][0, :n].astype(np.int32),
            "masks": masks.astype(np.uint8)}


def draw(image: np.ndarray, det: dict[str, np.ndarray], class_names: list[str]) -> Image.Image:
    """Masks blended at 50 %, boxes and "name score" labels drawn on a copy of the image."""
    canvas = image.astype(np.float32)
    for k, (mask, label) in enumerate(zip(det["masks"], det["labels"], strict=True)):
        color = PALETTE[(int(label) + k) % len(PALETTE)].astype(np.float32)
        canvas[mask > 0] = 0.5 * canvas[mask > 0] + 0.5 * color
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(picture)
    for k, (box, label, score) in enumerate(zip(det["boxes"], det["labels"], det["scores"],
                                                strict=True)):
        color = tuple(int(c) for c in PALETTE[(int(label) + k) % len(PALETTE)])
        y1, x1, y2, x2 = (float(v) for v in box)
        pen.rectangle([x1, y1, x2, y2], outline=color, width=2)
        name = class_names[label] if 0 <= label < len(class_names) else f"class_{label}"
        pen.text((x1 + 2, max(y1 - 11, 0)), f"{name} {score:.2f}", fill=color)
    return picture


def _metadata(model_path: Path, metadata_path: str | None) -> dict:
    path = Path(metadata_path) if metadata_path else model_path.with_name(model_path.name + ".json")
    return json.loads(path.read_text()) if path.exists() else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help=".tflite file written by `keras-maskrcnn export`")
    parser.add_argument("image", help="image file (JPEG, PNG, ...)")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--metadata", help="sidecar JSON (default: <model>.json)")
    parser.add_argument("--save-npz", help="also write boxes/scores/labels/masks to this .npz")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    model_path = Path(args.model)
    meta = _metadata(model_path, args.metadata)
    interpreter = Interpreter(model_path=str(model_path), num_threads=args.threads)
    image = np.asarray(Image.open(args.image).convert("RGB"))
    signature, rule = choose_signature(image, meta)
    runner = interpreter.get_signature_runner(signature)
    det = predict(runner, image, float(meta.get("mask_threshold", 0.5)), rule)
    keep = det["scores"] >= args.score_threshold
    det = {k: v[keep] for k, v in det.items()}
    names = list(meta.get("class_names", []))
    draw(image, det, names).save(args.output)
    if args.save_npz:
        np.savez(args.save_npz, **det)
    for box, label, score in zip(det["boxes"], det["labels"], det["scores"], strict=True):
        name = names[label] if 0 <= label < len(names) else f"class_{label}"
        print(f"{name:>12s} {score:.3f}  y1={box[0]:.1f} x1={box[1]:.1f} "
              f"y2={box[2]:.1f} x2={box[3]:.1f}")
    print(f"{len(det['scores'])} detections drawn in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
