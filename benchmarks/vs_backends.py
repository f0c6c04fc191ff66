"""CPU seconds per training step and per inference call on each Keras backend, side by side in
one run on this machine (each backend in its own process, one after the other), with the ratios
to TensorFlow and the CPU flags.

    python benchmarks/vs_backends.py                       # R50-FPN, 512 x 512, batch 1
    python benchmarks/vs_backends.py --size 800 --steps 5 --backends tensorflow jax

The first call of each backend (graph tracing / XLA compilation) is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu_description() -> str:
    flags = set()
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(shown) or 'none of avx2/avx512'}"


def run_backend(backend: str, arguments: list[str], timeout: int) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run([sys.executable, str(HERE / "backend_bench.py"), *arguments],
                          env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"backend": backend, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--config", default="coco_r50_fpn")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--timeout", type=int, default=1200)
    args = parser.parse_args()
    forwarded = ["--config", args.config, "--size", str(args.size), "--batch-size",
                 str(args.batch_size), "--steps", str(args.steps), "--precision", args.precision]
    print(f"CPU: {cpu_description()}")
    print(f"{args.config}, {args.size} x {args.size}, batch {args.batch_size}, {args.precision}, "
          f"median of {args.steps} after the first call")
    results = [run_backend(b, forwarded, args.timeout) for b in args.backends]
    base = next((r for r in results if r.get("backend") == "tensorflow" and "error" not in r),
                None)
    print(f"{'backend':<11} {'first train s':>13} {'train s/step':>12} {'vs TF':>6} "
          f"{'first infer s':>13} {'infer s':>8} {'vs TF':>6}")
    for r in results:
        if "error" in r:
            print(f"{r['backend']:<11} failed: {r['error']}")
            continue
        t_ratio = r["train_step_s"] / base["train_step_s"] if base else float("nan")
        i_ratio = r["infer_call_s"] / base["infer_call_s"] if base else float("nan")
        print(f"{r['backend']:<11} {r['train_first_s']:>13.1f} {r['train_step_s']:>12.3f} "
              f"{t_ratio:>6.2f} {r['infer_first_s']:>13.1f} {r['infer_call_s']:>8.3f} "
              f"{i_ratio:>6.2f}")


if __name__ == "__main__":
    main()
