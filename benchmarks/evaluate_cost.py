"""Cost of evaluating photos of mixed sizes with a per-image canvas (torchvision presets):
`inference.evaluate` (reading, resizing, the model, mask pasting, COCOeval) against the pure
model time of the same images, in one run.

    python benchmarks/evaluate_cost.py --images 100 --min-size 320 --max-size 512

The photos are crops of the ten COCO photos in tests/data at random sizes (every one a
different canvas); random weights. Before the shape-polymorphic graph, each new canvas cost a
model rebuild and a retrace.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import CocoDataset, make_inference_inputs
from keras_maskrcnn.inference import evaluate, run_model
from keras_maskrcnn.runtime import cpu_model
from keras_maskrcnn.transform import canvas_for

COCO10 = Path(__file__).resolve().parents[1] / "tests" / "data" / "coco-val2017-10"


def mixed_size_dataset(folder: Path, count: int, seed: int = 0) -> CocoDataset:
    rng = np.random.default_rng(seed)
    data = json.loads((COCO10 / "annotations.json").read_text())
    photos = [np.asarray(Image.open(COCO10 / "images" / i["file_name"]).convert("RGB"))
              for i in data["images"]]
    images = []
    for k in range(count):
        photo = photos[k % len(photos)]
        h, w = int(rng.integers(200, photo.shape[0] + 1)), int(rng.integers(200, photo.shape[1] + 1))
        crop = photo[:h, :w]
        name = f"{k:04d}.jpg"
        Image.fromarray(crop).save(folder / name, quality=92)
        images.append({"id": k + 1, "file_name": name, "height": h, "width": w})
    ann = {"images": images, "annotations": [], "categories": data["categories"]}
    (folder / "annotations.json").write_text(json.dumps(ann))
    return CocoDataset(folder / "annotations.json", folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        source = mixed_size_dataset(Path(scratch), args.images)
        config = get_config("torchvision_r50_fpn", min_size=args.min_size,
                            max_size=args.max_size, num_classes=80)
        model = build_model(config)
        images = [source.load_image(i) for i in source.image_ids]
        canvases = {canvas_for(*im.shape[:2], config) for im in images}
        batches = [make_inference_inputs([im], config, canvas_for(*im.shape[:2], config))
                   for im in images]
        start = time.perf_counter()
        run_model(model, batches[0], dynamic=True)
        trace = time.perf_counter() - start
        start = time.perf_counter()
        for batch in batches:
            run_model(model, batch, dynamic=True)
        pure = time.perf_counter() - start
        start = time.perf_counter()
        evaluate(model, source, batch_size=1, verbose=False)
        full = time.perf_counter() - start
    print(f"CPU: {cpu_model()}; {args.images} photos, {len(canvases)} distinct canvases, "
          f"{args.min_size}/{args.max_size}")
    print(f"first call (trace) {trace:.1f} s; pure model {pure:.1f} s "
          f"({pure / args.images:.3f} s/image); evaluate {full:.1f} s; "
          f"evaluate / pure = {full / pure:.2f}")


if __name__ == "__main__":
    main()
