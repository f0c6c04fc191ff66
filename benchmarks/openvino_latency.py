"""CPU latency of OpenVINO against TensorFlow: Keras vs SavedModel vs OpenVINO on three photos.

A full-size `coco_r50_fpn` (ResNet-50 FPN, 80 classes, 800 / 1333, per-image canvases) is built
with random weights from a fixed seed (no download); its class logits are scaled up so that
scores spread and each photo keeps detections (`--logit-scale`; with plain random weights
almost nothing passes the 0.05 score threshold, which makes NMS and the mask head cheaper than
for a trained model). Timed per photo, the runtimes taking turns within each round (load from
other processes spreads over all of them), median of `--repeats` rounds after one warm-up
call each:

- Keras graph: the inference graph alone (pure-TF "gather" RoIAlign, the graph the exports
  hold) on the photo's per-image canvas, letterboxed input prepared outside the timing;
- Keras predict_images: the whole Keras path (resize, default RoIAlign, masks pasted);
- SavedModel `serving_default` (uint8 pixels in, resize in the graph, canvas buckets "auto");
- OpenVINO float32 / bfloat16: `keras-maskrcnn export --format openvino` of the photo's canvas
  (one IR per canvas, the Keras graph's inputs), compiled for the CPU in latency mode with
  INFERENCE_PRECISION_HINT f32 / bf16 (bf16 only where the CPU has AVX512_BF16 or AMX,
  OpenVINO's own default there).

Photos (tests/data/coco-val2017-10, as benchmarks/vs_torchvision.py): a landscape (640 x 480 ->
800 x 1088 canvas), a portrait (480 x 640 -> 1088 x 800) and a square crop (480 x 480 ->
800 x 800). Printed: the CPU model and its bf16 flags (/proc/cpuinfo), the versions, the
latency table (seconds), the ratios to the Keras graph and the SavedModel, detections per photo
and the largest box difference between OpenVINO float32 and the Keras graph.

    python benchmarks/openvino_latency.py [--quick] [--repeats 3] [--threads N] [--keep DIR]

--quick: min_size 320 / max_size 512, one round. The three full-size conversions take about a
minute each and a few GiB of memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_torchvision import load_photos  # noqa: E402  (this folder)

SEED = 0


def _timed(fn):
    def run(photo):
        start = time.perf_counter()
        count = fn(photo)
        return time.perf_counter() - start, count
    return run


def openvino_runners(model, photos: dict, workdir: Path, threads: int | None,
                     bf16: bool) -> tuple[list[tuple[str, object]], dict]:
    """(name, runner) of OpenVINO float32 (and bfloat16) on each photo's per-image canvas,
    and the prepared inputs by photo; runner(photo) -> (seconds, detections). `model`: a
    MaskRCNN or a model directory."""
    from keras_maskrcnn.data.pipeline import make_inference_inputs
    from keras_maskrcnn.export.openvino import compile_openvino, export_openvino
    from keras_maskrcnn.export.saved_model import export_ready_model
    from keras_maskrcnn.transform import canvas_for

    model = export_ready_model(model)
    config = model.config
    canvases = {name: canvas_for(*image.shape[:2], config) for name, image in photos.items()}
    paths = {}
    for canvas in sorted(set(canvases.values())):
        start = time.perf_counter()
        paths[canvas] = export_openvino(model, workdir / f"openvino_{canvas[0]}x{canvas[1]}.xml",
                                        input_size=canvas)
        print(f"  OpenVINO {canvas[0]}x{canvas[1]} exported in {time.perf_counter() - start:.0f} s",
              flush=True)
    inputs = {name: make_inference_inputs([image], config, canvases[name])
              for name, image in photos.items()}
    precisions = ["float32"] + (["bfloat16"] if bf16 else [])
    runners = []
    for precision in precisions:
        compiled = {canvas: compile_openvino(path, precision, threads)
                    for canvas, path in paths.items()}

        def run(photo, compiled=compiled):
            batch = inputs[photo]
            out = compiled[canvases[photo]]({"images": batch["images"],
                                             "image_shape": batch["image_shape"]})
            return int(out["num_detections"][0])
        runners.append((f"OpenVINO {precision}", _timed(run)))
    return runners, {name: (canvases[name], inputs[name]) for name in photos}


def _model(args):
    import keras

    from keras_maskrcnn.builder import build_model
    from keras_maskrcnn.config import get_config

    keras.utils.set_random_seed(SEED)
    config = get_config("coco_r50_fpn", num_classes=80, min_size=args.min_size,
                        max_size=args.max_size, canvas="per_image")
    model = build_model(config)
    logits = model.roi_heads.box_head.class_logits
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * args.logit_scale, bias])
    return model


def _runners(model, photos, workdir: Path, args):
    import tensorflow as tf

    from keras_maskrcnn.builder import model_for_canvas, rebuilt
    from keras_maskrcnn.export import export_saved_model
    from keras_maskrcnn.inference import predict_images

    gather = rebuilt(model, roi_align_implementation="gather")
    ov_runners, prepared = openvino_runners(model, photos, workdir, args.threads, args.bf16)
    graphs = {name: (model_for_canvas(gather, canvas).inference_function(),
                     {k: tf.constant(batch[k]) for k in ("images", "image_shape")})
              for name, (canvas, batch) in prepared.items()}

    def graph(p):
        fn, inputs = graphs[p]
        return int(fn(inputs)["num_detections"].numpy()[0])

    start = time.perf_counter()
    saved = export_saved_model(model, workdir / "saved_model" / "1")
    print(f"  SavedModel (buckets auto) exported in {time.perf_counter() - start:.0f} s",
          flush=True)
    serving = tf.saved_model.load(str(saved)).signatures["serving_default"]
    pixels = {k: tf.constant(v[None]) for k, v in photos.items()}
    runners = [
        ("Keras graph (gather)", _timed(graph)),
        ("Keras predict_images", _timed(
            lambda p: len(predict_images(model, [photos[p]])[0]["scores"]))),
        ("SavedModel", _timed(
            lambda p: int(serving(images=pixels[p])["num_detections"].numpy()[0]))),
        *ov_runners,
    ]
    return runners, graphs, prepared


def _box_difference(graphs, prepared, workdir: Path, threads) -> float:
    """Largest |box difference| (canvas px) between OpenVINO float32 and the Keras graph over
    the photos' detections (same count required, else inf)."""
    from keras_maskrcnn.export.openvino import compile_openvino, run_compiled

    worst = 0.0
    for name, (canvas, batch) in prepared.items():
        fn, inputs = graphs[name]
        ref = {k: v.numpy() for k, v in fn(inputs).items()}
        compiled = compile_openvino(workdir / f"openvino_{canvas[0]}x{canvas[1]}.xml",
                                    "float32", threads)
        out = run_compiled(compiled, batch)
        n = int(ref["num_detections"][0])
        if n != int(out["num_detections"][0]):
            return float("inf")
        worst = max(worst, float(np.abs(ref["detection_boxes"][0, :n]
                                        - out["detection_boxes"][0, :n]).max(initial=0.0)))
    return worst


def print_header(args) -> None:
    import openvino
    import tensorflow as tf

    from keras_maskrcnn.runtime import cpu_flags, cpu_model

    flags = cpu_flags()
    present = [f for f in ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
               if f in flags]
    print(f"\n{cpu_model()}, {os.cpu_count()} cores (threads {args.threads or 'default'}); "
          f"CPU flags: {', '.join(present) or 'no AVX512 / AMX'}; "
          f"avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}, "
          f"amx {'yes' if 'amx_tile' in flags else 'no'}; TF {tf.__version__}, OpenVINO "
          f"{openvino.__version__.split('-')[0]}; coco_r50_fpn random weights (seed {SEED}, "
          f"class logits x{args.logit_scale}), min_size {args.min_size}, max_size "
          f"{args.max_size}; median of {args.repeats} round(s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="320 / 512 and one round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="OpenVINO inference threads (default: one per core)")
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--logit-scale", type=float, default=300.0)
    parser.add_argument("--bf16", dest="bf16", action="store_true", default=None,
                        help="also time OpenVINO bfloat16 (default: where the CPU has native "
                             "bf16)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    parser.add_argument("--keep", help="keep the exports here")
    args = parser.parse_args(argv)
    if args.quick:
        args.min_size, args.max_size, args.repeats = 320, 512, 1
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_maskrcnn.runtime import cpu_has_bf16

    if args.bf16 is None:
        args.bf16 = cpu_has_bf16()
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="kmr_openvino_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    photos = load_photos()
    model = _model(args)
    runners, graphs, prepared = _runners(model, photos, workdir, args)
    names = [name for name, _ in runners]
    counts = {(n, p): run(p)[1] for n, run in runners for p in photos}  # warm-up
    times = {(n, p): [] for n in names for p in photos}
    for _ in range(args.repeats):
        for photo in photos:
            for name, run in runners:
                times[(name, photo)].append(run(photo)[0])
    median = {k: statistics.median(v) for k, v in times.items()}
    diff = _box_difference(graphs, prepared, workdir, args.threads)
    print_header(args)
    print_table(names, median, counts, photos, prepared, diff)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def print_table(names, median, counts, photos, prepared, box_diff: float) -> None:
    print("\n| photo (canvas) | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for photo, image in photos.items():
        h, w = prepared[photo][0]
        print(f"| {photo} {image.shape[0]}x{image.shape[1]} ({h}x{w}) | "
              + " | ".join(f"{median[(n, photo)]:.3f} s" for n in names) + " |")
    print("\nratios (time / time; < 1 is faster):")
    print("| ratio | " + " | ".join(photos) + " |")
    print("|---" * (len(photos) + 1) + "|")
    for a in [n for n in names if n.startswith("OpenVINO")]:
        for b in ("Keras graph (gather)", "Keras predict_images", "SavedModel"):
            print(f"| {a} / {b} | " + " | ".join(
                f"{median[(a, p)] / median[(b, p)]:.2f}" for p in photos) + " |")
    print("\ndetections per photo: " + ", ".join(
        f"{n}: " + "/".join(str(counts[(n, p)]) for p in photos) for n in names))
    print(f"OpenVINO float32 vs Keras graph: largest box difference {box_diff:.2e} canvas px")


if __name__ == "__main__":
    raise SystemExit(main())
