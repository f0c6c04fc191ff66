"""Where and how a run executes: distribution strategy, precision, XLA, CPU features.

On TensorFlow the strategy is a `tf.distribute.Strategy`; on JAX it is `KerasDistribution`,
Keras's `DataParallel` over the local devices (one process: "auto" and "mirrored"), and on
PyTorch one device. A JAX run always compiles its step with XLA (`jax.jit`).

`RunEnvironment.create(strategy=..., precision=..., jit_compile=...)` is the one place these
choices are resolved ("auto" included) before any model is built; it must run before TensorFlow
initialises its devices when `cpu_devices` splits the CPU into logical devices (how the
multi-device paths are exercised on a machine without GPUs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path

import keras

from keras_maskrcnn import backend

tf = backend.lazy_tensorflow()  # the TensorFlow backend's devices and strategies

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


def has_gpu() -> bool:
    """Whether the backend in use sees a GPU."""
    if backend.name() == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend.name() == "torch":
        import torch

        return torch.cuda.is_available()
    return bool(tf.config.list_physical_devices("GPU"))


def gpus_with_bf16() -> bool:
    """Every GPU has compute capability >= 8 (native bfloat16)."""
    if backend.name() == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return bool(gpus) and all(float(getattr(d, "compute_capability", "0")) >= 8
                                  for d in gpus)
    if backend.name() == "torch":
        import torch

        return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
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
    if has_gpu():
        return "mixed_bfloat16" if gpus_with_bf16() else "float32"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def split_cpu(count: int) -> None:
    """Splits the CPU into `count` logical devices (before the backend initialises its
    devices; JAX: `--xla_force_host_platform_device_count`)."""
    if backend.name() == "jax":
        flag = f"--xla_force_host_platform_device_count={count}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
        import jax

        if len(jax.devices("cpu")) != count:
            raise RuntimeError(f"cannot split the CPU into {count} devices after JAX started")
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as err:
        raise RuntimeError(f"cannot split the CPU into {count} devices after TensorFlow "
                           f"started: {err}") from None


class KerasDistribution:
    """The strategy of a JAX or PyTorch run, with the part of `tf.distribute.Strategy` a run
    uses (`scope`, `num_replicas_in_sync`): JAX data parallelism over `devices` sets Keras's
    global `keras.distribution.DataParallel` (batches are split over the devices, the step is
    one program over the global batch); one device otherwise."""

    def __init__(self, devices: list | None = None) -> None:
        self.devices = list(devices or [])
        self.num_replicas_in_sync = max(1, len(self.devices))
        if len(self.devices) > 1:
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=self.devices))

    def scope(self):
        return contextlib.nullcontext()

    def describe(self) -> str:
        return (f"DataParallel over {self.num_replicas_in_sync} devices"
                if self.num_replicas_in_sync > 1 else "one device")


def make_keras_distribution(name: str) -> KerasDistribution:
    """JAX: "auto" / "mirrored" data-parallel over the local devices when there are several
    (all the GPUs; the CPU split by `cpu_devices`), "one_device" one; PyTorch: one device."""
    if name == "multi_worker":
        raise ValueError(f"strategy 'multi_worker' needs the TensorFlow backend (running on "
                         f"{backend.name()}); use 'auto' or 'mirrored' (JAX: the local devices)")
    if backend.name() != "jax" or name == "one_device":
        return KerasDistribution()
    devices = keras.distribution.list_devices("gpu") if has_gpu() else \
        keras.distribution.list_devices("cpu")
    return KerasDistribution(devices if len(devices) > 1 else None)


def make_strategy(name: str):
    """"auto": mirrored over the GPUs when there are several, else the default strategy;
    "one_device": the first GPU (or the CPU); "mirrored": all local GPUs (or the logical CPU
    devices); "multi_worker": `MultiWorkerMirroredStrategy` from the `TF_CONFIG` variable."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if not backend.is_tensorflow():
        return make_keras_distribution(name)
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
    strategy: object  # tf.distribute.Strategy (TensorFlow) or KerasDistribution
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
        # JAX always compiles its step; PyTorch runs eagerly (torch.compile is not used).
        jit = backend.name() == "jax" or (backend.is_tensorflow() and (
            jit_compile == "on" or (jit_compile == "auto" and has_gpu())))
        return cls(dist, resolved, jit, is_chief() if strategy == "multi_worker" else True)

    def describe(self) -> str:
        if isinstance(self.strategy, KerasDistribution):
            return (f"{backend.name()} backend, {self.strategy.describe()}, {self.precision}, "
                    f"XLA {'on' if self.jit_compile else 'off'}")
        name = type(self.strategy).__name__
        name = "default strategy" if name.startswith("_Default") else name
        return (f"{name} with {self.strategy.num_replicas_in_sync} replica(s), "
                f"{self.precision}, XLA {'on' if self.jit_compile else 'off'}")
