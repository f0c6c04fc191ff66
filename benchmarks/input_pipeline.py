"""Is the input pipeline ever the bottleneck? Steps/s of the real training step fed by real JPEG
decoding + augmentation (`make_dataset` on a COCO json) against the same batches cached in
memory, alternating in one run.

    python benchmarks/input_pipeline.py --config coco_r50_fpn --size 512 --steps 6
    python benchmarks/input_pipeline.py --config shapes --size 128 --steps 30   # a tiny model

Defaults to the ten COCO photos shipped in tests/data (repeated). Prints the CPU model and the
pipeline alone (batches/s with no model) too.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import CocoDataset, make_dataset
from keras_maskrcnn.runtime import RunEnvironment, cpu_model
from keras_maskrcnn.solver import make_optimizer
from keras_maskrcnn.training import make_train_step

COCO10 = Path(__file__).resolve().parents[1] / "tests" / "data" / "coco-val2017-10"


def timed_steps(step_fn, iterator, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        out = step_fn(iterator)
    float(out["loss"])
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="coco_r50_fpn")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--annotations", default=str(COCO10 / "annotations.json"))
    parser.add_argument("--images", default=str(COCO10 / "images"))
    args = parser.parse_args()

    source = CocoDataset(args.annotations, args.images)
    s = args.size
    config = get_config(args.config, image_size=(s, s), min_size=min(800, s), max_size=s,
                        train_min_sizes=tuple(v for v in (s * 3 // 4, s) if v <= s),
                        num_classes=source.num_classes, class_names=tuple(source.class_names),
                        category_ids=())
    env = RunEnvironment.create()
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config, args.batch_size, 1000))
    step_fn = make_train_step(model, env)
    live = make_dataset(source, config, training=True, batch_size=args.batch_size, seed=0)
    cached = live.take(len(source.image_ids) // args.batch_size).cache().repeat()
    live_it, cached_it = iter(live), iter(cached)
    for it in (live_it, cached_it):  # trace, warm the cache
        timed_steps(step_fn, it, 2)
    start = time.perf_counter()
    pipe = iter(live)
    for _ in range(20):
        next(pipe)
    pipeline_rate = 20 / (time.perf_counter() - start)
    print(f"CPU: {cpu_model()}; {config.name} at {s}x{s}, batch {args.batch_size}")
    print(f"pipeline alone: {pipeline_rate:.2f} batches/s")
    print("round | live decode s/step | cached s/step | live / cached")
    for r in range(args.rounds):
        a = timed_steps(step_fn, live_it, args.steps)
        b = timed_steps(step_fn, cached_it, args.steps)
        print(f"{r + 1:5d} | {a:18.3f} | {b:13.3f} | {a / b:.3f}")


if __name__ == "__main__":
    main()
