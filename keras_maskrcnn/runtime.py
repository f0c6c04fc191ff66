"""Where and how a run executes: distribution strategy, precision, XLA, CPU features.

`RunEnvironment.create(strategy=..., precision=..., jit_compile=...)` is the one place these
choices are resolved ("auto" included) before any model is built; it must run before TensorFlow
initialises its devices when `cpu_devices` splits the CPU into logical devices (how the
multi-device paths are exercised on a machine without GPUs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import keras
import tensorflow as tf

logger = logging.getLogger("keras_maskrcnn")

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = ("auto", "on", "off")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512_BF16 or AMX-BF16)."""
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


def gpus_with_bf16() -> bool:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return False
    for gpu in gpus:
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if not capability or capability[0] < 8:
            return False
    return True


def resolve_precision(precision: str) -> str:
    """"auto" -> mixed_bfloat16 where the hardware runs bf16 natively (GPU compute capability
    >= 8, or a CPU with AVX512_BF16 / AMX), else float32. Others are returned as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "mixed_bfloat16" if gpus_with_bf16() else "float32"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def split_cpu(count: int) -> None:
    """Splits the CPU into `count` logical devices (before TF initialises its devices)."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as err:
        raise RuntimeError(f"cannot split the CPU into {count} devices after TensorFlow "
                           f"started: {err}") from None


def make_strategy(name: str) -> tf.distribute.Strategy:
    """"auto": mirrored over the GPUs when there are several, else the default strategy;
    "one_device": the first GPU (or the CPU); "mirrored": all local GPUs (or the logical CPU
    devices); "multi_worker": `MultiWorkerMirroredStrategy` from the `TF_CONFIG` variable."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "multi_worker":  # first: collectives must be configured before TF starts
        if "TF_CONFIG" not in os.environ:
            raise ValueError("`strategy='multi_worker'` reads the cluster from the TF_CONFIG "
                             "environment variable, which is not set")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "one_device":
        device = gpus[0].name if gpus else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    """True unless TF_CONFIG names this process as a non-chief worker."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    task = json.loads(raw).get("task", {})
    cluster = json.loads(raw).get("cluster", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if "chief" in cluster:
        return kind == "chief"
    return kind == "worker" and index == 0


@dataclasses.dataclass
class RunEnvironment:
    strategy: tf.distribute.Strategy
    precision: str
    jit_compile: bool
    is_chief: bool = True

    @classmethod
    def create(cls, strategy: str = "auto", precision: str = "float32", jit_compile: str = "off",
               cpu_devices: int | None = None) -> RunEnvironment:
        """Resolves the choices and sets Keras's global dtype policy for `precision`."""
        if jit_compile not in JIT_CHOICES:
            raise ValueError(f"jit_compile must be one of {JIT_CHOICES}, got {jit_compile!r}")
        if cpu_devices and cpu_devices > 1:
            split_cpu(cpu_devices)
        dist = make_strategy(strategy)
        resolved = resolve_precision(precision)
        keras.mixed_precision.set_global_policy(resolved)
        jit = jit_compile == "on" or (jit_compile == "auto"
                                      and bool(tf.config.list_physical_devices("GPU")))
        return cls(dist, resolved, jit, is_chief() if strategy == "multi_worker" else True)

    def describe(self) -> str:
        name = type(self.strategy).__name__
        name = "default strategy" if name.startswith("_Default") else name
        return (f"{name} with {self.strategy.num_replicas_in_sync} replica(s), "
                f"{self.precision}, XLA {'on' if self.jit_compile else 'off'}")
