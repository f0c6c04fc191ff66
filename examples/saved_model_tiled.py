"""Sliced inference with an exported SavedModel: tiles cut on the client, the model's
`serving_default` signature on batches of tiles, and the tiles' detections merged with the same
functions as `keras-maskrcnn predict --tile` (`keras_maskrcnn.tiling`).

    keras-maskrcnn export --model runs/shapes --format saved_model --output serving/1
    python examples/saved_model_tiled.py serving/1 big_photo.png --tile 128 --tile-overlap 0.3 \\
        --output detections.json

`serving_default` takes `images [B, S, S, 3]` uint8 and returns boxes in the pixels of each
tile, scores, classes, `num_detections` and the 28 x 28 mask probabilities in each box
(`keras_maskrcnn.export.saved_model`); `tiling.tile_detections` moves them into the image and
`tiling.merge_detections` removes the duplicates across tile borders. The mask threshold, paste
rule and NMS threshold come from the export's `assets.extra/config.json`.

Writes COCO-style records (`bbox` [x, y, w, h] in image pixels, `score`, `category_id` =
the model's label, `segmentation` as compressed RLE) to `--output`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

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


def load_export_config(saved_model_dir: str | Path) -> dict:
    """The model config the SavedModel was exported with (`assets.extra/config.json`)."""
    path = Path(saved_model_dir) / "assets.extra" / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {saved_model_dir} a keras-maskrcnn "
                                "SavedModel export?")
    return json.loads(path.read_text())


def tiled_detections(serve, image: np.ndarray, tile: int, overlap: float, config: dict,
                     batch_size: int = 8, score_threshold: float = 0.0) -> Detections:
    """Runs `serve` (the `serving_default` signature) on the tiles of `image [h, w, 3]` uint8
    and merges their detections (`tiling.merge_detections`); detections below
    `score_threshold` are dropped before the merge, as `inference.predict_tiled` does."""
    check_tiling(tile, overlap)
    views = tile_grid(image.shape[:2], tile, overlap)
    tiles = crop_tiles(image, views)  # views of `image`; one batch copied at a time
    parts = []
    for start in range(0, len(tiles), batch_size):
        batch = np.stack(tiles[start:start + batch_size]).astype(np.uint8)
        out = {k: v.numpy() for k, v in serve(images=tf.constant(batch)).items()}
        for i in range(len(batch)):
            n = int(out["num_detections"][i])
            keep = out["detection_scores"][i, :n] >= score_threshold
            parts.append(tile_detections(
                out["detection_boxes"][i, :n][keep], out["detection_scores"][i, :n][keep],
                out["detection_classes"][i, :n][keep], out["detection_masks"][i, :n][keep],
                views[start + i], config.get("mask_threshold", 0.5),
                config.get("mask_paste", "exact")))
    return merge_detections(parts, image.shape[:2],
                            iou_threshold=config.get("nms_threshold", 0.5))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("saved_model", help="SavedModel directory (keras-maskrcnn export)")
    parser.add_argument("image", help="an RGB image file")
    parser.add_argument("--tile", type=int, required=True, help="tile side S in image pixels")
    parser.add_argument("--tile-overlap", type=float, default=DEFAULT_OVERLAP)
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per request")
    parser.add_argument("--score-threshold", type=float, default=0.0)
    parser.add_argument("--output", default="detections.json")
    args = parser.parse_args(argv)
    config = load_export_config(args.saved_model)
    serve = tf.saved_model.load(args.saved_model).signatures["serving_default"]
    image = np.asarray(Image.open(args.image).convert("RGB"), np.uint8)
    try:
        det = tiled_detections(serve, image, args.tile, args.tile_overlap, config,
                               args.batch_size, args.score_threshold)
    except ValueError as err:
        print(f"saved_model_tiled: error: {err}", file=sys.stderr)
        return 2
    labels = {k: k for k in range(1, int(config["num_classes"]) + 1)}
    records = coco_records(det, 0, image.shape[:2], labels)
    for record in records:
        record.pop("image_id")
    Path(args.output).write_text(json.dumps(records))
    tiles = len(tile_grid(image.shape[:2], args.tile, args.tile_overlap))
    print(f"{len(records)} detections on {tiles} tiles of {Path(args.image).name} written to "
          f"{args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
