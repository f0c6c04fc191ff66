"""The `keras-maskrcnn data` subcommands: `convert` (labelme / VIA / COCO -> clean COCO) and
`check` (a COCO file and its images)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keras_maskrcnn.data.formats import EMPTY_SEGMENTATION, FORMATS
from keras_maskrcnn.data.images import DEFAULT_MAX_IMAGE_PIXELS


def add_subcommand(subparsers) -> None:
    """Registers `data` (with `convert` and `check`) on the main parser's subparsers."""
    p = subparsers.add_parser("data", help="dataset tools: convert annotations to COCO, check a "
                              "COCO file")
    sub = p.add_subparsers(dest="data_command", required=True)

    c = sub.add_parser(
        "convert", help="labelme / VIA / COCO (CVAT, ...) -> a clean COCO instances file",
        description="Polygons are copied exactly; rectangles become 4 corners, circles and "
                    "ellipses polygons within 0.25 px. Category ids: sorted names -> 1..K "
                    "(labelme, VIA) or kept (COCO), or --categories. Images: ids 1..N, sizes "
                    "from the annotations (VIA: from the image files).")
    c.add_argument("--from", dest="fmt", required=True, choices=FORMATS,
                   help="labelme: a folder of labelme .json files (or one); via: a VIA 2 "
                   "project or annotation export .json; coco: a COCO .json to clean")
    c.add_argument("source", metavar="DIR_OR_FILE", help="the annotations to convert")
    c.add_argument("--output", required=True, help="the COCO .json to write")
    c.add_argument("--images", metavar="DIR",
                   help="the image folder: file names are written relative to it (labelme; "
                   "default: the labelme folder); image sizes are read from it (VIA: required; "
                   "COCO: only for records without height/width)")
    c.add_argument("--categories", metavar="NAMES.txt",
                   help="category names, one a line: ids 1..K in this order (default: sorted "
                   "names -> 1..K for labelme / VIA; the file's own ids for COCO)")
    c.add_argument("--label-key", metavar="KEY",
                   help="via: the region attribute holding the class (default: the only one)")
    c.add_argument("--empty-segmentation", choices=EMPTY_SEGMENTATION, default="error",
                   help="coco: annotations with a box but no mask: error (default), box (the "
                   "box becomes the mask), drop")
    c.set_defaults(func=run_convert)

    k = sub.add_parser(
        "check", help="report problems of a COCO file and its images (exit 1 on errors)",
        description="Counts per class; errors (malformed records as `train` names them, "
                    "missing / unreadable files, sizes differing from the json, repeated ids "
                    "or files, boxes outside their image) exit 1; warnings alone exit 0.")
    k.add_argument("annotations", metavar="COCO.json")
    k.add_argument("--images", metavar="DIR",
                   help="the image folder (default: image files not checked)")
    k.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                   metavar="N", help="warn about images above train's pixel limit (default "
                   "%(default)s; 0: no limit)")
    k.set_defaults(func=run_check)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def run_convert(args: argparse.Namespace) -> int:
    from keras_maskrcnn.atomic import require_file_target
    from keras_maskrcnn.data.formats import convert, write_coco

    output = Path(args.output)
    require_file_target(output, "--output")
    if _same_file(output, Path(args.source)):
        raise ValueError(f"--output {output} is the input file: write the clean COCO file "
                         "elsewhere")
    result = convert(args.fmt, args.source, images_dir=args.images, categories=args.categories,
                     label_key=args.label_key, empty_segmentation=args.empty_segmentation)
    for line in result.notes:
        print(f"note: {line}")
    write_coco(result.data, output)
    print(f"wrote {output}: {result.summary()}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from keras_maskrcnn.data.check import check_coco_file

    if args.max_image_pixels < 0:
        raise ValueError("--max-image-pixels must be >= 0 (0: no limit)")
    report = check_coco_file(args.annotations, args.images, args.max_image_pixels or None)
    print(report.format())
    sys.stdout.flush()
    return 0 if report.ok else 1
