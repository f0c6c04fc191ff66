"""Training: optimizer and learning-rate schedule from the config, and the `train` entry point."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

from keras_maskrcnn.config import MaskRCNNConfig
from keras_maskrcnn.model import MaskRCNN, build_model, save_model_dir

logger = logging.getLogger("keras_maskrcnn")


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `base_lr * warmup_factor` over `warmup_steps`, then x`gamma` at each of
    `decay_steps` (Detectron2's WarmupMultiStepLR)."""

    def __init__(self, base_lr: float, warmup_steps: int = 1000, decay_steps=(),
                 gamma: float = 0.1, warmup_factor: float = 0.001):
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = tuple(int(s) for s in decay_steps)
        self.gamma = float(gamma)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.base_lr, tf.float32)
        for boundary in self.decay_steps:
            lr = tf.where(step >= boundary, lr * self.gamma, lr)
        if self.warmup_steps > 0:
            alpha = tf.minimum(step / self.warmup_steps, 1.0)
            lr = lr * (self.warmup_factor * (1.0 - alpha) + alpha)
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps,
                "decay_steps": self.decay_steps, "gamma": self.gamma,
                "warmup_factor": self.warmup_factor}


def make_optimizer(config: MaskRCNNConfig, batch_size: int | None = None) -> keras.optimizers.Optimizer:
    """The config's optimizer. The learning rate is scaled linearly when `batch_size` differs from
    `config.batch_size` (the linear scaling rule). Normalization weights get no weight decay."""
    scale = (batch_size or config.batch_size) / config.batch_size
    schedule = WarmupStepDecay(config.learning_rate * scale, config.warmup_steps,
                               config.lr_decay_steps)
    common = dict(learning_rate=schedule, weight_decay=config.weight_decay,
                  clipnorm=config.clipnorm)
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(momentum=config.momentum, **common)
    else:
        optimizer = keras.optimizers.AdamW(**common)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta"])
    return optimizer


def train(
    config: MaskRCNNConfig,
    train_data: tf.data.Dataset,
    output_dir: str | Path,
    epochs: int = 1,
    steps_per_epoch: int | None = None,
    val_data: tf.data.Dataset | None = None,
    batch_size: int | None = None,
    model: MaskRCNN | None = None,
    callbacks: list | None = None,
    verbose: int | str = "auto",
) -> tuple[MaskRCNN, keras.callbacks.History]:
    """Trains with `model.fit` and writes `output_dir` as a model directory.

    `output_dir/checkpoints/` receives a weights checkpoint per epoch and `output_dir/logs/` the
    TensorBoard logs; `output_dir/config.json` + `model.weights.h5` hold the final model.
    """
    output_dir = Path(output_dir)
    (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    model = model or build_model(config)
    model.compile(optimizer=make_optimizer(config, batch_size))
    cbs = [
        keras.callbacks.ModelCheckpoint(
            str(output_dir / "checkpoints" / "epoch_{epoch:03d}.weights.h5"),
            save_weights_only=True),
        keras.callbacks.TensorBoard(str(output_dir / "logs"), write_graph=False,
                                    update_freq="epoch"),
        keras.callbacks.TerminateOnNaN(),
        *(callbacks or []),
    ]
    history = model.fit(train_data, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        validation_data=val_data, callbacks=cbs, verbose=verbose)
    save_model_dir(model, output_dir)
    logger.info("model directory written to %s", output_dir)
    return model, history
