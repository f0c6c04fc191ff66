"""COCO AP of whole-image against sliced inference on large images with small objects.

    python benchmarks/tiled_inference.py --images 2 --train-steps 300
    python benchmarks/tiled_inference.py --model runs/shapes --images 4

The images are generated (`data.ScatteredShapesDataset`): 20-40 shapes of 20-40 px on each
4000 x 3000 canvas. The model is the `shapes` preset (128 x 128 input; it learns shapes of
15-45 px), trained here for `--train-steps` on the 128-px shapes set unless `--model DIR` names
a model directory. Whole-image inference resizes a 4000 x 3000 image to 128 x 96, where the
shapes are under 1.3 px; sliced inference (`--tile 128`, `--tile-overlap 0.35`: 45 px of
overlap, more than the largest shape) sees them at full size. Prints COCO AP / AP50 / AR100
(pycocotools, bbox and segm) and the seconds of each pass.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import ScatteredShapesDataset, ShapesDataset
from keras_maskrcnn.inference import evaluate
from keras_maskrcnn.saving import load_model_dir
from keras_maskrcnn.training import train


def trained_model(args, scratch: Path):
    if args.model:
        return load_model_dir(args.model)
    directory = Path(args.save_model) if args.save_model else scratch / "model"
    start = time.time()
    train(get_config("shapes", warmup_steps=20),
          ShapesDataset(num_images=2000, image_size=128, seed=0), directory,
          max_steps=args.train_steps, steps_per_epoch=args.train_steps, batch_size=8, seed=0,
          overwrite=True, print_fn=lambda line: None)
    print(f"trained the shapes preset {args.train_steps} steps in {time.time() - start:.0f} s "
          f"({directory})")
    return load_model_dir(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a shapes model directory (default: train one)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--save-model", help="where to keep the trained model")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--tile-overlap", type=float, default=0.35)
    parser.add_argument("--batch-size", type=int, default=16, help="tiles per model call")
    parser.add_argument("--full-image", action="store_true",
                        help="also report sliced + the whole-image pass (--tile-full-image)")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    source = ScatteredShapesDataset(args.images, image_size=(args.height, args.width), seed=11,
                                    min_shapes=20, max_shapes=40, min_side=20, max_side=40)
    runs = {"whole image": {}, f"sliced {args.tile} px, overlap {args.tile_overlap}":
            {"tile": args.tile, "tile_overlap": args.tile_overlap}}
    if args.full_image:
        runs["sliced + whole image"] = {"tile": args.tile, "tile_overlap": args.tile_overlap,
                                        "tile_full_image": True}
    with tempfile.TemporaryDirectory() as scratch:
        model = trained_model(args, Path(scratch))
        print(f"{args.images} images of {args.width} x {args.height}, "
              f"{len(source.coco.getAnnIds())} shapes of 20-40 px")
        results = {}
        for name, options in runs.items():
            start = time.time()
            metrics = evaluate(model, source, batch_size=args.batch_size, verbose=False,
                               **options)
            seconds = time.time() - start
            results[name] = {"seconds": round(seconds, 1), **{
                t: {k: round(m[k], 4) for k in ("AP", "AP50", "AR100")}
                for t, m in metrics.items()}}
            row = "  ".join(f"{t} AP {m['AP']:.3f} AP50 {m['AP50']:.3f} AR100 {m['AR100']:.3f}"
                            for t, m in metrics.items())
            print(f"{name:>32}: {row}  ({seconds:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
