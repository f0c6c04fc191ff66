"""One-GPU throughput, without TensorFlow: our Mask R-CNN on JAX (and Keras's PyTorch backend)
against torchvision's maskrcnn_resnet50_fpn on the same GPU, sizes and batch. One run prints
one table; every measurement runs in its own process with a time limit, so the whole run stays
under about 8 minutes including compilation.

    python benchmarks/gpu.py                           # 1024 x 1024, batch 8, bf16 and float32
    python benchmarks/gpu.py --backends jax torch --size 800
    python benchmarks/gpu.py --smoke                   # tiny sizes on the CPU: checks the script

Anchors (training images/s on one GPU): NVIDIA's TF2 Mask R-CNN 28.6 (A100, AMP), PyTorch 24
(A100); Detectron2 62 on 8 V100s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def torchvision_main(size: int, batch: int, steps: int, precision: str, device: str) -> dict:
    """torchvision's maskrcnn_resnet50_fpn (random weights, 91 classes): SGD training steps
    and inference, on `device`; bf16 through `torch.autocast`."""
    import numpy as np
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=size, max_size=size).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    rng = np.random.default_rng(0)
    images = [torch.rand(3, size, size, device=device) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        y1, x1 = rng.uniform(0, 0.6, 5) * size, rng.uniform(0, 0.6, 5) * size
        hh, ww = rng.uniform(0.1, 0.4, 5) * size, rng.uniform(0.1, 0.4, 5) * size
        boxes = torch.tensor(np.stack([x1, y1, x1 + ww, y1 + hh], 1), dtype=torch.float32,
                             device=device)
        masks = torch.zeros(5, size, size, dtype=torch.uint8, device=device)
        for i, (a, b, c, d) in enumerate(boxes.int().tolist()):
            masks[i, b:d, a:c] = 1
        targets.append({"boxes": boxes, "labels": torch.randint(1, 91, (5,), device=device),
                        "masks": masks})
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                              enabled=precision == "mixed_bfloat16")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def train_step():
        with autocast:
            loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync()

    def infer():
        with torch.no_grad(), autocast:
            model(images)
        sync()

    model.train()
    train_first, train_s = _timed(train_step, steps)
    model.eval()
    infer_first, infer_s = _timed(infer, steps)
    return {"backend": "torchvision", "precision": precision, "train_first_s": train_first,
            "train_images_per_s": batch / train_s, "infer_first_s": infer_first,
            "infer_images_per_s": batch / infer_s}


def _timed(fn, steps: int) -> tuple[float, float]:
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return first, (time.perf_counter() - start) / steps


def run(command: list[str], env: dict, timeout: int) -> dict:
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", nargs="+", default=["jax"])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precisions", nargs="+", default=["mixed_bfloat16", "float32"])
    parser.add_argument("--timeout", type=int, default=150, help="seconds per measurement")
    parser.add_argument("--smoke", action="store_true",
                        help="128 x 128, batch 2, 1 step, on whatever device there is")
    parser.add_argument("--torchvision-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torchvision_worker:
        size, batch, steps, precision = args.torchvision_worker
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(json.dumps(torchvision_main(int(size), int(batch), int(steps), precision, device)))
        return
    if args.smoke:
        args.size, args.batch_size, args.steps = 128, 2, 1
    began = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "KERAS_MASKRCNN_BLOCK_TENSORFLOW": "1"}
    rows = []
    for precision in args.precisions:
        for backend in args.backends:
            rows.append(run([sys.executable, str(HERE / "backend_bench.py"), "--size",
                             str(args.size), "--batch-size", str(args.batch_size),
                             "--infer-batch", str(args.batch_size), "--steps", str(args.steps),
                             "--precision", precision],
                            {**env, "KERAS_BACKEND": backend}, args.timeout)
                        | {"backend": backend, "precision": precision})
        rows.append(run([sys.executable, __file__, "--torchvision-worker", str(args.size),
                         str(args.batch_size), str(args.steps), precision], env, args.timeout)
                    | {"backend": "torchvision", "precision": precision})
    print(f"R50-FPN, {args.size} x {args.size}, batch {args.batch_size}, "
          f"{args.steps} timed steps after the first")
    print(f"{'who':<12} {'precision':<15} {'train img/s':>11} {'infer img/s':>11} "
          f"{'first train s':>13}")
    for r in rows:
        if "error" in r:
            print(f"{r['backend']:<12} {r['precision']:<15} failed: {r['error']}")
            continue
        print(f"{r['backend']:<12} {r['precision']:<15} {r.get('train_images_per_s', 0):>11.2f} "
              f"{r['infer_images_per_s']:>11.2f} {r.get('train_first_s', 0):>13.1f}")
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
