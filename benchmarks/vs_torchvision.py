"""CPU latency against torchvision: one set of `maskrcnn_resnet50_fpn` weights, every runtime.

torchvision 0.29's `maskrcnn_resnet50_fpn` is built from a fixed seed (no download) and
calibrated so that it behaves like a trained model in cost: BatchNorm statistics from the photos,
prediction layers scaled so that scores spread out (about 100 detections per photo, the
torchvision default cap, as a COCO model at score threshold 0.05 often gives). Its state dict is
converted (`keras_maskrcnn.convert.torchvision`, preset `torchvision_r50_fpn`: 800 / 1333, the
per-image canvas) and then timed, per photo, in:

- torchvision (eager, `torch.inference_mode`, its own transform and mask pasting);
- Keras `predict_images` (per-image canvas, default RoIAlign, masks pasted at full size);
- Keras graph: the inference graph alone on the letterboxed input (pure-TF RoIAlign, the
  graph the exports hold), no pasting;
- SavedModel `serving_default` (uint8 pixels in, canvas buckets "auto", 28 x 28 masks out);
- TFLite float32 (LiteRT, one signature per bucket of the three photos);
- with `--bf16` (default where the CPU computes bfloat16 natively): Keras `predict_images` and
  the SavedModel exported with `--precision bfloat16`;
- OpenVINO float32 (and bfloat16 with `--bf16`): one IR per photo's canvas (`export --format
  openvino`), the Keras graph's inputs, CPU plugin in latency mode (benchmarks/openvino_latency.py
  builds these runners); on by default where openvino is importable (`--no-openvino`).

Photos: tests/data/coco-val2017-10, a landscape (640 x 480 -> 800 x 1088 canvas), a portrait
(480 x 640 -> 1088 x 800) and a square crop (480 x 480 -> 800 x 800). torch and TensorFlow must not
share a process (importing torch after TensorFlow segfaults), so torchvision runs in a worker
subprocess (this file with `--torch-worker`) that times one call per request on a pipe; the
runtimes take turns photo by photo within each round, so load from other processes spreads over
all of them. Printed: a table of median seconds over `--repeats` rounds (after one warm-up
call each), the ratios, the CPU model and its bf16 support.

Then the training step (`vs_torchvision_train.py`): torchvision (FrozenBN, trainable layers 3)
against ours in float32, float32 with XLA and mixed bfloat16 (where the CPU has native bf16), on
the square photo at `--train-size` (800: 800 x 800, batch 1), each in its own worker process,
alternating step by step; `--trunk` adds each runtime's backbone + FPN + RPN head forward and
backward alone, the convolutional floor both steps share.

    python benchmarks/vs_torchvision.py [--quick] [--repeats 3] [--threads N] [--no-tflite]
        [--no-openvino]
        [--no-train | --train-only] [--train-size 800] [--no-xla] [--trunk]

--quick: min_size 320 / max_size 512 (canvases 320 x 448, 448 x 320, 320 x 320), training at
320 x 320, one round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = {  # name -> (file, crop to a square)
    "landscape": ("000000573008.jpg", False),
    "portrait": ("000000074646.jpg", False),
    "square": ("000000573008.jpg", True),
}
SEED = 0


def load_photos() -> dict[str, np.ndarray]:
    from PIL import Image

    photos = {}
    for name, (file_name, square) in PHOTOS.items():
        image = np.asarray(Image.open(ROOT / "tests" / "data" / "coco-val2017-10" / "images"
                                      / file_name).convert("RGB"))
        if square:
            side = min(image.shape[:2])
            top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
            image = np.ascontiguousarray(image[top:top + side, left:left + side])
        photos[name] = image
    return photos


# ================================================================== the torch worker
def _set_spread(torch, layer, outputs, target: float) -> None:
    """Scales a prediction layer so that its outputs have standard deviation `target`."""
    flat = torch.cat([o.reshape(-1) for o in outputs])
    with torch.no_grad():
        factor = target / flat.std()
        layer.weight.mul_(factor)
        layer.bias.mul_(factor)


def _calibrated_torchvision(torch, images, min_size: int, max_size: int):
    """maskrcnn_resnet50_fpn from SEED: random BatchNorm affine, BatchNorm statistics from the
    images (half size), RPN convs He-initialised, prediction layers scaled to spread scores
    (as tests/test_torchvision_parity.py calibrates its reference)."""
    from torch import nn
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(SEED)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                  min_size=min_size, max_size=max_size).eval()
    generator = torch.Generator().manual_seed(SEED + 1)
    x = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float() / 255.0
         for im in images]
    rpn, rh = model.rpn, model.roi_heads
    captured = {}
    rpn.head.register_forward_hook(lambda m, i, o: captured.__setitem__("rpn", o))
    with torch.no_grad():
        batch, _ = model.transform(x)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
                module.reset_running_stats()
                module.momentum = None
            elif isinstance(module, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)) and \
                    module.bias is not None:
                module.bias.normal_(0.0, 0.05, generator=generator)
        for module in rpn.head.conv.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu",
                                        generator=generator)
        model.backbone.train()
        model.backbone(nn.functional.interpolate(batch.tensors, scale_factor=0.5,
                                                 mode="bilinear"))
        model.backbone.eval()
        features = model.backbone(batch.tensors)
        objectness, deltas = rpn.head(list(features.values())[1:])
        _set_spread(torch, rpn.head.cls_logits, objectness, 2.0)
        _set_spread(torch, rpn.head.bbox_pred, deltas, 0.2)
        proposals, _ = rpn(batch, features)
        sizes = batch.image_sizes
        pooled = rh.box_roi_pool(features, [p[:100] for p in proposals], sizes)
        class_logits, box_deltas = rh.box_predictor(rh.box_head(pooled))
        _set_spread(torch, rh.box_predictor.cls_score, [class_logits], 2.5)
        _set_spread(torch, rh.box_predictor.bbox_pred, [box_deltas], 0.5)
        pooled = rh.mask_roi_pool(features, [p[:20] for p in proposals], sizes)
        _set_spread(torch, rh.mask_predictor.mask_fcn_logits,
                    [rh.mask_predictor(rh.mask_head(pooled))], 3.0)
    return model


def torch_worker(workdir: Path, min_size: int, max_size: int, threads: int) -> int:
    """Builds, calibrates and saves the weights (state.npz), then answers one JSON request per
    line on stdin ({"photo": name}) with {"seconds": s, "detections": n} on stdout."""
    import torch
    import torchvision

    torch.set_num_threads(threads)
    data = np.load(workdir / "photos.npz")
    photos = {k: data[k] for k in data.files}
    model = _calibrated_torchvision(torch, list(photos.values()), min_size, max_size)
    np.savez(workdir / "state.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).permute(2, 0, 1).float() / 255.0
               for k, v in photos.items()}
    print(json.dumps({"ready": True, "torch": torch.__version__,
                      "torchvision": torchvision.__version__, "threads": threads}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        with torch.inference_mode():
            start = time.perf_counter()
            out = model([tensors[request["photo"]]])[0]
            seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "detections": len(out["scores"])}), flush=True)
    return 0


class TorchRunner:
    """The worker subprocess; each call times one torchvision inference."""

    def __init__(self, workdir: Path, min_size: int, max_size: int, threads: int):
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--torch-worker", str(workdir), "--min-size",
             str(min_size), "--max-size", str(max_size), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the torch worker stopped (exit {self.process.wait()})")
        return json.loads(line)

    def __call__(self, photo: str) -> tuple[float, int]:
        self.process.stdin.write(json.dumps({"photo": photo}) + "\n")
        self.process.stdin.flush()
        answer = self._read()
        return answer["seconds"], answer["detections"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


# ================================================================== the TensorFlow side
def _timed(fn):
    def run(photo):
        start = time.perf_counter()
        count = fn(photo)
        return time.perf_counter() - start, count
    return run


def tf_runners(model_dir: Path, workdir: Path, photos: dict, args) -> list[tuple[str, object]]:
    """(name, runner) of every TensorFlow runtime; runner(photo) -> (seconds, detections)."""
    import tensorflow as tf

    from keras_maskrcnn.builder import model_for_canvas
    from keras_maskrcnn.data.pipeline import make_inference_inputs
    from keras_maskrcnn.export import export_saved_model, export_tflite
    from keras_maskrcnn.export.buckets import bucket_for, format_canvas
    from keras_maskrcnn.export.tflite import bucket_inputs, metadata_path
    from keras_maskrcnn.inference import predict_images
    from keras_maskrcnn.precision import with_precision
    from keras_maskrcnn.saving import load_model_dir
    from keras_maskrcnn.transform import canvas_for

    model = load_model_dir(model_dir)  # default RoIAlign ("auto": the custom op if built)
    gather = load_model_dir(model_dir, roi_align_implementation="gather")
    config = model.config
    runners = [("Keras predict_images", _timed(
        lambda p: len(predict_images(model, [photos[p]])[0]["scores"])))]

    graph_inputs = {}
    for name, image in photos.items():
        canvas = canvas_for(*image.shape[:2], config)
        batch = make_inference_inputs([image], config, canvas)
        graph_inputs[name] = (model_for_canvas(gather, canvas).inference_function(),
                              {k: tf.constant(batch[k]) for k in ("images", "image_shape")})

    def graph(p):
        fn, inputs = graph_inputs[p]
        return int(fn(inputs)["num_detections"].numpy()[0])
    runners.append(("Keras graph (gather)", _timed(graph)))

    def saved_runner(path):
        serving = tf.saved_model.load(str(path)).signatures["serving_default"]
        pixels = {k: tf.constant(v[None]) for k, v in photos.items()}
        return _timed(lambda p: int(serving(images=pixels[p])["num_detections"].numpy()[0]))

    start = time.perf_counter()
    path = export_saved_model(model_dir, workdir / "saved_model" / "1")
    print(f"  SavedModel (buckets auto) exported in {time.perf_counter() - start:.0f} s",
          flush=True)
    runners.append(("SavedModel", saved_runner(path)))

    if args.tflite:
        from ai_edge_litert.interpreter import Interpreter

        canvases = sorted({bucket_for(*im.shape[:2], _auto(config), config.min_size,
                                      config.max_size) for im in photos.values()})
        start = time.perf_counter()
        tfl = export_tflite(model_dir, workdir / "model.tflite",
                            buckets=",".join(map(format_canvas, canvases)))
        print(f"  TFLite ({', '.join(map(format_canvas, canvases))}) exported in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        meta = json.loads(metadata_path(tfl).read_text())
        interpreter = Interpreter(model_path=str(tfl), num_threads=args.threads)
        prepared = {}
        for name, image in photos.items():
            key, inputs = bucket_inputs(image, meta)
            prepared[name] = (interpreter.get_signature_runner(key), inputs)

        def lite(p):
            runner, inputs = prepared[p]
            out = runner(images=inputs["images"], image_shape=inputs["image_shape"])
            return int(out["num_detections"][0])
        runners.append(("TFLite float32", _timed(lite)))

    if args.openvino:
        from openvino_latency import openvino_runners  # this folder is on sys.path

        ov_runners, _ = openvino_runners(model_dir, photos, workdir, args.threads, args.bf16)
        runners += ov_runners

    if args.bf16:
        low = with_precision(model, "bfloat16")
        runners.append(("Keras predict_images bf16", _timed(
            lambda p: len(predict_images(low, [photos[p]])[0]["scores"]))))
        start = time.perf_counter()
        path = export_saved_model(model_dir, workdir / "saved_model_bf16" / "1",
                                  precision="bfloat16")
        print(f"  SavedModel bf16 exported in {time.perf_counter() - start:.0f} s", flush=True)
        runners.append(("SavedModel bf16", saved_runner(path)))
    return runners


def _auto(config):
    from keras_maskrcnn.export.buckets import auto_buckets

    return auto_buckets(config.min_size, config.max_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="320 / 512 and one round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--no-tflite", dest="tflite", action="store_false")
    parser.add_argument("--openvino", dest="openvino", action="store_true", default=None,
                        help="time OpenVINO IRs too (default: where openvino is importable)")
    parser.add_argument("--no-openvino", dest="openvino", action="store_false")
    parser.add_argument("--bf16", dest="bf16", action="store_true", default=None,
                        help="also time bfloat16 (default: where the CPU has native bf16)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    parser.add_argument("--no-train", dest="train", action="store_false",
                        help="skip the training-step comparison")
    parser.add_argument("--train-only", action="store_true",
                        help="only the training-step comparison")
    parser.add_argument("--train-size", type=int, default=800)
    parser.add_argument("--no-xla", dest="xla", action="store_false",
                        help="leave the XLA training step out (its compilation takes minutes)")
    parser.add_argument("--trunk", action="store_true",
                        help="also time backbone + FPN + RPN head forward and backward alone "
                             "(both runtimes' convolutional floor of the training step)")
    parser.add_argument("--keep", help="keep the weights and exports here")
    parser.add_argument("--torch-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_worker:
        return torch_worker(Path(args.torch_worker), args.min_size, args.max_size, args.threads)
    if args.quick:
        args.min_size, args.max_size, args.repeats, args.train_size = 320, 512, 1, 320
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from keras_maskrcnn.runtime import cpu_has_bf16

    if args.bf16 is None:
        args.bf16 = cpu_has_bf16()
    if args.openvino is None:
        import importlib.util

        args.openvino = importlib.util.find_spec("openvino") is not None
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="kmr_vs_torchvision_"))
    workdir.mkdir(parents=True, exist_ok=True)
    photos = load_photos()
    np.savez(workdir / "photos.npz", **photos)
    print(f"calibrating torchvision weights (seed {SEED}) in a worker process ...", flush=True)
    torch_run = TorchRunner(workdir, args.min_size, args.max_size, args.threads)  # before TF
    inference = None
    try:
        from keras_maskrcnn.convert.torchvision import convert_torchvision

        start = time.perf_counter()
        model_dir = convert_torchvision(workdir / "state.npz", workdir / "converted",
                                        min_size=args.min_size, max_size=args.max_size)
        print(f"  converted in {time.perf_counter() - start:.0f} s", flush=True)
        if not args.train_only:
            inference = time_inference(torch_run, model_dir, workdir, photos, args)
            print_header(torch_run, args)
            print_inference(*inference, photos, args)
    finally:
        torch_run.close()
    training = None
    if args.train or args.train_only:
        from vs_torchvision_train import (  # this folder is on sys.path
            TRUNK_VARIANTS,
            VARIANTS,
            compare_training,
        )

        variants = [v for v in VARIANTS if (args.xla or "XLA" not in v)
                    and (args.bf16 or "bf16" not in v)]
        variants += list(TRUNK_VARIANTS) if args.trunk else []
        print(f"training step at {args.train_size}x{args.train_size}, batch 1: "
              f"{', '.join(['torchvision', *variants])} ...", flush=True)
        training = compare_training(workdir, photos["square"], args.train_size, args.repeats,
                                    args.threads, variants)

    if training is not None:
        print_header(torch_run, args)
        print_training(training, args.train_size)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def print_header(torch_run, args) -> None:
    import tensorflow as tf

    from keras_maskrcnn.runtime import cpu_flags, cpu_has_bf16, cpu_model

    flags = cpu_flags()
    bf16_flags = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    print(f"\n{cpu_model()}, {os.cpu_count()} cores (threads {args.threads}); native bf16: "
          f"{cpu_has_bf16()} ({', '.join(bf16_flags) or 'no AVX512_BF16 / AMX'}); "
          f"torch {torch_run.info['torch']}, torchvision {torch_run.info['torchvision']}, "
          f"TF {tf.__version__}; min_size {args.min_size}, max_size {args.max_size}; median "
          f"of {args.repeats} round(s)", flush=True)


def time_inference(torch_run, model_dir: Path, workdir: Path, photos: dict, args):
    """(names, median seconds per (runtime, photo), detections per (runtime, photo))."""
    runners = [("torchvision", torch_run)] + tf_runners(model_dir, workdir, photos, args)
    names = [name for name, _ in runners]
    times = {(n, p): [] for n in names for p in photos}
    counts = {}
    for name, run in runners:  # warm-up: traces, per-canvas rebuilds, allocations
        for photo in photos:
            counts[(name, photo)] = run(photo)[1]
    for _ in range(args.repeats):
        for photo in photos:
            for name, run in runners:
                times[(name, photo)].append(run(photo)[0])
    return names, {k: statistics.median(v) for k, v in times.items()}, counts


def print_inference(names, median, counts, photos, args) -> None:
    from keras_maskrcnn.config import get_config
    from keras_maskrcnn.transform import canvas_for

    print("\n| photo (canvas) | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    config = get_config("torchvision_r50_fpn", min_size=args.min_size, max_size=args.max_size)
    for photo, image in photos.items():
        h, w = canvas_for(*image.shape[:2], config)
        cells = [f"{median[(n, photo)]:.3f} s" for n in names]
        print(f"| {photo} {image.shape[0]}x{image.shape[1]} ({h}x{w}) | " + " | ".join(cells)
              + " |")
    print("\nratios (time / time; < 1 is faster):")
    pairs = [("SavedModel", "Keras predict_images"), ("SavedModel", "Keras graph (gather)"),
             ("Keras predict_images", "torchvision"), ("SavedModel", "torchvision"),
             ("TFLite float32", "torchvision"), ("TFLite float32", "Keras graph (gather)"),
             ("Keras predict_images bf16", "Keras predict_images"),
             ("SavedModel bf16", "SavedModel"), ("SavedModel bf16", "torchvision"),
             ("OpenVINO float32", "Keras graph (gather)"), ("OpenVINO float32", "SavedModel"),
             ("OpenVINO float32", "torchvision"), ("OpenVINO bfloat16", "OpenVINO float32"),
             ("OpenVINO bfloat16", "SavedModel bf16"), ("OpenVINO bfloat16", "torchvision")]
    print("| ratio | " + " | ".join(photos) + " |")
    print("|---" * (len(photos) + 1) + "|")
    for a, b in pairs:
        if a in names and b in names:
            print(f"| {a} / {b} | " + " | ".join(
                f"{median[(a, p)] / median[(b, p)]:.2f}" for p in photos) + " |")
    print("\ndetections per photo: " + ", ".join(
        f"{n}: " + "/".join(str(counts[(n, p)]) for p in photos) for n in names))


def print_training(median: dict[str, float], size: int) -> None:
    print(f"\ntraining step, {size}x{size}, batch 1 (SGD, FrozenBN, res2 and stem frozen):")
    print("| runtime | s/step | / torchvision |\n|---|---|---|")
    for name, seconds in median.items():
        print(f"| {name} | {seconds:.3f} | {seconds / median['torchvision']:.2f} |")
    if "ours float32 trunk" in median:
        print("(trunk: backbone + FPN + RPN head forward and backward alone; ours / torchvision "
              f"trunk {median['ours float32 trunk'] / median['torchvision trunk']:.2f})")


if __name__ == "__main__":
    raise SystemExit(main())
