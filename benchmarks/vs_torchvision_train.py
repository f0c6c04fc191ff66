"""The training-step half of `vs_torchvision.py`: one SGD step of torchvision's
`maskrcnn_resnet50_fpn` (FrozenBatchNorm, trainable backbone layers 3, as with pretrained weights)
against the converted copy of the same weights (preset `torchvision_r50_fpn`: `freeze_at` 2) in
float32, float32 with XLA and mixed bfloat16, on the same photo and annotations.

Each runtime is its own worker process (torch and TensorFlow must not share a process, and each
precision needs its own Keras dtype policy), answering one request per line on stdin with the
seconds of one step; the caller alternates them step by step. The batch: the square crop of a
COCO photo resized to `size` x `size` (batch 1) with eight elliptical instances from a COCO json
written next to it, read by torchvision through pycocotools and by us through `CocoDataset` /
`make_dataset` (decoded once and cached: the step alone is timed, as torch's is).

    python benchmarks/vs_torchvision.py --train-only [--train-size 800] [--repeats 3] [--trunk]

`--trunk` adds both runtimes' convolutional floor: forward and backward through backbone, FPN and
RPN head alone (same trainable layers, loss = mean of each feature map + 1e-3 x the sum of the RPN
outputs), i.e. the part of the step that both spend in the same oneDNN convolutions.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

NUM_CLASSES = 90  # object classes; torchvision's 91 with background
VARIANTS = {  # name -> (precision, XLA)
    "ours float32": ("float32", "off"),
    "ours float32 XLA": ("float32", "on"),
    "ours mixed bf16": ("mixed_bfloat16", "off"),
}
TRUNK_VARIANTS = ("torchvision trunk", "ours float32 trunk")


def write_training_data(workdir: Path, photo: np.ndarray, seed: int = 0) -> tuple[Path, Path]:
    """photo (the square crop) as a JPEG and a COCO json with eight ellipses on it."""
    from PIL import Image

    images = workdir / "train_images"
    images.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo).save(images / "photo.jpg", quality=95)
    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    annotations = []
    for i in range(8):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.05, 0.2) * h, rng.uniform(0.05, 0.2) * w
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        ys, xs = cy + ry * np.sin(t), cx + rx * np.cos(t)
        polygon = np.stack([xs, ys], 1).reshape(-1).round(2).tolist()
        x1, y1 = float(xs.min()), float(ys.min())
        annotations.append({
            "id": i + 1, "image_id": 1, "category_id": int(rng.integers(1, NUM_CLASSES + 1)),
            "segmentation": [polygon], "area": float(np.pi * ry * rx), "iscrowd": 0,
            "bbox": [x1, y1, float(xs.max()) - x1, float(ys.max()) - y1]})
    data = {"images": [{"id": 1, "file_name": "photo.jpg", "height": h, "width": w}],
            "annotations": annotations,
            "categories": [{"id": c, "name": f"class_{c}"} for c in range(1, NUM_CLASSES + 1)]}
    path = workdir / "train.json"
    path.write_text(json.dumps(data))
    return path, images


# ================================================================== workers
def _serve(step) -> int:
    """Warm-up step, then one timed step per request line."""
    step()
    print(json.dumps({"ready": True}), flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        loss = step()
        print(json.dumps({"seconds": time.perf_counter() - start, "loss": loss}), flush=True)
    return 0


def torch_train_worker(workdir: Path, size: int, threads: int, trunk: bool = False) -> int:
    import torch
    from pycocotools.coco import COCO
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # What maskrcnn_resnet50_fpn builds with pretrained weights: FrozenBN, layers 2-4 trained.
    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
    model = MaskRCNN(backbone, num_classes=NUM_CLASSES + 1, min_size=size, max_size=1333)
    state = dict(np.load(workdir / "state.npz"))
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items() if "num_batches_tracked" not in k},
        strict=False)
    if missing or unexpected:
        raise RuntimeError(f"state does not fit: missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    coco = COCO(str(workdir / "train.json"))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    from PIL import Image

    image = np.asarray(Image.open(workdir / "train_images" / "photo.jpg").convert("RGB"))
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0
    target = {
        "boxes": torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float32),
        "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
        "masks": torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])),
    }

    def step() -> float:
        losses = model([x], [target])
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        return float(total.detach())

    def trunk_step() -> float:
        images, _ = model.transform([x])
        features = list(model.backbone(images.tensors).values())
        logits, deltas = model.rpn.head(features)
        total = sum(f.mean() for f in features) + 1e-3 * (
            sum(t.sum() for t in logits) + sum(t.sum() for t in deltas))
        optimizer.zero_grad()
        total.backward()
        return float(total.detach())

    return _serve(trunk_step if trunk else step)


def tf_train_worker(workdir: Path, size: int, precision: str, jit: str,
                    trunk: bool = False) -> int:
    import tensorflow as tf

    from keras_maskrcnn.data import CocoDataset, make_dataset
    from keras_maskrcnn.runtime import RunEnvironment
    from keras_maskrcnn.saving import load_model_dir, read_model_config
    from keras_maskrcnn.solver import make_optimizer
    from keras_maskrcnn.training import make_train_step

    env = RunEnvironment.create(precision=precision, jit_compile=jit)
    model_dir = workdir / "converted"
    config = read_model_config(model_dir).replace(
        image_size=(size, size), min_size=size, max_size=size, train_min_sizes=(size,))
    model = load_model_dir(model_dir, config=config)
    model.compile(optimizer=make_optimizer(config, 1, 1000, env.precision))
    source = CocoDataset(workdir / "train.json", workdir / "train_images")
    data = make_dataset(source, config, training=True, batch_size=1, seed=0)
    iterator = iter(data.take(2).cache().repeat())
    if trunk:
        from profile_train_step import trunk_step  # this folder is on sys.path

        batch = next(iterator)[0]  # (inputs, targets) pairs as Keras takes them
        run = trunk_step(model, batch["images"], batch["image_shape"])
        return _serve(lambda: float(tf.reduce_sum(run()[0])))
    step_fn = make_train_step(model, env)
    return _serve(lambda: float(step_fn(iterator)["loss"]))


class StepWorker:
    """A worker subprocess; calling it times one training step."""

    def __init__(self, args: list[str]):
        self.process = subprocess.Popen([sys.executable, __file__, *args],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self) -> dict:
        while True:  # libraries print to stdout too (pycocotools): answers are JSON lines
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"a training worker stopped (exit {self.process.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def __call__(self) -> float:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return self._read()["seconds"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=120)


def compare_training(workdir: Path, photo: np.ndarray, size: int, repeats: int, threads: int,
                     variants: list[str]) -> dict[str, float]:
    """Median seconds per step of torchvision and each variant, alternating step by step.

    Workers start one at a time (warm-up, i.e. tracing or XLA compilation, is not timed)."""
    write_training_data(workdir, photo)
    workers: dict[str, StepWorker] = {}
    try:
        for name in ["torchvision", *variants]:
            start = time.perf_counter()
            trunk = ["--trunk"] if name in TRUNK_VARIANTS else []
            if name.startswith("torchvision"):
                args = ["--torch-train-worker", str(workdir), "--size", str(size),
                        "--threads", str(threads), *trunk]
            else:
                precision, jit = VARIANTS[name.removesuffix(" trunk")]
                args = ["--tf-train-worker", str(workdir), "--size", str(size),
                        "--precision", precision, "--jit", jit, *trunk]
            workers[name] = StepWorker(args)
            print(f"  {name}: ready (build + first step {time.perf_counter() - start:.0f} s)",
                  flush=True)
        times: dict[str, list[float]] = {name: [] for name in workers}
        for _ in range(repeats):
            for name, worker in workers.items():
                times[name].append(worker())
    finally:
        for worker in workers.values():
            worker.close()
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--torch-train-worker")
    parser.add_argument("--tf-train-worker")
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--jit", default="off")
    parser.add_argument("--trunk", action="store_true")
    args = parser.parse_args(argv)
    if args.torch_train_worker:
        return torch_train_worker(Path(args.torch_train_worker), args.size, args.threads,
                                  args.trunk)
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return tf_train_worker(Path(args.tf_train_worker), args.size, args.precision, args.jit,
                           args.trunk)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
