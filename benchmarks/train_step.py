"""Seconds per training step and parameter count of a preset at a given square size.

    python benchmarks/train_step.py --config coco_r50_fpn --size 800 --batch-size 1 --steps 5

Random weights and a synthetic batch with a few ground-truth instances; the first (tracing) step
is reported apart. Counts: parameters exclude BatchNorm moving statistics (buffers in PyTorch).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tensorflow as tf
from backend_bench import synthetic_batch

from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import get_config
from keras_maskrcnn.training import make_optimizer


def parameter_count(model) -> int:
    return int(sum(int(np.prod(v.shape)) for v in model.inference_graph().weights
                   if "moving_" not in v.path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="coco_r50_fpn")
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--num-classes", type=int, default=90,
                        help="object classes (90 + background = torchvision's 91)")
    args = parser.parse_args()
    config = get_config(args.config, image_size=(args.size, args.size), min_size=args.size,
                        max_size=args.size, num_classes=args.num_classes, class_names=())
    model = build_model(config)
    print(f"{config.name}: parameters {parameter_count(model):,} "
          f"(trainable now {sum(int(np.prod(v.shape)) for v in model.trainable_weights):,})")
    model.compile(optimizer=make_optimizer(config))
    batch = synthetic_batch(config, args.batch_size)
    data = tf.data.Dataset.from_tensors((batch,)).repeat()
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
    print(f"first step (trace + run): {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0)
    per_step = (time.perf_counter() - start) / args.steps
    print(f"{args.size}x{args.size}, batch {args.batch_size}: {per_step:.2f} s/step "
          f"over {args.steps} steps on {tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads")


if __name__ == "__main__":
    main()
