"""Fine-tune converted torchvision COCO weights on your own small COCO-format dataset.

    # 1. torchvision's COCO weights -> a model directory (reading the .pth needs torch)
    keras-maskrcnn convert torchvision maskrcnn_resnet50_fpn_coco.pth --output coco_v1
    # 2. this script: fine-tune on your classes, then evaluate
    python examples/finetune_converted.py --pretrained coco_v1 \
        --annotations train.json --images train/ --val-annotations val.json --val-images val/

The model keeps the pretrained architecture; the layers whose shape depends on the class count
(box classifier, box regressor, mask predictor) are re-initialised for your classes, every
other weight starts from the pretrained model. Same as
`keras-maskrcnn train --dataset coco --init-from coco_v1 ...`.
"""

from __future__ import annotations

import argparse

from keras_maskrcnn.data import CocoDataset
from keras_maskrcnn.finetune import finetune_config
from keras_maskrcnn.inference import evaluate
from keras_maskrcnn.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, help="model directory to start from")
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--val-annotations")
    parser.add_argument("--val-images")
    parser.add_argument("--output", default="runs/finetuned")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()

    source = CocoDataset(args.annotations, args.images)
    ids = [source.label_to_category_id[k] for k in range(1, source.num_classes + 1)]
    config = finetune_config(args.pretrained, source.num_classes, source.class_names, ids)
    val = CocoDataset(args.val_annotations, args.val_images) if args.val_annotations else None
    result = train(config, source, args.output, epochs=args.epochs, batch_size=args.batch_size,
                   init_from=args.pretrained, val_source=val)
    if val is not None:
        metrics = evaluate(result.model, val)
        print({t: round(m["AP"], 4) for t, m in metrics.items()})


if __name__ == "__main__":
    main()
