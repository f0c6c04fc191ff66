"""Export sizes and latency: Keras vs SavedModel vs TFLite (float32, float16, dynamic int8).

The `coco_r50_fpn` preset (ResNet-50 FPN, 80 classes, random weights with a fixed seed) on a
square S x S letterbox canvas (S = 512: min_size = max_size = 512) is exported to a SavedModel
(`serving_default`, uint8 pixels, resize in the graph) and to TFLite with each quantization;
then each runs the same 512 x 512 image. Printed: file sizes, conversion times and the median
latency over `--repeats` runs after `--warmup` runs, with the ratio to the Keras model (a
`tf.function` of `inference_model`, portable "gather" RoIAlign like the exports; the default
RoIAlign, "auto", is timed beside it when it resolves to the compiled op). The models take
turns within each timing round, so load from other processes spreads over all of them.

With random weights almost no box passes the 0.05 score threshold, so the NMS and mask work
after the box head is at its cheapest (the mask head still runs on all D padded boxes: static
shapes). All on the CPU; TensorFlow and LiteRT use all cores (`--threads` for LiteRT).

    python benchmarks/export_latency.py [--quick] [--size 512] [--repeats 5] [--keep DIR]

--quick: S = 256 and 3 repeats (the full R50 conversion at 512 takes minutes and several GiB).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import get_config
from keras_maskrcnn.export.saved_model import export_saved_model
from keras_maskrcnn.export.tflite import QUANTIZE_OPTIONS, export_tflite, letterbox_image
from keras_maskrcnn.model import MaskRCNN
from keras_maskrcnn.ops import custom_roi_align


def _size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def _interleaved_medians(runs: list, warmup: int, repeats: int) -> list[float]:
    """Median latency (ms) of each callable; the runs take turns within every round so that
    load from other processes on a shared machine spreads over all of them alike."""
    for run in runs:
        for _ in range(warmup):
            run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, bucket in zip(runs, times, strict=True):
            start = time.perf_counter()
            run()
            bucket.append(time.perf_counter() - start)
    return [1000.0 * statistics.median(bucket) for bucket in times]


def _image(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3)).astype(np.uint8)
    for _ in range(8):
        y, x = rng.integers(0, size - 64, 2)
        image[y:y + rng.integers(16, 64), x:x + rng.integers(16, 64)] = rng.integers(0, 255, 3)
    return image


def _keras_runner(model: MaskRCNN, inputs: dict):
    fn = tf.function(lambda a, b: model.inference_graph()({"images": a, "image_shape": b},
                                                        training=False))
    args = (tf.constant(inputs["images"]), tf.constant(inputs["image_shape"]))
    return lambda: {k: v.numpy() for k, v in fn(*args).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="S = 256, 3 repeats")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--keep", help="write the exports here (default: a temporary folder)")
    args = parser.parse_args()
    size = 256 if args.quick else args.size
    repeats = 3 if args.quick else args.repeats
    from ai_edge_litert.interpreter import Interpreter

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="kmr_export_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"coco_r50_fpn, 80 classes, random weights, {size}x{size} canvas; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"TF {tf.__version__}, LiteRT threads {args.threads}")
    keras.utils.set_random_seed(0)
    config = get_config("coco_r50_fpn", num_classes=80, image_size=(size, size),
                        min_size=size, max_size=size)
    model = build_model(config, roi_align_implementation="gather")
    image = _image(size)
    inputs = letterbox_image(image, size)

    rows = []  # (name, size MiB or None, export seconds or None, runner)
    rows.append(("Keras tf.function (gather)", None, None, _keras_runner(model, inputs)))
    if custom_roi_align.is_available():
        auto = build_model(config)
        auto.inference_graph().set_weights(model.inference_graph().get_weights())
        rows.append(("Keras tf.function (auto: custom op)", None, None,
                     _keras_runner(auto, inputs)))

    start = time.perf_counter()
    # one square canvas: the image is S x S (bucketed exports: benchmarks/vs_torchvision.py)
    saved = export_saved_model(model, workdir / "saved_model" / "1", buckets="square")
    seconds = time.perf_counter() - start
    serving = tf.saved_model.load(str(saved)).signatures["serving_default"]
    pixels = tf.constant(image[None])
    rows.append(("SavedModel serving_default", _size_mib(saved), seconds,
                 lambda: {k: v.numpy() for k, v in serving(images=pixels).items()}))

    for quantize in QUANTIZE_OPTIONS:
        start = time.perf_counter()
        path = export_tflite(model, workdir / f"model_{quantize}.tflite", input_size=size,
                             quantize=quantize)
        seconds = time.perf_counter() - start
        runner = Interpreter(model_path=str(path), num_threads=args.threads) \
            .get_signature_runner("serving_default")
        rows.append((f"TFLite {quantize}", _size_mib(path), seconds,
                     lambda r=runner: r(images=inputs["images"],
                                        image_shape=inputs["image_shape"])))
        print(f"  exported TFLite {quantize} in {seconds:.0f} s", flush=True)

    detections = [int(np.asarray(run()["num_detections"]).reshape(-1)[0])
                  for _, _, _, run in rows]
    medians = _interleaved_medians([run for *_, run in rows], args.warmup, repeats)
    results = [(name, mib, seconds, ms, count) for (name, mib, seconds, _), ms, count
               in zip(rows, medians, detections, strict=True)]
    base = results[0][3]
    print(f"\n| model | size (MiB) | export (s) | latency (ms, median of {repeats}) "
          "| vs Keras | detections |")
    print("|---|---|---|---|---|---|")
    for name, mib, seconds, ms, detections in results:
        size_text = "-" if mib is None else f"{mib:.1f}"
        export_text = "-" if seconds is None else f"{seconds:.0f}"
        print(f"| {name} | {size_text} | {export_text} | {ms:.0f} | {ms / base:.2f}x "
              f"| {detections} |")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
