"""The solver: learning-rate schedule placed on the run, and the optimizers.

The recipe lives in the config as fractions of the run (`lr_decay_fractions`, Detectron2's 1x
schedule decays at 60k and 80k of 90k iterations: 2/3 and 8/9), so it fits any run length:
`schedule_for_run(config, total_steps, batch_size)` turns it into absolute steps. The base LR is
for `config.batch_size` images per step and is scaled linearly with the global batch size.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import ops

from keras_maskrcnn import backend
from keras_maskrcnn.config import MaskRCNNConfig

# Variables without weight decay (Detectron2's WEIGHT_DECAY_NORM = 0): normalization scales and
# offsets (Keras names them gamma / beta in BatchNormalization and GroupNormalization).
NO_DECAY_NAMES = ("gamma", "beta")


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `base_lr * warmup_factor` over `warmup_steps`, then either x`gamma` at
    each of `decay_steps` (Detectron2's WarmupMultiStepLR) or, with `cosine_steps > 0`, a cosine
    from `base_lr` to 0 at step `cosine_steps` (WarmupCosineLR). `step` counts from 0."""

    def __init__(self, base_lr: float, warmup_steps: int = 1000, decay_steps=(),
                 gamma: float = 0.1, warmup_factor: float = 0.001, cosine_steps: int = 0):
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = tuple(int(s) for s in decay_steps)
        self.gamma = float(gamma)
        self.warmup_factor = float(warmup_factor)
        self.cosine_steps = int(cosine_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.cast(self.base_lr, "float32")
        if self.cosine_steps > 0:
            progress = ops.minimum(step / float(self.cosine_steps), 1.0)
            lr = lr * 0.5 * (1.0 + ops.cos(math.pi * progress))
        for boundary in self.decay_steps:
            lr = ops.where(step >= boundary, lr * self.gamma, lr)
        if self.warmup_steps > 0:
            alpha = ops.minimum(step / self.warmup_steps, 1.0)
            lr = lr * (self.warmup_factor * (1.0 - alpha) + alpha)
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps,
                "decay_steps": self.decay_steps, "gamma": self.gamma,
                "warmup_factor": self.warmup_factor, "cosine_steps": self.cosine_steps}


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The learning-rate schedule of one run, in absolute steps."""

    total_steps: int
    base_lr: float
    batch_size: int
    warmup_steps: int
    decay_steps: tuple[int, ...]
    cosine: bool

    def describe(self) -> str:
        decay = "cosine to 0" if self.cosine else (
            "x0.1 at steps " + ", ".join(map(str, self.decay_steps)) if self.decay_steps
            else "no decay")
        return (f"{self.total_steps} steps, batch {self.batch_size}, base LR {self.base_lr:g}, "
                f"warmup {self.warmup_steps} steps, {decay}")

    def learning_rate(self) -> WarmupStepDecay:
        return WarmupStepDecay(self.base_lr, self.warmup_steps, self.decay_steps,
                               cosine_steps=self.total_steps if self.cosine else 0)


def schedule_for_run(config: MaskRCNNConfig, total_steps: int,
                     batch_size: int | None = None) -> Schedule:
    """Places the config's recipe on a run of `total_steps` steps of `batch_size` images (global):
    decays at `round(fraction * total_steps)`, warm-up capped at a quarter of the run, base LR
    scaled linearly with the batch size (`config.learning_rate` is for `config.batch_size`)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    batch = int(batch_size or config.batch_size)
    warmup = min(int(config.warmup_steps), max(total_steps // 4, 1))
    decays = tuple(sorted({int(round(f * total_steps)) for f in config.lr_decay_fractions
                           if 0 < round(f * total_steps) < total_steps}))
    return Schedule(total_steps, config.learning_rate * batch / config.batch_size, batch, warmup,
                    () if config.lr_schedule == "cosine" else decays,
                    config.lr_schedule == "cosine")


def fused_momentum_available() -> bool:
    """TensorFlow's fused momentum kernel (`ResourceApplyMomentum`: accum = momentum * accum +
    g; w -= lr * accum, torch's update) applies: TensorFlow backend, one replica (under several
    replicas the update goes through Keras's distributed assign)."""
    return backend.is_tensorflow() and \
        backend.tensorflow().distribute.get_strategy().num_replicas_in_sync == 1


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum and L2 weight decay exactly as `torch.optim.SGD` (dampening 0, no
    Nesterov), which Detectron2 and torchvision train with:

        g <- g + weight_decay * w          (coupled L2, before momentum; not on `NO_DECAY_NAMES`)
        buf <- momentum * buf + g          (buf starts at 0, so the first step is buf = g)
        w <- w - lr * buf

    Keras's SGD instead keeps `lr * g` inside the momentum buffer and its `weight_decay` is
    decoupled (`w -= lr * wd * w`), about 10x weaker than this with momentum 0.9.
    """

    def __init__(self, learning_rate=0.01, momentum: float = 0.9, l2_decay: float = 0.0,
                 name: str = "torch_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.l2_decay = float(l2_decay)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def decays(self, variable) -> bool:
        """Whether `variable` gets the L2 term (not normalization scales and offsets)."""
        short = variable.name.split("/")[-1].split(":")[0]
        return self.l2_decay > 0.0 and short not in NO_DECAY_NAMES

    def update_step(self, gradient, variable, learning_rate):
        lr = keras.ops.cast(learning_rate, variable.dtype)
        gradient = keras.ops.cast(gradient, variable.dtype)
        if self.decays(variable):
            gradient = gradient + keras.ops.cast(self.l2_decay, variable.dtype) * variable
        buf = self.momentums[self._get_variable_index(variable)]
        if fused_momentum_available():
            # One kernel for both lines below (a single pass over the weights, not five).
            tf = backend.tensorflow()
            tf.raw_ops.ResourceApplyMomentum(
                var=variable.handle, accum=buf.handle, lr=lr, grad=gradient,
                momentum=tf.cast(self.momentum, variable.dtype), use_locking=False,
                use_nesterov=False)
            return
        self.assign(buf, keras.ops.cast(self.momentum, variable.dtype) * buf + gradient)
        self.assign_sub(variable, lr * buf)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "l2_decay": self.l2_decay}


def make_optimizer(config: MaskRCNNConfig, batch_size: int | None = None,
                   total_steps: int | None = None,
                   precision: str = "float32") -> keras.optimizers.Optimizer:
    """The config's optimizer on the schedule of a run of `total_steps` at `batch_size` images per
    step (linear LR scaling); without `total_steps`, warm-up then a constant LR.

    "sgd": `TorchSGD` (torch semantics, coupled L2); "adamw": Keras AdamW (decoupled decay).
    Normalization weights get no weight decay. `precision="mixed_float16"` wraps it in a
    `LossScaleOptimizer` (dynamic loss scaling).
    """
    if total_steps is None:
        config = config.replace(lr_decay_fractions=(), lr_schedule="step")
    schedule = schedule_for_run(config, total_steps or 10**9, batch_size)
    lr = schedule.learning_rate()
    if config.optimizer == "sgd":
        optimizer = TorchSGD(lr, momentum=config.momentum, l2_decay=config.weight_decay,
                             clipnorm=config.clipnorm)
    else:
        optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=config.weight_decay,
                                           clipnorm=config.clipnorm)
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
