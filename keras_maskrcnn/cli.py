"""The `keras-maskrcnn` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

SHAPES_TRAIN_SEED = 0
SHAPES_VAL_SEED = 1
DEMO_EPOCHS = 12
DEMO_STEPS = 100
DEMO_OUTPUT = "runs/shapes"

# Modules that add their own subcommands: each has `add_subcommand(subparsers)` registering a
# parser whose `func(args) -> int` runs it.
_SUBCOMMAND_MODULES = ("keras_maskrcnn.export.cli", "keras_maskrcnn.convert.cli")

logger = logging.getLogger("keras_maskrcnn")


def _dataset_source(args, split: str):
    """The dataset source named by --dataset (shapes: generated; coco: from files)."""
    if args.dataset == "shapes":
        from keras_maskrcnn.data import ShapesDataset

        seed = SHAPES_TRAIN_SEED if split == "train" else SHAPES_VAL_SEED
        count = args.shapes_train_images if split == "train" else args.shapes_val_images
        return ShapesDataset(num_images=count, image_size=args.shapes_image_size, seed=seed)
    annotations, images = args.annotations, args.images
    if split == "val":
        annotations = getattr(args, "val_annotations", None) or annotations
        images = getattr(args, "val_images", None) or images
    if not annotations or not images:
        raise SystemExit(
            "--dataset coco needs --annotations A.json and --images DIR "
            "(and optionally --val-annotations/--val-images for validation)")
    from keras_maskrcnn.data import CocoDataset

    return CocoDataset(annotations, images)


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=("shapes", "coco"), default="shapes",
                   help="'shapes': the built-in generated set; 'coco': COCO-format files")
    p.add_argument("--annotations", help="COCO instances JSON (with --dataset coco)")
    p.add_argument("--images", help="folder of the images named in --annotations")
    p.add_argument("--shapes-train-images", type=int, default=2000)
    p.add_argument("--shapes-val-images", type=int, default=100)
    p.add_argument("--shapes-image-size", type=int, default=128)


def _config_for(args, source):
    from keras_maskrcnn.config import get_config

    default = "shapes" if args.dataset == "shapes" else "coco_r50_fpn"
    config = get_config(args.config or default)
    names = tuple(source.class_names)
    ids = tuple(int(source.label_to_category_id[k]) for k in range(1, source.num_classes + 1))
    if (config.num_classes, tuple(config.class_names), config.category_ids) != (
            source.num_classes, names, ids):
        config = config.replace(num_classes=source.num_classes, class_names=names,
                                category_ids=ids)
    return config


def _ensure_custom_op() -> None:
    """Builds the compiled RoIAlign op once if a compiler is present (training is several times
    faster with it); falls back to the pure-TF path otherwise, saying so."""
    from keras_maskrcnn.ops import custom_roi_align

    if custom_roi_align.is_available() or os.environ.get("KERAS_MASKRCNN_DISABLE_CUSTOM_OP"):
        return
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        logger.warning("no C++ compiler: training with the (slower) pure-TF RoIAlign")
        return
    logger.info("building the RoIAlign custom op once (about 20-60 s)")
    try:
        custom_roi_align.build(verbose=False)
        custom_roi_align._reset_cache()
    except Exception as err:  # noqa: BLE001 - any build failure falls back to pure TF
        logger.warning("custom op build failed (%s); using the pure-TF RoIAlign", err)
    logger.info("RoIAlign implementation: %s", custom_roi_align.implementation_in_use())


def cmd_train(args) -> int:
    from keras_maskrcnn.data import make_dataset
    from keras_maskrcnn.training import train

    _ensure_custom_op()
    demo = args.epochs is None and args.steps_per_epoch is None and args.dataset == "shapes"
    epochs = args.epochs or DEMO_EPOCHS
    steps = args.steps_per_epoch or (DEMO_STEPS if args.dataset == "shapes" else None)
    output = Path(args.output or DEMO_OUTPUT)
    source = _dataset_source(args, "train")
    config = _config_for(args, source)
    batch_size = args.batch_size or config.batch_size
    data = make_dataset(
        source, canvas_size=config.image_size, min_size=config.min_size,
        max_size=config.max_size, train_min_sizes=config.train_min_sizes or None,
        horizontal_flip=config.horizontal_flip, max_instances=config.max_instances,
        mask_size=config.gt_mask_size, batch_size=batch_size, shuffle=True, repeat=True,
        seed=args.seed, drop_remainder=True)
    start = time.time()
    model, history = train(config, data, output, epochs=epochs, steps_per_epoch=steps,
                           batch_size=batch_size, verbose=args.verbose)
    seconds = time.time() - start
    (output / "history.json").write_text(json.dumps(
        {k: [float(x) for x in v] for k, v in history.history.items()}, indent=2))
    print(f"trained {epochs} epochs in {seconds:.0f} s; model directory: {output}")
    if demo or args.evaluate:
        val = _dataset_source(args, "val")
        from keras_maskrcnn.evaluation import save_metrics_json
        from keras_maskrcnn.inference import evaluate, predict_files

        metrics = evaluate(model, val)
        save_metrics_json(metrics, output / "metrics.json")
        print(json.dumps({t: {k: round(m[k], 4) for k in ("AP", "AP50", "AP75")}
                          for t, m in metrics.items()}))
        if args.dataset == "shapes":
            sample_dir = output / "val_images"
            sample_dir.mkdir(exist_ok=True)
            paths = []
            for image_id in list(val.image_ids)[:4]:
                from keras_maskrcnn.visualize import save_image

                path = sample_dir / val.file_name(image_id)
                save_image(val.load_image(image_id), path)
                paths.append(path)
            predict_files(model, paths, output / "predictions", config.class_names)
            print(f"predictions drawn in {output / 'predictions'}")
    return 0


def cmd_evaluate(args) -> int:
    from keras_maskrcnn.evaluation import save_metrics_json
    from keras_maskrcnn.inference import evaluate
    from keras_maskrcnn.model import load_model_dir

    model = load_model_dir(args.model)
    source = _dataset_source(args, "val")
    metrics = evaluate(model, source, batch_size=args.batch_size, max_images=args.max_images)
    if args.json:
        save_metrics_json(metrics, args.json)
    print(json.dumps({t: {k: round(m[k], 4) for k in ("AP", "AP50", "AP75")}
                      for t, m in metrics.items()}))
    return 0


def cmd_predict(args) -> int:
    from keras_maskrcnn.inference import predict_files
    from keras_maskrcnn.model import load_model_dir

    model = load_model_dir(args.model)
    records = predict_files(model, args.images, args.output,
                            score_threshold=args.score_threshold)
    print(f"{len(records)} detections on {len(args.images)} images written to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keras-maskrcnn", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model; writes a model directory")
    _add_dataset_args(p)
    p.add_argument("--val-annotations")
    p.add_argument("--val-images")
    p.add_argument("--config", help="preset name (shapes, coco_r50_fpn, ...) or config JSON")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--output", help=f"model directory to write (default {DEMO_OUTPUT})")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the val split after")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity (0, 1, 2)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="COCO bbox/segm AP of a model directory")
    _add_dataset_args(p)
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--json", help="write the metrics here")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-images", type=int)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="draw detections and write predictions.json")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.set_defaults(func=cmd_predict)

    for module_name in _SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_subcommand(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
