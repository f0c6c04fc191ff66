"""Where a training step's time goes: TensorFlow profiler trace of the real step, op time summed
per model part (backbone, FPN, RPN head, anchor targets, proposals, RoI targets, poolers, heads,
losses, optimizer) and per phase (forward / backward).

    python benchmarks/profile_train_step.py --config torchvision_r50_fpn --size 800 --steps 2
    python benchmarks/profile_train_step.py --precision mixed_bfloat16

The step is `training.make_train_step` (the one `train` runs) on a synthetic batch with a few
ground-truth instances (`train_step.synthetic_batch`). Op times are kernel times on the host
threads: with two threads the sum exceeds the wall time; the shares are what matters.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
import time
from pathlib import Path

import tensorflow as tf

PARTS = ("backbone", "fpn", "rpn_head", "anchor_targets", "train_proposals",
         "detection_targets", "box_pooler", "mask_pooler", "roi_pooler", "res5_head",
         "box_head_loss", "mask_head_loss", "rpn_loss", "box_head", "mask_head", "normalize",
         "anchors")
OP_EVENT = re.compile(r"^[^:]+:[A-Za-z0-9_]+$")
OPTIMIZER = re.compile(r"(?i)sgd|adam|optimizer|AssignVariable|ReadVariable|apply_gradients")


def part_of(op_name: str) -> tuple[str, str]:
    """(part, phase) of a TF op name; phase "backward" for the gradient tape's ops."""
    phase = "backward" if op_name.startswith("gradient_tape/") or "/gradients/" in op_name \
        else "forward"
    for part in PARTS:
        if re.search(rf"(^|/){part}(_\d+)?/", op_name):
            return part, phase
    if OPTIMIZER.search(op_name):
        return "optimizer", "update"
    return "other", phase


def op_times(logdir: Path) -> dict[str, float]:
    """Seconds per "op name:op type", summed over the trace's TensorFlow op events."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals: dict[str, float] = collections.defaultdict(float)
    for path in logdir.rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            for line in plane.lines:
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    if OP_EVENT.match(name):  # "scope/op_name:OpType", one kernel run
                        totals[name] += event.duration_ps * 1e-12
    return totals


def trunk_step(model, images, image_shape):
    """A `tf.function` of forward + backward through backbone, FPN and RPN head alone (loss:
    mean of each feature map + 1e-3 x the sum of the RPN outputs); returns the gradients."""
    images, shape = tf.constant(images), tf.constant(image_shape)
    variables = model.backbone.trainable_variables + model.rpn.head.trainable_variables

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            features = model.backbone(model.normalizer(images, shape))
            logits, deltas = model.rpn.head(features)
            loss = tf.add_n([tf.reduce_mean(tf.cast(f, tf.float32)) for f in features]) + \
                1e-3 * tf.cast(tf.reduce_sum(logits) + tf.reduce_sum(deltas), tf.float32)
        return tape.gradient(loss, variables)

    return run


def trunk_seconds(model, batch, repeats: int = 3) -> float:
    """Median seconds of `trunk_step` on `batch`."""
    run = trunk_step(model, batch["images"], batch["image_shape"])
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        float(tf.reduce_sum(run()[0]))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="torchvision_r50_fpn")
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--top", type=int, default=25, help="slowest single ops to list")
    parser.add_argument("--floor", action="store_true",
                        help="also time backbone + FPN + RPN head forward and backward alone "
                             "(loss: sum of their outputs), the step's convolutional floor")
    args = parser.parse_args()

    from backend_bench import synthetic_batch  # this folder is on sys.path

    from keras_maskrcnn.builder import build_model
    from keras_maskrcnn.config import get_config
    from keras_maskrcnn.runtime import RunEnvironment, cpu_model
    from keras_maskrcnn.solver import make_optimizer
    from keras_maskrcnn.training import make_train_step

    env = RunEnvironment.create(precision=args.precision)
    config = get_config(args.config, image_size=(args.size, args.size), min_size=args.size,
                        max_size=args.size, num_classes=90, class_names=(), category_ids=())
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config, args.batch_size, 1000, env.precision))
    batch = synthetic_batch(config, args.batch_size)
    data = iter(tf.data.Dataset.from_tensors(batch).repeat())
    step = make_train_step(model, env)
    float(step(data)["loss"])  # trace
    start = time.perf_counter()
    float(step(data)["loss"])
    wall = time.perf_counter() - start
    logdir = Path(tempfile.mkdtemp(prefix="kmr_profile_"))
    tf.profiler.experimental.start(
        str(logdir), tf.profiler.experimental.ProfilerOptions(host_tracer_level=3))
    for _ in range(args.steps):
        float(step(data)["loss"])
    tf.profiler.experimental.stop()
    times = op_times(logdir)
    floor = trunk_seconds(model, batch) if args.floor else None
    per_step = {k: v / args.steps for k, v in times.items()}
    total = sum(per_step.values())
    print(f"CPU: {cpu_model()}; {config.name} {args.size}x{args.size}, batch "
          f"{args.batch_size}, {env.precision}; wall {wall:.2f} s/step; op time "
          f"{total:.2f} s/step (summed over threads)")
    if floor is not None:
        print(f"backbone + FPN + RPN head forward and backward alone: {floor:.2f} s")
    groups: dict[tuple[str, str], float] = collections.defaultdict(float)
    for name, seconds in per_step.items():
        groups[part_of(name.rsplit(":", 1)[0])] += seconds
    print("\n| part | phase | op s/step | share |\n|---|---|---|---|")
    for (part, phase), seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {part} | {phase} | {seconds:.3f} | {seconds / total:.1%} |")
    types: dict[str, float] = collections.defaultdict(float)
    for name, seconds in per_step.items():
        types[name.rsplit(":", 1)[1]] += seconds
    print("\nby op type: " + ", ".join(f"{t} {v:.3f}" for t, v in
                                      sorted(types.items(), key=lambda kv: -kv[1])[:15]))
    print(f"\nslowest {args.top} ops (s/step):")
    for name, seconds in sorted(per_step.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {seconds:.4f}  {name}")


if __name__ == "__main__":
    main()
