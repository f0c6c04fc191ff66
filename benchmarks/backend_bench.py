"""Training-step and inference timings of one Keras backend, in this process (the backend is
`KERAS_BACKEND`'s). Used by `vs_backends.py` (CPU, every backend side by side) and `gpu.py` (one
GPU, no TensorFlow); each runs it in a subprocess per backend:

    KERAS_BACKEND=jax python benchmarks/backend_bench.py --config coco_r50_fpn --size 512

prints one JSON line: backend, precision, seconds per training step and per inference call
(medians after warm-up, compilation reported apart), images per second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def synthetic_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A training batch with five ground-truth instances per image and sampler seeds."""
    rng = np.random.default_rng(seed)
    h, w = config.image_size
    g, m = config.max_instances, config.gt_mask_size
    boxes = np.zeros((batch_size, g, 4), np.float32)
    classes = np.zeros((batch_size, g), np.int32)
    for b in range(batch_size):
        for i in range(min(5, g)):
            y1, x1 = rng.uniform(0, 0.6) * h, rng.uniform(0, 0.6) * w
            boxes[b, i] = [y1, x1, y1 + rng.uniform(0.1, 0.4) * h, x1 + rng.uniform(0.1, 0.4) * w]
            classes[b, i] = rng.integers(1, config.num_classes + 1)
    return {"images": rng.uniform(0, 255, (batch_size, h, w, 3)).astype(np.float32),
            "image_shape": np.tile(np.array([[h, w]], np.float32), (batch_size, 1)),
            "gt_boxes": boxes, "gt_classes": classes,
            "gt_masks": (rng.uniform(size=(batch_size, g, m, m)) > 0.5).astype(np.float32),
            "sample_seed": rng.integers(0, 2**31 - 1, (batch_size, 2)).astype(np.int32)}


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(first call's seconds: compilation + one run, median seconds of `repeats` more)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def measure(config_name: str, size: int, batch_size: int, steps: int, precision: str,
            infer_batch: int, train: bool = True) -> dict:
    import keras
    from keras import ops

    from keras_maskrcnn.builder import build_model
    from keras_maskrcnn.config import get_config
    from keras_maskrcnn.solver import make_optimizer

    keras.config.set_dtype_policy(precision)
    config = get_config(config_name, image_size=(size, size), min_size=size, max_size=size,
                        batch_size=batch_size)
    model = build_model(config)
    result = {"backend": keras.backend.backend(), "precision": precision, "size": size,
              "batch": batch_size, "config": config_name}
    if train:
        model.compile(optimizer=make_optimizer(config, batch_size, 1000))
        batch = synthetic_batch(config, batch_size)

        def step():
            logs = model.train_on_batch(batch, return_dict=True)
            float(ops.convert_to_numpy(logs["loss"]))
        first, median = _timed(step, steps)
        result.update(train_first_s=round(first, 2), train_step_s=round(median, 4),
                      train_images_per_s=round(batch_size / median, 2))
    fn = model.inference_function()
    inputs = synthetic_batch(config, infer_batch, seed=1)
    feed = {k: ops.convert_to_tensor(inputs[k]) for k in ("images", "image_shape")}

    def infer():
        out = fn(feed)
        ops.convert_to_numpy(out["num_detections"])
    first, median = _timed(infer, steps)
    result.update(infer_first_s=round(first, 2), infer_call_s=round(median, 4),
                  infer_images_per_s=round(infer_batch / median, 2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="coco_r50_fpn")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--infer-batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "mixed_bfloat16", "mixed_float16"))
    parser.add_argument("--no-train", action="store_true")
    args = parser.parse_args()
    print(json.dumps(measure(args.config, args.size, args.batch_size, args.steps,
                             args.precision, args.infer_batch, not args.no_train)), flush=True)


if __name__ == "__main__":
    main()
