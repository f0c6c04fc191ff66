"""The `keras-maskrcnn export` subcommand: a model directory -> SavedModel or .tflite."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("saved_model", "tflite")
QUANTIZE_CHOICES = ("none", "float16", "dynamic-int8")  # = export.tflite.QUANTIZE_OPTIONS
DEFAULT_INPUT_SIZE = 512


def add_subcommand(subparsers) -> None:
    """Registers `export` on the main parser's subparsers."""
    p = subparsers.add_parser(
        "export", help="export a model directory to a SavedModel (TF Serving) or a .tflite file",
        description="SavedModel: serving_default (uint8 images) and serving_bytes (encoded "
                    "images) signatures, detections in original pixels. TFLite: builtin ops "
                    "only, a fixed letterboxed input of --input-size pixels.")
    p.add_argument("--model", required=True, help="model directory (config.json + weights)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--output", required=True,
                   help="SavedModel directory (TF Serving: <base>/<version>) or .tflite file")
    p.add_argument("--full-image-masks", action="store_true",
                   help="saved_model: also output masks pasted into the image (uint8)")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                   help="tflite: weight quantization (default none)")
    p.add_argument("--input-size", type=int, default=None,
                   help=f"tflite: side of the square input canvas (default {DEFAULT_INPUT_SIZE})")
    p.set_defaults(func=run_export)


def _check_args(args: argparse.Namespace) -> None:
    if args.format == "saved_model" and (args.quantize or args.input_size):
        raise SystemExit("--quantize and --input-size apply to --format tflite only")
    if args.format == "tflite" and args.full_image_masks:
        raise SystemExit("--full-image-masks applies to --format saved_model only")
    if not Path(args.model).is_dir():
        raise SystemExit(f"--model {args.model} is not a model directory")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_export(args: argparse.Namespace) -> int:
    """Runs the export named by the parsed arguments; returns the exit code."""
    _check_args(args)
    if args.format == "saved_model":
        from keras_maskrcnn.export.saved_model import export_saved_model

        path = export_saved_model(args.model, args.output,
                                  full_image_masks=args.full_image_masks)
        print(f"SavedModel written to {path} ({_size(path) / 2**20:.1f} MiB); "
              "signatures: serving_default (uint8 images), serving_bytes (encoded images)")
        return 0
    from keras_maskrcnn.export.tflite import export_tflite

    size = args.input_size or DEFAULT_INPUT_SIZE
    path = export_tflite(args.model, args.output, input_size=size,
                         quantize=args.quantize or "none")
    print(f"TFLite model written to {path} ({_size(path) / 2**20:.1f} MiB, input {size}x{size}, "
          f"quantize={args.quantize or 'none'}); metadata in {path}.json")
    return 0
