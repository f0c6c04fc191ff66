"""The `keras-maskrcnn` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

from keras_maskrcnn.data.images import DEFAULT_MAX_IMAGE_PIXELS

SHAPES_TRAIN_SEED = 0
SHAPES_VAL_SEED = 1
DEMO_EPOCHS = 12
DEMO_STEPS = 100
DEMO_OUTPUT = "runs/shapes"
DEFAULT_EPOCHS = 12

# Modules that add their own subcommands: each has `add_subcommand(subparsers)` registering a
# parser whose `func(args) -> int` runs it.
_SUBCOMMAND_MODULES = ("keras_maskrcnn.export.cli", "keras_maskrcnn.convert.cli",
                       "keras_maskrcnn.data.cli")

logger = logging.getLogger("keras_maskrcnn")

# Library messages name the Python argument to change, in backticks: `max_image_pixels`, or with
# a value, `overwrite=True`, `strategy='multi_worker'`. The command line shows its flags there
# instead (`flag_wording`), in the one-line errors of `main` and in log lines (`FlagWording`).
ARGUMENT_FLAGS = {
    "batch_size": "--batch-size",
    "buckets": "--buckets",
    "categories": "--categories",
    "config": "--config",
    "empty_segmentation": "--empty-segmentation",
    "fmt": "--from",
    "images_dir": "--images",
    "init_from": "--init-from",
    "input_size": "--input-size",
    "label_key": "--label-key",
    "max_image_pixels": "--max-image-pixels",
    "max_steps": "--max-steps",
    "output_dir": "--output",
    "overwrite": "--overwrite",
    "precision": "--precision",
    "seed": "--seed",
    "skip_bad_images": "--skip-bad-images",
    "source.images_dir": "--images",
    "steps_per_epoch": "--steps-per-epoch",
    "strategy": "--strategy",
    "val_source.images_dir": "--val-images",
}
# Library calls a message asks for, as the command that does the same.
CALL_COMMANDS = {
    "convert_pretrained": "keras-maskrcnn convert torchvision --weights {}",
}
QUOTES = "'\""
_ARGUMENT = re.compile(r"`([a-z][a-z0-9_.]*)(?:=([^`]*))?`")
_CALL = re.compile(r"`([a-z][a-z0-9_]*)\('([^'`]*)'\)`")


def flag_wording(message: str) -> str:
    """A library message in command-line words: "`batch_size=3`" -> "--batch-size 3",
    "`overwrite=True`" -> "--overwrite", "`convert_pretrained('coco-v2')`" -> "`keras-maskrcnn
    convert torchvision --weights coco-v2`"; names not in `ARGUMENT_FLAGS` stay as they are."""

    def argument(match: re.Match) -> str:
        flag, value = ARGUMENT_FLAGS.get(match.group(1)), match.group(2)
        if flag is None:
            return match.group(0)
        return flag if value in (None, "True") else f"{flag} {value.strip(QUOTES)}"

    def call(match: re.Match) -> str:
        command = CALL_COMMANDS.get(match.group(1))
        return match.group(0) if command is None else f"`{command.format(match.group(2))}`"

    return _ARGUMENT.sub(argument, _CALL.sub(call, message))


class FlagWording(logging.Filter):
    """A handler filter rewriting log records with `flag_wording`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        worded = flag_wording(message)
        if worded != message:
            record.msg, record.args = worded, None
        return True


def show_flags_in_logs() -> None:
    """Adds `FlagWording` to the root logger's handlers (once each)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, FlagWording) for f in handler.filters):
            handler.addFilter(FlagWording())


def _dataset_source(args, split: str):
    """The dataset source named by --dataset (shapes: generated; coco: from files)."""
    if args.dataset == "shapes":
        from keras_maskrcnn.data import ShapesDataset

        seed = SHAPES_TRAIN_SEED if split == "train" else SHAPES_VAL_SEED
        count = args.shapes_train_images if split == "train" else args.shapes_val_images
        return ShapesDataset(num_images=count, image_size=args.shapes_image_size, seed=seed)
    annotations, images = args.annotations, args.images
    flags = ("--annotations", "--images")
    if getattr(args, "val_images", None) and not args.val_annotations:
        raise UserError("--val-images needs --val-annotations (the COCO json of those images)")
    if split == "val" and getattr(args, "val_annotations", None):
        annotations, images = args.val_annotations, args.val_images or images
        flags = ("--val-annotations", "--val-images" if args.val_images else "--images")
    if not annotations or not images:
        raise SystemExit(
            "--dataset coco needs --annotations A.json and --images DIR "
            "(and optionally --val-annotations/--val-images for validation)")
    if Path(annotations).is_dir():
        raise UserError(f"{flags[0]} {annotations} is a folder: give the COCO json file")
    if not Path(images).is_dir():
        raise UserError(f"{flags[1]} {images} is not a folder (the folder holding the images "
                        f"of {annotations})")
    from keras_maskrcnn.data import CocoDataset

    return CocoDataset(annotations, images, max_image_pixels=pixel_limit(args))


def pixel_limit(args) -> int | None:
    """--max-image-pixels as a limit: None for 0 (no limit)."""
    return args.max_image_pixels or None


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=("shapes", "coco"), default="shapes",
                   help="'shapes': the built-in generated set; 'coco': COCO-format files")
    p.add_argument("--annotations", help="COCO instances JSON (with --dataset coco)")
    p.add_argument("--images", help="folder of the images named in --annotations")
    p.add_argument("--shapes-train-images", type=positive_int, default=2000)
    p.add_argument("--shapes-val-images", type=positive_int, default=100)
    p.add_argument("--shapes-image-size", type=image_side, default=128)
    add_pixel_limit_arg(p)


def add_pixel_limit_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-image-pixels", type=non_negative_int, default=DEFAULT_MAX_IMAGE_PIXELS,
                   metavar="N", help="refuse image files with more pixels than this before "
                   "decoding them (default %(default)s; 0: no limit)")


def non_negative_int(text: str) -> int:
    return _bounded_int(text, 0)


def positive_int(text: str) -> int:
    return _bounded_int(text, 1)


def _bounded_int(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def image_side(text: str) -> int:
    return _bounded_int(text, 32)  # the coarsest FPN level (stride 32) needs one pixel


def unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def overlap_fraction(text: str) -> float:
    """--tile-overlap: a float in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (a fraction of the tile, e.g. "
                                         f"0.2), got {value}")
    return value


def add_tiling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=image_side, metavar="S",
                   help="sliced inference for small objects in large images: run the model on "
                   "S x S tiles of the full-resolution image (S in image pixels, >= 32; about "
                   "the model's input size) and merge the tiles' detections")
    p.add_argument("--tile-overlap", type=overlap_fraction, metavar="F",
                   help="with --tile: neighbouring tiles overlap by at least F * S pixels "
                   "(0 <= F < 1, default 0.2); make F * S at least the size of the objects")
    p.add_argument("--tile-full-image", action="store_true",
                   help="with --tile: also run on the whole (downscaled) image and merge its "
                   "detections (objects larger than a tile)")


def tiling_options(args) -> dict:
    """`tile`, `tile_overlap`, `tile_full_image` keyword arguments; UserError when a tiling
    option is given without --tile."""
    if args.tile is None:
        for flag, value in (("--tile-overlap", args.tile_overlap),
                            ("--tile-full-image", args.tile_full_image)):
            if value not in (None, False):
                raise UserError(f"{flag} needs --tile S (the tile side in image pixels)")
        return {}
    overlap = 0.2 if args.tile_overlap is None else args.tile_overlap
    return {"tile": args.tile, "tile_overlap": overlap, "tile_full_image": args.tile_full_image}


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
    faster with it); falls back to the pure-TF path otherwise, saying so once."""
    from keras_maskrcnn.ops import custom_roi_align

    if os.environ.get("KERAS_MASKRCNN_DISABLE_CUSTOM_OP"):
        return
    if custom_roi_align.library_path() is None:
        if shutil.which(os.environ.get("CXX", "g++")) is None:
            logger.warning("no C++ compiler: training with the (slower) pure-TF RoIAlign")
            return
        logger.info("building the RoIAlign custom op once (about 20-60 s)")
        try:
            custom_roi_align.build(verbose=False)
        except Exception as err:  # noqa: BLE001 - any build failure falls back to pure TF
            logger.warning("custom op build failed (%s); using the pure-TF RoIAlign", err)
            return
        custom_roi_align.reset_cache()
    if custom_roi_align.is_available():
        logger.debug("RoIAlign: the compiled custom op")


def _train_config(args, source):
    """The config to train: --init-from's architecture, else --config (or the dataset's preset),
    with the dataset's classes and --backbone-weights."""
    if args.init_from:
        if args.config:
            raise UserError("--init-from takes the architecture of its model directory; drop "
                            "--config (or drop --init-from)")
        from keras_maskrcnn.finetune import finetune_config

        ids = tuple(int(source.label_to_category_id[k]) for k in range(1, source.num_classes + 1))
        return finetune_config(args.init_from, source.num_classes, source.class_names, ids)
    config = _config_for(args, source)
    if args.backbone_weights:
        from keras_maskrcnn.backbones.pretrained import imagenet_config_overrides

        config = config.replace(**imagenet_config_overrides()).replace(
            backbone_weights=args.backbone_weights)
    return config


def _run_length(args) -> tuple[int | None, int | None, bool]:
    """(epochs, steps_per_epoch, demo): the shapes demo's 12 x 100 steps unless told otherwise;
    otherwise an epoch is one pass over the data (or --steps-per-epoch)."""
    demo = (args.dataset == "shapes" and args.epochs is None and args.max_steps is None
            and args.steps_per_epoch is None)
    if demo:
        return DEMO_EPOCHS, DEMO_STEPS, True
    epochs = args.epochs if args.epochs is not None or args.max_steps else DEFAULT_EPOCHS
    return epochs, args.steps_per_epoch, False


def require_folder(path: str | None, flag: str = "--output") -> None:
    """UserError if `path` exists and is not a folder (a file where a folder is written)."""
    if path and Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder: give a folder path")


def require_file(path: str | None, flag: str) -> None:
    """ValueError if `path`, where one file is written, is a folder (checked before the work)."""
    if path:
        from keras_maskrcnn.atomic import require_file_target

        require_file_target(path, flag)


def cmd_train(args) -> int:
    from keras_maskrcnn.runtime import RunEnvironment
    from keras_maskrcnn.training import train

    require_folder(args.output)

    env = RunEnvironment.create(args.strategy, args.precision, args.jit_compile,
                                args.cpu_devices)
    _ensure_custom_op()
    epochs, steps, demo = _run_length(args)
    output = Path(args.output or DEMO_OUTPUT)
    source = _dataset_source(args, "train")
    val = _dataset_source(args, "val") if (args.val_annotations or demo or args.evaluate) \
        else None
    config = _train_config(args, source)
    if args.repeat_factor_threshold is not None:
        config = config.replace(repeat_factor_threshold=args.repeat_factor_threshold)
    start = time.time()
    result = train(
        config, source, output, epochs=epochs, max_steps=args.max_steps, steps_per_epoch=steps,
        batch_size=args.batch_size, seed=args.seed, deterministic=args.deterministic,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        overwrite=args.overwrite, init_from=args.init_from,
        val_source=val if args.val_annotations else None, eval_every=args.eval_every, env=env,
        skip_bad_images=args.skip_bad_images, log_every=args.log_every)
    seconds = time.time() - start
    print(f"trained to step {result.step} of {result.total_steps} in {seconds:.0f} s; "
          f"model directory: {output}")
    if env.is_chief and val is not None and (demo or args.evaluate):
        from keras_maskrcnn.demo import evaluate_and_draw

        evaluate_and_draw(result.model, val, output, draw=args.dataset == "shapes")
    return 0


def cmd_evaluate(args) -> int:
    from keras_maskrcnn.convert.published import resolve_model
    from keras_maskrcnn.evaluation import (
        format_size_table,
        print_per_class_table,
        save_metrics_json,
        save_pr_curves,
    )
    from keras_maskrcnn.inference import evaluate
    from keras_maskrcnn.saving import load_model_dir

    require_file(args.json, "--json")
    require_file(args.pr_curves, "--pr-curves")
    tiling = tiling_options(args)
    model = load_model_dir(resolve_model(args.model))
    source = _dataset_source(args, "val")
    metrics = evaluate(model, source, batch_size=args.batch_size, max_images=args.max_images,
                       **tiling)
    print(format_size_table(metrics))
    print_per_class_table(metrics)
    if args.json:
        save_metrics_json(metrics, args.json)
        print(f"metrics written to {args.json}")
    if args.pr_curves:
        print(f"precision-recall curves drawn in {save_pr_curves(metrics, args.pr_curves)}")
    print(json.dumps({t: {k: round(m[k], 4) for k in ("AP", "AP50", "AP75")}
                      for t, m in metrics.items()}))
    return 0


def cmd_predict(args) -> int:
    from keras_maskrcnn.convert.published import resolve_model
    from keras_maskrcnn.files import expand_image_paths, predict_files
    from keras_maskrcnn.saving import load_model_dir

    require_folder(args.output)
    tiling = tiling_options(args)
    model = load_model_dir(resolve_model(args.model))
    model.ensure_finite_weights()
    if args.precision != "float32":
        from keras_maskrcnn.precision import with_precision

        model = with_precision(model, args.precision)  # same weights, bf16 compute
    files = expand_image_paths(args.images)
    if not files:
        raise UserError(f"no image files in {' '.join(args.images)}")
    records = predict_files(model, files, args.output, score_threshold=args.score_threshold,
                            max_image_pixels=pixel_limit(args), draw=not args.no_draw,
                            batch_size=args.batch_size, **tiling)
    done = {r["file_name"] for r in records}
    print(f"{len(records)} detections on {len(files)} images written to {args.output}")
    missing = [p for p in files if not (Path(args.output) / f"{p.stem}.png").exists()
               and p.name not in done] if not args.no_draw else []
    if missing:
        print(f"keras-maskrcnn predict: {len(missing)} image(s) could not be read (named "
              "above); predictions.json holds the others", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keras-maskrcnn", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model; writes a model directory (resumable)")
    _add_dataset_args(p)
    p.add_argument("--val-annotations", help="COCO json evaluated during training")
    p.add_argument("--val-images", help="images of --val-annotations")
    p.add_argument("--eval-every", type=positive_int, default=1, metavar="EPOCHS",
                   help="evaluate on the validation set every this many epochs (default 1)")
    p.add_argument("--config", help="preset name (shapes, coco_r50_fpn, ...) or config JSON")
    p.add_argument("--init-from", metavar="DIR",
                   help="fine-tune: start from this model directory's weights (its "
                   "architecture, the dataset's classes)")
    p.add_argument("--backbone-weights", metavar="imagenet|FILE",
                   help="ImageNet backbone: 'imagenet' (keras.applications, downloaded) or a "
                   "local keras.applications ResNet weights file")
    p.add_argument("--epochs", type=positive_int,
                   help=f"epochs (default {DEFAULT_EPOCHS}; the shapes demo: {DEMO_EPOCHS} x "
                   f"{DEMO_STEPS} steps)")
    p.add_argument("--max-steps", type=positive_int, help="total steps (instead of --epochs)")
    p.add_argument("--steps-per-epoch", type=positive_int,
                   help="steps per epoch (default: one pass over the dataset)")
    p.add_argument("--batch-size", type=positive_int, help="global batch size (default: the config's)")
    p.add_argument("--output", help=f"model directory to write (default {DEMO_OUTPUT})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --output folder that holds a different model")
    p.add_argument("--checkpoint-every", type=positive_int, metavar="STEPS",
                   help="checkpoint every this many steps (default: every epoch, and at least "
                   "every 30 minutes)")
    p.add_argument("--keep-checkpoints", type=positive_int, default=3, metavar="K",
                   help="keep the newest K checkpoints (default 3)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip unreadable images with a warning instead of stopping")
    p.add_argument("--repeat-factor-threshold", type=unit_interval, metavar="T",
                   help="repeat-factor sampling (LVIS: 0.001): images of classes found in "
                   "fewer than a fraction T of the images are repeated, r = max(1, "
                   "sqrt(T / f)); an epoch becomes about sum(r) images (default: the "
                   "config's, 0 = off)")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the val split after")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, data and samplers")
    p.add_argument("--deterministic", action="store_true",
                   help="TF op determinism too (bit-identical reruns on one machine)")
    p.add_argument("--precision", default="float32",
                   choices=("float32", "mixed_float16", "mixed_bfloat16", "auto"),
                   help="auto: mixed_bfloat16 where the CPU/GPU runs bf16 natively")
    p.add_argument("--jit-compile", default="auto", choices=("auto", "on", "off"),
                   help="XLA for the training step (auto: on with a GPU)")
    p.add_argument("--strategy", default="auto",
                   choices=("auto", "one_device", "mirrored", "multi_worker"),
                   help="tf.distribute strategy (multi_worker reads TF_CONFIG)")
    p.add_argument("--cpu-devices", type=positive_int,
                   help="split the CPU into N logical devices (to run --strategy mirrored "
                   "without GPUs)")
    p.add_argument("--log-every", type=positive_int, metavar="STEPS", help="progress line interval")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="COCO bbox/segm AP of a model directory")
    _add_dataset_args(p)
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--json", help="write the metrics here: the 12 COCO numbers and a "
                   "'per_class' {name: {AP, AP50, AP75}} table per iou type (null: no ground "
                   "truth)")
    p.add_argument("--pr-curves", metavar="PATH.png",
                   help="draw precision-recall curves (IoU 0.50, 0.75, mean over 0.50:0.95; all "
                   "classes averaged, area all, maxDets 100) as this PNG, one panel per iou type "
                   "(default: not drawn)")
    p.add_argument("--batch-size", type=positive_int, default=2,
                   help="images per model call (with --tile: tiles per model call)")
    p.add_argument("--max-images", type=positive_int)
    add_tiling_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="draw detections and write predictions.json")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--score-threshold", type=unit_interval, default=0.5)
    p.add_argument("--no-draw", action="store_true", help="only write predictions.json")
    add_pixel_limit_arg(p)
    add_tiling_args(p)
    p.add_argument("--batch-size", type=positive_int, default=4,
                   help="with --tile: tiles per model call (default %(default)s)")
    p.add_argument("--precision", choices=("float32", "bfloat16", "auto"), default="float32",
                   help="compute in bfloat16 (same weights; boxes, scores and masks stay "
                   "float32): about twice as fast on CPUs with AVX512_BF16 / AMX, emulated and "
                   "slow elsewhere (a warning says so); auto: bfloat16 where the CPU has it")
    p.set_defaults(func=cmd_predict)

    for module_name in _SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_subcommand(sub)
    return parser


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit code 2."""


def user_errors():
    """Exception types printed as one line (with exit code) instead of a traceback."""
    from keras_maskrcnn.extras import MissingExtraError
    from keras_maskrcnn.training import TrainingDiverged, TrainingError

    return ((TrainingDiverged, 3), (TrainingError, 2), (UserError, 2), (MissingExtraError, 2),
            (FileNotFoundError, 2),
            (ValueError, 2), (RuntimeError, 2))


def quiet_libraries(level: str) -> None:
    """Below DEBUG, hide TensorFlow's C++ start-up lines and library warnings a user cannot act
    on (set before TensorFlow is imported; `--log-level DEBUG` brings them back)."""
    if level == "DEBUG":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # export re-runs it
    level = args.log_level.upper()
    quiet_libraries(level)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    show_flags_in_logs()
    if level != "DEBUG":
        for name in ("tensorflow", "absl", "h5py"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("keras-maskrcnn: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - user mistakes get one line, bugs a traceback
        for kind, code in user_errors():
            if isinstance(err, kind) and args.log_level.upper() != "DEBUG":
                message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
                message = flag_wording(message)
                print(f"keras-maskrcnn {args.command}: error: {message}", file=sys.stderr)
                return code
        raise


if __name__ == "__main__":
    sys.exit(main())
