"""`keras-maskrcnn convert torchvision STATE_DICT.pth --output DIR`: import torchvision weights."""

from __future__ import annotations

import argparse

SOURCES = ("torchvision",)


def add_subcommand(subparsers) -> None:
    """Registers `convert` on the `keras-maskrcnn` parser's subparsers."""
    p = subparsers.add_parser(
        "convert", help="convert another framework's Mask R-CNN weights to a model directory",
        description="Convert torchvision maskrcnn_resnet50_fpn / _v2 weights (a torch.save state "
                    "dict or checkpoint; reading .pth needs torch: pip install -e .[parity]) into "
                    "a model directory usable by predict / evaluate without torch.")
    p.add_argument("source", choices=SOURCES, help="the framework the weights come from")
    p.add_argument("state_dict", metavar="STATE_DICT.pth",
                   help="torch.save file of the state dict (or an .npz of its arrays)")
    p.add_argument("--output", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--min-size", type=int, default=800, help="short side of the resized image")
    p.add_argument("--max-size", type=int, default=1333, help="cap on the long side")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="the model canvas (multiples of 32; default max-size rounded up to 32, "
                        "square); outputs equal torchvision's exactly when the canvas equals "
                        "torchvision's padded batch size")
    arch = p.add_mutually_exclusive_group()
    arch.add_argument("--v2", dest="v2", action="store_true", default=None,
                      help="expect maskrcnn_resnet50_fpn_v2 weights (default: detect)")
    arch.add_argument("--v1", dest="v2", action="store_false",
                      help="expect maskrcnn_resnet50_fpn weights (default: detect)")
    p.add_argument("--frozen-bn-eps", type=float, default=0.0,
                   help="eps of torchvision's FrozenBatchNorm2d layers: 0 for its COCO weights "
                        "and models fine-tuned from them (default), 1e-5 for models trained from "
                        "ImageNet backbone weights")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    """Runs `convert`; returns the exit status."""
    from keras_maskrcnn.convert.torchvision import convert_torchvision

    directory = convert_torchvision(args.state_dict, args.output, min_size=args.min_size,
                                    max_size=args.max_size, v2=args.v2,
                                    frozen_bn_eps=args.frozen_bn_eps,
                                    image_size=tuple(args.image_size) if args.image_size else None)
    print(f"converted {args.source} weights {args.state_dict} to the model directory {directory}")
    return 0
