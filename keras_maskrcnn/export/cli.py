"""The `keras-maskrcnn export` subcommand: a model directory -> SavedModel, .tflite, .onnx or
an OpenVINO IR."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from keras_maskrcnn.data.images import DEFAULT_MAX_IMAGE_PIXELS

FORMATS = ("saved_model", "tflite")
QUANTIZE_CHOICES = ("none", "float16", "dynamic-int8")  # = export.tflite.QUANTIZE_OPTIONS
PRECISION_CHOICES = ("float32", "bfloat16", "auto")  # = keras_maskrcnn.precision.PRECISIONS
DEFAULT_INPUT_SIZE = 512


ONNX_FORMAT = "onnx"
OPENVINO_FORMAT = "openvino"  # = export.openvino.OPENVINO_FORMAT
# The saved_model / tflite options, refused with --format onnx / openvino.
_OTHER_FORMATS_OPTIONS = ("quantize", "buckets", "full_image_masks", "max_image_pixels",
                          "precision")


def add_subcommand(subparsers) -> None:
    """Registers `export` on the main parser's subparsers."""
    p = subparsers.add_parser(
        "export", help="export a model directory to a SavedModel (TF Serving), a .tflite or "
                       ".onnx file or an OpenVINO IR (.xml + .bin)",
        description="SavedModel: serving_default (uint8 images) and serving_bytes (encoded "
                    "images) signatures, detections in original pixels, each image on the "
                    "smallest of a few canvas buckets (--buckets). TFLite: builtin ops only, a "
                    "fixed letterboxed input of --input-size pixels, or one signature per "
                    "bucket (--buckets). ONNX / OpenVINO: a fixed letterboxed --input-size canvas.")
    p.add_argument("--model", required=True, help="model directory (config.json + weights)")
    p.add_argument("--format", required=True, choices=(*FORMATS, ONNX_FORMAT, OPENVINO_FORMAT))
    p.add_argument("--output", required=True,
                   help="SavedModel directory (TF Serving: <base>/<version>), .tflite or .onnx file, or "
                   "for openvino a .xml file (the .bin beside it) or a folder (model.xml)")
    p.add_argument("--buckets", metavar="auto|square|per_image|HxW,HxW,...", default=None,
                   help="canvases the graph holds (multiples of 32); each image runs on the "
                   "smallest that holds its resized size. auto (saved_model default): square, "
                   "4:3, 3:2 and the catch-all, landscape and portrait (800x800, 800x1088, "
                   "800x1216, 800x1344 and transposes at 800/1333); square: one square canvas "
                   "of max_size; per_image (saved_model): one shape-polymorphic graph, each "
                   "image padded to a multiple of 32 as the Keras path does. tflite: one "
                   "signature canvas_HxW per bucket (default: one --input-size canvas)")
    p.add_argument("--full-image-masks", action="store_true",
                   help="saved_model: also output masks pasted into the image (uint8)")
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                   help="saved_model: refuse images with more pixels than this, before "
                   f"decoding (default {DEFAULT_MAX_IMAGE_PIXELS}; 0: no limit)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default=None,
                   help="saved_model: compute in bfloat16 (CPUs with AVX512_BF16 / AMX; "
                   "variables and outputs stay float32); auto: bfloat16 where this machine "
                   "runs it natively (default float32)")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                   help="tflite: weight quantization (default none)")
    p.add_argument("--input-size", type=int, nargs="+", default=None, metavar="S | H W",
                   help="tflite / openvino (onnx: S only): the canvas, S x S or H x W (multiples of 32; default "
                   f"{DEFAULT_INPUT_SIZE}); the image is letterboxed to fit it")
    p.set_defaults(func=run_export)


def _check_args(args: argparse.Namespace) -> None:
    if args.format == "saved_model" and (args.quantize or args.input_size):
        raise SystemExit("--quantize and --input-size apply to --format tflite only")
    if args.format == "tflite" and (args.full_image_masks or args.max_image_pixels is not None
                                    or args.precision is not None):
        raise SystemExit("--full-image-masks, --max-image-pixels and --precision apply to "
                         "--format saved_model only")
    if args.input_size is not None and len(args.input_size) not in (1, 2):
        raise SystemExit("--input-size takes S (a square canvas) or H W")
    if args.input_size and args.buckets:
        raise SystemExit("--input-size (one canvas) and --buckets (one signature per canvas) "
                         "exclude each other")
    if args.max_image_pixels is not None and args.max_image_pixels < 0:
        raise SystemExit("--max-image-pixels must be >= 0 (0: no limit)")
    if args.buckets is not None:
        from keras_maskrcnn.export.buckets import parse_buckets

        try:
            if not (args.format == "saved_model" and args.buckets.strip().lower() == "per_image"):
                parse_buckets(args.buckets, 1, 1)  # syntax only; sizes come from the model
        except ValueError as err:
            raise SystemExit(f"--buckets: {err}") from None
    if not Path(args.model).is_dir():
        raise SystemExit(f"--model {args.model} is not a model directory")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export_in_tensorflow(argv: list[str]) -> int:
    """The same `export` command again in a TensorFlow process: exports are TensorFlow graphs,
    and a model directory written on JAX or PyTorch holds the same weights file."""
    import os
    import subprocess

    logging.getLogger("keras_maskrcnn").info(
        "export runs on the TensorFlow backend: restarting it with KERAS_BACKEND=tensorflow")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    command = [sys.executable, "-m", "keras_maskrcnn.cli", *argv]
    return subprocess.run(command, env=env, check=False).returncode


def run_export(args: argparse.Namespace) -> int:
    """Runs the export named by the parsed arguments; returns the exit code. `--model` may name
    pretrained weights (`pretrained.resolve_model`)."""
    from keras_maskrcnn import backend
    from keras_maskrcnn.convert.published import resolve_model

    if not backend.is_tensorflow():
        return export_in_tensorflow(getattr(args, "argv", None) or sys.argv[1:])
    args.model = str(resolve_model(args.model))
    if args.format == ONNX_FORMAT:
        return run_onnx_export(args)
    if args.format == OPENVINO_FORMAT:
        return run_openvino_export(args)
    _check_args(args)
    if args.format == "saved_model":
        import json

        from keras_maskrcnn.export.saved_model import EXPORT_METADATA_FILE, export_saved_model

        limit = DEFAULT_MAX_IMAGE_PIXELS if args.max_image_pixels is None \
            else (args.max_image_pixels or None)
        path = export_saved_model(args.model, args.output,
                                  full_image_masks=args.full_image_masks,
                                  buckets=args.buckets or "auto", max_image_pixels=limit,
                                  precision=args.precision or "float32")
        meta = json.loads((path / "assets.extra" / EXPORT_METADATA_FILE).read_text())
        canvases = "per image (multiples of 32)" if isinstance(meta["buckets"], str) else \
            ", ".join(f"{h}x{w}" for h, w in meta["buckets"])
        print(f"SavedModel written to {path} ({_size(path) / 2**20:.1f} MiB); "
              "signatures: serving_default (uint8 images), serving_bytes (encoded images); "
              f"canvases {canvases}; {meta['precision']}; max_image_pixels "
              f"{meta['max_image_pixels']}")
        return 0
    from keras_maskrcnn.export.tflite import export_tflite, metadata_path

    quantize = args.quantize or "none"
    if args.buckets:
        path = export_tflite(args.model, args.output, quantize=quantize, buckets=args.buckets)
        import json

        signatures = json.loads(metadata_path(path).read_text())["signatures"]
        layout = "signatures " + ", ".join(signatures)
    else:
        size = tuple(args.input_size) if args.input_size else (DEFAULT_INPUT_SIZE,)
        size = size * 2 if len(size) == 1 else size
        path = export_tflite(args.model, args.output, input_size=size, quantize=quantize)
        layout = f"input {size[0]}x{size[1]}"
    print(f"TFLite model written to {path} ({_size(path) / 2**20:.1f} MiB, {layout}, "
          f"quantize={quantize}); metadata in {path}.json")
    return 0


def _refuse_other_format_options(args: argparse.Namespace, options: str) -> None:
    given = [f"--{name.replace('_', '-')}" for name in _OTHER_FORMATS_OPTIONS
             if getattr(args, name, None) not in (None, False)]
    if given:
        raise SystemExit(f"{', '.join(given)} do not apply to --format {args.format} "
                         f"(options: {options})")


def run_onnx_export(args: argparse.Namespace) -> int:
    """`keras-maskrcnn export --format onnx --model DIR --output F.onnx [--input-size S]`."""
    from keras_maskrcnn.export.onnx import (
        DEFAULT_OPSET,
        ONNX_MODULES,
        export_onnx,
        metadata_path,
        square_input_size,
    )
    from keras_maskrcnn.extras import check_installed

    _refuse_other_format_options(args, "--input-size S")
    if not Path(args.model).is_dir():
        raise SystemExit(f"--model {args.model} is not a model directory")
    check_installed(ONNX_MODULES, "onnx", "--format onnx")  # before building anything
    size = tuple(args.input_size) if args.input_size else (DEFAULT_INPUT_SIZE,)
    size = square_input_size(size * 2 if len(size) == 1 else size)
    path = export_onnx(args.model, args.output, input_size=size)
    print(f"ONNX model written to {path} ({path.stat().st_size / 2**20:.1f} MiB, input "
          f"{size}x{size}, opset {DEFAULT_OPSET}); metadata in {metadata_path(path)}")
    return 0


def run_openvino_export(args: argparse.Namespace) -> int:
    """`keras-maskrcnn export --format openvino --model DIR --output F.xml|DIR
    [--input-size S | H W]`."""
    from keras_maskrcnn.export.openvino import (
        OPENVINO_HINT,
        export_openvino,
        metadata_path,
        require_openvino,
    )

    _refuse_other_format_options(args, "--input-size S | H W")
    size = tuple(args.input_size) if args.input_size else (DEFAULT_INPUT_SIZE,)
    if len(size) not in (1, 2):
        raise SystemExit("--input-size takes S (a square canvas) or H W")
    try:
        require_openvino()
    except ImportError:
        raise SystemExit(f"--format openvino needs the openvino package: {OPENVINO_HINT}") \
            from None
    if not Path(args.model).is_dir():
        raise SystemExit(f"--model {args.model} is not a model directory")
    size = size * 2 if len(size) == 1 else size
    xml = export_openvino(args.model, args.output, input_size=size)
    megabytes = (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2**20
    print(f"OpenVINO model written to {xml} + {xml.with_suffix('.bin').name} ({megabytes:.1f} "
          f"MiB, input {size[0]}x{size[1]}, float32 weights); "
          f"metadata in {metadata_path(xml)}")
    return 0
