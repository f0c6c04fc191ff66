"""Is the input pipeline ever the bottleneck? Steps/s of the real training step fed by real JPEG
decoding + augmentation (`make_dataset` on a COCO json) against the same batches cached in
memory, alternating in one run.

    python benchmarks/input_pipeline.py --config coco_r50_fpn --size 512 --steps 6
    python benchmarks/input_pipeline.py --config shapes --size 128 --steps 30   # a tiny model

Defaults to the ten COCO photos shipped in tests/data (repeated). Prints the CPU model and the
pipeline alone (batches/s with no model) too.

How many cores does one worker's input need? `--per-core 1,2` measures the pipeline alone
(JPEG decode, polygon masks, mini masks, resize to the short side 800 / long side 1333 of
`coco_r50_fpn`, flip, pad to its 1344 canvas; no model) in a child process pinned to 1, then 2
cores (CPU affinity, tf.data's private threadpool and TF's thread pools of that size), and prints
images/s and images/s per core:

    python benchmarks/input_pipeline.py --per-core 1,2 --count 40
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
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


def images_per_second(args, cores: int) -> float:
    """Images/s of `make_dataset` (training, COCO size) on `cores` threads, after a warm-up."""
    import tensorflow as tf

    source = CocoDataset(args.annotations, args.images)
    config = get_config("coco_r50_fpn", train_min_sizes=(800,), num_classes=source.num_classes,
                        class_names=tuple(source.class_names), category_ids=())
    options = tf.data.Options()
    options.threading.private_threadpool_size = cores
    data = make_dataset(source, config, training=True, batch_size=args.batch_size, seed=0)
    iterator = iter(data.with_options(options))
    for _ in range(3):
        next(iterator)
    batches = max(1, args.count // args.batch_size)
    start = time.perf_counter()
    for _ in range(batches):
        (batch,) = next(iterator)
    float(batch["images"][0, 0, 0, 0])
    return batches * args.batch_size / (time.perf_counter() - start)


def per_core(args) -> None:
    """Runs `images_per_second` in a child process pinned to each core count; prints a table."""
    cpus = sorted(os.sched_getaffinity(0))
    counts = [int(c) for c in args.per_core.split(",")]
    print(f"CPU: {cpu_model()} ({len(cpus)} usable cores); coco_r50_fpn training input "
          f"(short side 800, long <= 1333, canvas 1344, masks), batch {args.batch_size}, "
          f"{args.count} images timed after 3 warm-up batches")
    print("cores | images/s | images/s per core")
    for count in counts:
        if count > len(cpus):
            print(f"{count:5d} | skipped: only {len(cpus)} cores")
            continue
        pinned = set(cpus[:count])
        env = {**os.environ, "TF_NUM_INTRAOP_THREADS": str(count),
               "TF_NUM_INTEROP_THREADS": str(count), "OMP_NUM_THREADS": str(count),
               "TF_CPP_MIN_LOG_LEVEL": "3"}
        cmd = [sys.executable, __file__, "--child-cores", str(count), "--count",
               str(args.count), "--batch-size", str(args.batch_size), "--annotations",
               args.annotations, "--images", args.images]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800,
                             preexec_fn=lambda cores=pinned: os.sched_setaffinity(0, cores))
        lines = [x for x in out.stdout.splitlines() if x.startswith("RATE ")]
        if out.returncode or not lines:
            print(f"{count:5d} | failed: {(out.stderr or out.stdout).strip()[-500:]}")
            continue
        rate, seen = float(lines[-1].split()[1]), int(lines[-1].split()[2])
        assert seen == count, f"the child ran on {seen} cores, not {count}"
        print(f"{count:5d} | {rate:8.2f} | {rate / count:8.2f}")


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
    parser.add_argument("--per-core", metavar="N,M", help="pipeline alone at COCO size on N, "
                        "then M, ... cores: images/s per core (no model)")
    parser.add_argument("--count", type=int, default=40, help="images timed per core count")
    parser.add_argument("--child-cores", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_cores:
        rate = images_per_second(args, args.child_cores)
        print(f"RATE {rate:.4f} {len(os.sched_getaffinity(0))}")
        return
    if args.per_core:
        per_core(args)
        return

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
