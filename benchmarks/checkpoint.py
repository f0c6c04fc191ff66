"""Seconds per training checkpoint (weights + optimizer state, written atomically) of a preset.

    python benchmarks/checkpoint.py --config coco_r50_fpn --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import get_config
from keras_maskrcnn.saving import restore_checkpoint, save_checkpoint
from keras_maskrcnn.solver import make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="coco_r50_fpn")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = get_config(args.config)
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config, 16, 90000))
    model.optimizer.build(model.trainable_variables)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        saves, loads = [], []
        for step in range(1, args.repeats + 1):
            start = time.perf_counter()
            path = save_checkpoint(model, out, step, 1, keep=2, run={})
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            restore_checkpoint(model, path)
            loads.append(time.perf_counter() - start)
        size = path.stat().st_size / 2**20
    print(f"{config.name}: checkpoint {size:.0f} MiB, save {min(saves):.2f} s "
          f"(median {sorted(saves)[len(saves) // 2]:.2f}), restore {min(loads):.2f} s")


if __name__ == "__main__":
    main()
