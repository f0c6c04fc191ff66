"""`keras-maskrcnn convert torchvision STATE_DICT.pth --output DIR`: import torchvision weights;
`keras-maskrcnn convert torchvision --weights coco-v1|coco-v2`: download torchvision's published
COCO weights into the cache and convert them there (`keras_maskrcnn.convert.published`)."""

from __future__ import annotations

import argparse

from keras_maskrcnn.convert.published import NAMES as PRETRAINED_NAMES

SOURCES = ("torchvision",)


def add_subcommand(subparsers) -> None:
    """Registers `convert` on the `keras-maskrcnn` parser's subparsers."""
    p = subparsers.add_parser(
        "convert", help="convert another framework's Mask R-CNN weights to a model directory",
        description="Convert torchvision maskrcnn_resnet50_fpn / _v2 weights (a torch.save state "
                    "dict or checkpoint; reading .pth needs torch: pip install -e .[parity]) into "
                    "a model directory usable by predict / evaluate without torch. --weights "
                    "coco-v1|coco-v2 downloads torchvision's published COCO file (checksum "
                    "checked, cached in $KERAS_MASKRCNN_CACHE or ~/.cache/keras_maskrcnn) and "
                    "converts it into the cache, where `predict --model coco-v2` finds it.")
    p.add_argument("source", choices=SOURCES, help="the framework the weights come from")
    p.add_argument("state_dict", metavar="STATE_DICT.pth", nargs="?",
                   help="torch.save file of the state dict (or an .npz of its arrays)")
    p.add_argument("--weights", choices=PRETRAINED_NAMES,
                   help="instead of STATE_DICT.pth: torchvision's published COCO weights "
                        "(coco-v1: maskrcnn_resnet50_fpn, box/mask AP 37.9/34.6; coco-v2: "
                        "maskrcnn_resnet50_fpn_v2, 47.4/41.8), downloaded once")
    p.add_argument("--output", metavar="DIR",
                   help="model directory to write (required with STATE_DICT.pth; with "
                        "--weights default the cache's models/<name>/)")
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
    p.add_argument("--frozen-bn-eps", type=float, default=None,
                   help="eps of torchvision's FrozenBatchNorm2d layers: 0 for its COCO weights "
                        "and models fine-tuned from them (default; --weights: the published "
                        "file's), 1e-5 for models trained from ImageNet backbone weights")
    p.set_defaults(func=run_convert)


def _convert_pretrained(args: argparse.Namespace) -> int:
    from keras_maskrcnn.convert.published import PRETRAINED, convert_pretrained

    if args.state_dict:
        raise SystemExit("give STATE_DICT.pth or --weights, not both")
    if args.v2 is not None and args.v2 != PRETRAINED[args.weights].v2:
        raise SystemExit(f"--weights {args.weights} is maskrcnn_resnet50_fpn"
                         f"{'_v2' if PRETRAINED[args.weights].v2 else ''}: drop --v1/--v2")
    options = {"min_size": args.min_size, "max_size": args.max_size,
               "image_size": tuple(args.image_size) if args.image_size else None}
    if args.frozen_bn_eps is not None:
        options["frozen_bn_eps"] = args.frozen_bn_eps
    directory = convert_pretrained(args.weights, args.output, **options)
    print(f"converted torchvision {args.weights} weights ({PRETRAINED[args.weights].description})"
          f" to the model directory {directory}; use it as --model "
          f"{args.weights if args.output is None else directory}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """Runs `convert`; returns the exit status."""
    if args.weights:
        return _convert_pretrained(args)
    if not args.state_dict or not args.output:
        raise SystemExit("convert torchvision needs STATE_DICT.pth and --output DIR, or "
                         f"--weights {'|'.join(PRETRAINED_NAMES)}")
    from keras_maskrcnn.convert.torchvision import convert_torchvision

    eps = 0.0 if args.frozen_bn_eps is None else args.frozen_bn_eps
    directory = convert_torchvision(args.state_dict, args.output, min_size=args.min_size,
                                    max_size=args.max_size, v2=args.v2, frozen_bn_eps=eps,
                                    image_size=tuple(args.image_size) if args.image_size else None)
    print(f"converted {args.source} weights {args.state_dict} to the model directory {directory}")
    return 0
