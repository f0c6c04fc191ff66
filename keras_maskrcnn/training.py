"""Training a model directory: resumable, guarded, reproducible, on any `tf.distribute` strategy.

`train(config, source, output_dir, ...)` owns the loop: it places the schedule on the run, builds
the model and optimizer inside the strategy's scope, resumes from the newest complete checkpoint
in `output_dir/checkpoints/` (weights, optimizer state with its iteration count, hence the LR
position, and the data position by deterministic skip), checkpoints every epoch or
`checkpoint_every` steps (and at least every `CHECKPOINT_MINUTES` minutes), stops on any
non-finite loss, gradient norm or weight with the step and the quantity named, and writes the
model directory atomically at the end.

Reproducibility: the data order, the augmentation and the in-graph RPN / RoI samplers are all
functions of `seed` and the image's position in the run (stateless per-image seeds), so a run
killed and resumed takes the same steps as one never interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_maskrcnn import backend
from keras_maskrcnn.atomic import (
    DirectoryLock,
    atomic_write_json,
    remove_stale_temporaries,
)
from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import MaskRCNNConfig
from keras_maskrcnn.model import LOSS_NAMES, MaskRCNN, require_finite_weights
from keras_maskrcnn.runtime import RunEnvironment
from keras_maskrcnn.saving import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    checkpoint_info,
    latest_checkpoint,
    read_model_config,
    restore_checkpoint,
    save_checkpoint,
    save_model_dir,
)
from keras_maskrcnn.solver import WarmupStepDecay, make_optimizer, schedule_for_run
from keras_maskrcnn.steps import unpack_batch

__all__ = ["TrainingError", "TrainingDiverged", "WarmupStepDecay", "make_optimizer", "train",
           "latest_checkpoint"]

logger = logging.getLogger("keras_maskrcnn")

CHECKPOINT_MINUTES = 30.0
HISTORY_FILE = "history.json"
BEST_DIR = "best"
# Config fields that may differ between the run in a folder and a rerun without refusing it.
RUN_ONLY_FIELDS = ("backbone_weights",)


class TrainingError(RuntimeError):
    """A training run that cannot start or continue; the message says why and what to do."""


class TrainingDiverged(TrainingError):
    """Training produced a non-finite loss, gradient norm or weight."""


@dataclasses.dataclass
class TrainResult:
    model: MaskRCNN
    history: list[dict]
    step: int
    total_steps: int
    resumed_from: int


# ------------------------------------------------------------------------------ folder checks
def config_differences(a: MaskRCNNConfig, b: MaskRCNNConfig) -> list[str]:
    """Fields whose values differ between two configs (`RUN_ONLY_FIELDS` ignored)."""
    da, db = a.to_dict(), b.to_dict()
    return [k for k in da if k not in RUN_ONLY_FIELDS and da[k] != db.get(k)]


def existing_config(output_dir: Path) -> MaskRCNNConfig | None:
    """The config of the model or run already in `output_dir`, if any."""
    latest = latest_checkpoint(output_dir)
    if latest is not None:
        return checkpoint_info(latest[1])["config"]
    if (output_dir / CONFIG_FILE).exists():
        try:
            return read_model_config(output_dir)
        except (FileNotFoundError, ValueError):
            return MaskRCNNConfig.from_json(output_dir / CONFIG_FILE)
    return None


def prepare_output(output_dir: Path, config: MaskRCNNConfig, overwrite: bool) -> None:
    """Refuses a folder holding a different model unless `overwrite`; with `overwrite` clears
    the previous run's checkpoints, logs and history (the previous model stays until the new
    one replaces it)."""
    remove_stale_temporaries(output_dir)
    remove_stale_temporaries(output_dir / CHECKPOINT_DIR)
    previous = existing_config(output_dir)
    if previous is not None and not overwrite:
        differing = config_differences(previous, config)
        if differing:
            shown = ", ".join(f"{k} ({getattr(previous, k)!r} -> {getattr(config, k)!r})"
                              for k in differing[:6])
            raise TrainingError(
                f"{output_dir} holds a different model (config fields differ: {shown}); "
                "use another `output_dir`, or `overwrite=True` to replace it")
    if overwrite:
        for name in (CHECKPOINT_DIR, "logs", BEST_DIR):
            shutil.rmtree(output_dir / name, ignore_errors=True)
        (output_dir / HISTORY_FILE).unlink(missing_ok=True)


def load_history(output_dir: Path, up_to_step: int) -> list[dict]:
    path = output_dir / HISTORY_FILE
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text()).get("epochs", [])
    except (json.JSONDecodeError, AttributeError):
        return []
    return [r for r in records if r.get("step", 0) <= up_to_step]


# ------------------------------------------------------------------------------ the step
def make_train_step(model: MaskRCNN, env: RunEnvironment) -> Callable:
    """One guarded optimizer step on the next batch of an iterator: a `tf.function` over the
    strategy's replicas on TensorFlow; on JAX and PyTorch `model.train_on_batch` of the same
    guarded step (`MaskRCNN.train_step`, `keras_maskrcnn.steps`).

    Returns dict of float32 scalars: the five losses and `loss` (global-batch values), `grad_norm`
    (norm of all replicas' gradients taken together), `finite_loss`, `finite_grads`,
    `finite_weights` (1.0 / 0.0, over all replicas). A non-finite gradient is replaced by zeros
    before it reaches the optimizer, so the step keeps the weights finite and the loop can stop
    cleanly; loss scaling (mixed_float16) handles its own overflow steps.
    """
    if not backend.is_tensorflow():
        return _keras_train_step(model)
    strategy = env.strategy
    optimizer = model.optimizer
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(batch):
        variables = model.trainable_variables
        losses, grads = model.loss_and_gradients(unpack_batch(batch))
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables,
                                                                       strict=True)]
        ctx = tf.distribute.get_replica_context()
        # l2_loss (sum of squares / 2) is one fused pass per gradient.
        squared = 2.0 * tf.add_n([tf.nn.l2_loss(tf.cast(g, tf.float32)) for g in grads])
        if loss_scaled:
            squared = squared / tf.square(tf.cast(optimizer.scale_loss(tf.constant(1.0)),
                                                  tf.float32))
        norm = tf.sqrt(ctx.all_reduce(tf.distribute.ReduceOp.SUM, squared))
        local_loss_ok = tf.reduce_all([tf.math.is_finite(losses[n])
                                       for n in (*LOSS_NAMES, "loss")])
        bad_loss = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                  1.0 - tf.cast(local_loss_ok, tf.float32))
        finite_loss = bad_loss == 0.0
        finite_grads = tf.math.is_finite(norm) | tf.constant(loss_scaled)
        ok = finite_loss & finite_grads
        grads = [tf.where(ok, g, tf.zeros_like(g)) for g in grads]
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        # A sum is finite iff every term is (short of overflowing 3e38, itself a divergence):
        # one pass over the weights instead of a boolean copy of them.
        local_weights_ok = tf.reduce_all([tf.math.is_finite(tf.reduce_sum(v))
                                          for v in variables])
        bad_weights = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                     1.0 - tf.cast(local_weights_ok, tf.float32))
        out = {k: tf.cast(v, tf.float32) for k, v in losses.items()}
        out["grad_norm"] = norm
        out["finite_loss"] = tf.cast(finite_loss, tf.float32)
        out["finite_grads"] = tf.cast(finite_grads, tf.float32)
        out["finite_weights"] = tf.cast(bad_weights == 0.0, tf.float32)
        return out

    # XLA compiles the replica step; reading the iterator stays outside (no XLA kernel).
    compiled = tf.function(replica_step, jit_compile=True) if env.jit_compile else replica_step

    def step(iterator):
        out = strategy.run(compiled, args=(next(iterator),))
        if strategy.num_replicas_in_sync == 1:
            return out
        # Losses are per-replica shares of the global loss (sum); the rest is already reduced.
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM if k in (*LOSS_NAMES, "loss")
                                   else tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in out.items()}

    return tf.function(step, reduce_retracing=True)


def _keras_train_step(model: MaskRCNN) -> Callable:
    """The step of JAX and PyTorch: a tf.data batch (NumPy) through `train_on_batch`, which
    resets the loss trackers first, so its logs are this step's losses and flags."""
    def step(iterator):
        batch = {k: np.asarray(v) for k, v in unpack_batch(next(iterator)).items()}
        return model.train_on_batch(batch, return_dict=True)

    return step


def divergence(out: dict[str, float], step: int) -> str | None:
    """The message for a step whose outputs are not all finite, else None."""
    if out["finite_loss"] < 1:
        bad = [n for n in (*LOSS_NAMES, "loss") if not math.isfinite(out[n])]
        return f"non-finite loss at step {step} ({', '.join(f'{n}={out[n]}' for n in bad)})"
    if out["finite_grads"] < 1:
        return f"non-finite gradient norm at step {step} (grad_norm={out['grad_norm']})"
    if out["finite_weights"] < 1:
        return f"non-finite weights after step {step} (loss {out['loss']:.4f} was finite)"
    return None


# ------------------------------------------------------------------------------ the run
@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How `train` runs (the keyword arguments of `train`, documented there)."""

    epochs: int | None = None
    max_steps: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int | None = None
    seed: int = 0
    deterministic: bool = False
    checkpoint_every: int | None = None
    keep_checkpoints: int = 3
    overwrite: bool = False
    init_from: str | Path | None = None
    val_source: Any = None
    eval_every: int = 1
    skip_bad_images: bool = False
    log_every: int | None = None

    def check(self) -> None:
        """TrainingError naming the first count that is not >= 1."""
        for name in ("batch_size", "epochs", "max_steps", "steps_per_epoch", "checkpoint_every",
                     "keep_checkpoints"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise TrainingError(f"{name} must be >= 1, got {value} "
                                    f"(--{name.replace('_', '-')})")


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run is, fixed before anything is built: the global batch, the steps per epoch,
    the total steps and the learning-rate schedule on them."""

    batch: int
    per_epoch: int
    total: int
    schedule: Any

    def record(self, seed: int) -> dict:
        """The run description kept in history.json and every checkpoint."""
        return {"seed": seed, "batch_size": self.batch, "steps_per_epoch": self.per_epoch,
                "total_steps": self.total}


class TrainingRun:
    """One call of `train`: plan, build (or resume), loop, save. Each step is one method."""

    def __init__(self, config: MaskRCNNConfig, source, output_dir: str | Path,
                 options: RunOptions, env: RunEnvironment | None = None,
                 callbacks: list[Callable[[dict], None]] | None = None,
                 print_fn: Callable[[str], None] = print) -> None:
        self.config, self.source, self.output_dir = config, source, Path(output_dir)
        self.options, self.env = options, env or RunEnvironment.create()
        self.callbacks, self.print = callbacks or [], print_fn

    def plan(self) -> RunPlan:
        """Checks the options and the data against each other; TrainingError if they do not
        fit (before anything is built or written)."""
        from keras_maskrcnn.data import num_batches

        o, config = self.options, self.config
        o.check()
        batch = int(o.batch_size or config.batch_size)
        replicas = self.env.strategy.num_replicas_in_sync
        if batch % replicas:
            raise TrainingError(f"`batch_size={batch}` must be a multiple of the {replicas} "
                                "replicas")
        per_epoch = int(o.steps_per_epoch or num_batches(self.source, batch,
                                                         config.repeat_factor_threshold))
        if per_epoch < 1:
            raise TrainingError(f"the dataset has fewer images ({len(list(self.source.image_ids))}"
                                f") than one batch ({batch}): lower `batch_size`")
        if not o.skip_bad_images:
            check_image_files(self.source, "source")
            check_image_files(o.val_source, "val_source")
        total = int(o.max_steps) if o.max_steps else int(o.epochs or 1) * per_epoch
        return RunPlan(batch, per_epoch, total, schedule_for_run(config, total, batch))

    def build(self, plan: RunPlan) -> MaskRCNN:
        """The model (fine-tuning initialisation applied) compiled with its optimizer, in the
        strategy's scope."""
        with self.env.strategy.scope():
            model = build_model(self.config)
            if self.options.init_from is not None:
                from keras_maskrcnn.finetune import initialize_from

                initialize_from(model, self.options.init_from, print_fn=self.print)
            # TensorFlow's loop compiles its own step (make_train_step); JAX's and PyTorch's
            # go through Keras's train function.
            model.compile(optimizer=make_optimizer(self.config, plan.batch, plan.total,
                                                   self.env.precision),
                          jit_compile=self.env.jit_compile if not backend.is_tensorflow()
                          else "auto")
        return model

    def resume(self, model: MaskRCNN, plan: RunPlan) -> int:
        """Restores the newest checkpoint (unless overwriting); the step it was at (0: none)."""
        latest = latest_checkpoint(self.output_dir)
        if latest is None or self.options.overwrite:
            return 0
        info = checkpoint_info(latest[1])
        restore_checkpoint(model, latest[1])
        self.print(f"resuming from step {info['step']} of {plan.total} ({latest[1].name})")
        changed = run_changes(info["run"], plan.record(self.options.seed))
        if changed:
            logger.warning("resuming with %s: the data order, augmentation or LR schedule "
                           "differ from the interrupted run's from here on", changed)
        return info["step"]

    def fit(self, model: MaskRCNN, plan: RunPlan, start: int, history: list[dict]) -> list[dict]:
        """The step loop from `start` to `plan.total`; the history of every epoch."""
        from keras_maskrcnn.data.pipeline import distributed_dataset, make_dataset

        o = self.options
        skipped: list[str] = []
        options = {"batch_size": plan.batch, "seed": o.seed, "skip_batches": start,
                   "skip_bad_images": o.skip_bad_images, "skipped": skipped}
        # JAX / PyTorch: the tf.data batches as NumPy (Keras splits them over the devices).
        data = distributed_dataset(self.env.strategy, self.source, self.config, **options) \
            if backend.is_tensorflow() else \
            make_dataset(self.source, self.config, training=True, **options)
        loop = _Loop(self, model, plan, history)
        loop.run(data, start)
        if skipped:
            unique = sorted(set(skipped))
            self.print(f"skipped {len(unique)} unreadable image(s) ({len(skipped)} times): "
                       + ", ".join(unique[:5]))
        return loop.history

    def save(self, model: MaskRCNN) -> None:
        """The trained model as the model directory (chief only; never non-finite weights)."""
        if not self.env.is_chief:
            return
        try:
            require_finite_weights(model, "trained model")
        except ValueError as err:
            raise TrainingDiverged(str(err)) from None
        save_model_dir(model, self.output_dir)

    def run(self) -> TrainResult:
        keras.utils.set_random_seed(self.options.seed)
        if self.options.deterministic and backend.is_tensorflow():
            tf.config.experimental.enable_op_determinism()
        plan = self.plan()
        lock = DirectoryLock(self.output_dir).acquire() if self.env.is_chief else None
        try:
            if self.env.is_chief:
                prepare_output(self.output_dir, self.config, self.options.overwrite)
            model = self.build(plan)
            start = self.resume(model, plan)
            history = load_history(self.output_dir, start) if start else []
            self.print(f"schedule: {plan.schedule.describe()}; {plan.per_epoch} steps per "
                       f"epoch; {self.env.describe()}")
            if start >= plan.total:
                self.print(f"already trained to step {start} of {plan.total}: nothing to do")
            else:
                history = self.fit(model, plan, start, history)
            self.save(model)
            return TrainResult(model, history, max(start, plan.total), plan.total, start)
        finally:
            if lock is not None:
                lock.release()


def train(
    config: MaskRCNNConfig,
    source,
    output_dir: str | Path,
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    deterministic: bool = False,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 3,
    overwrite: bool = False,
    init_from: str | Path | None = None,
    val_source=None,
    eval_every: int = 1,
    env: RunEnvironment | None = None,
    skip_bad_images: bool = False,
    log_every: int | None = None,
    callbacks: list[Callable[[dict], None]] | None = None,
    print_fn: Callable[[str], None] = print,
) -> TrainResult:
    """Trains `config` on a dataset source and writes `output_dir` as a model directory
    (`TrainingRun`).

    Args:
        config: the model (its class count must match `source`).
        source: a dataset source (`CocoDataset`, `ShapesDataset`, ...).
        output_dir: model directory; `checkpoints/`, `logs/` (TensorBoard), `history.json`
            (strict JSON, one record per epoch) and, with validation, `best/` inside it.
        epochs / max_steps: run length (one of them; `max_steps` wins). An epoch is
            `steps_per_epoch` steps, by default one pass over the source (len // batch; with
            `config.repeat_factor_threshold`, floor(sum of the repeat factors) // batch).
        batch_size: global batch (default `config.batch_size`); the LR scales linearly with it.
        seed: seeds Python, NumPy, TF and Keras initializers, the data order, the augmentation
            and the in-graph samplers. `deterministic`: TF op determinism as well.
        checkpoint_every: steps between checkpoints (default: each epoch), and at least every
            `CHECKPOINT_MINUTES` minutes of work; `keep_checkpoints` newest are kept.
        overwrite: replace a folder that holds a different model (default: refuse).
        init_from: a model directory whose matching weights initialise the model (fine-tuning;
            class-specific layers re-initialised when the class count differs).
        val_source: evaluated (COCO AP) every `eval_every` epochs; the best segm AP is kept in
            `output_dir/best/`.
        env: strategy, precision and XLA choice (`runtime.RunEnvironment`; default: one device,
            float32, no XLA).
        skip_bad_images: skip unreadable images with a warning instead of stopping.

    Raises:
        TrainingError / TrainingDiverged with a one-line message; the previous model directory
        and the last good checkpoint are left in place.
    """
    options = RunOptions(
        epochs=epochs, max_steps=max_steps, steps_per_epoch=steps_per_epoch,
        batch_size=batch_size, seed=seed, deterministic=deterministic,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
        overwrite=overwrite, init_from=init_from, val_source=val_source, eval_every=eval_every,
        skip_bad_images=skip_bad_images, log_every=log_every)
    return TrainingRun(config, source, output_dir, options, env, callbacks, print_fn).run()


class _Loop:
    """The step loop of `train` (state: step, epoch accumulators, checkpoint clock)."""

    def __init__(self, run: TrainingRun, model: MaskRCNN, plan: RunPlan, history: list[dict]):
        o = run.options
        self.model, self.env, self.output_dir = model, run.env, run.output_dir
        self.run_info = plan.record(o.seed)
        self.per_epoch, self.total = plan.per_epoch, plan.total
        self.checkpoint_every, self.keep = o.checkpoint_every, o.keep_checkpoints
        self.val_source, self.eval_every = o.val_source, max(1, int(o.eval_every))
        self.log_every = o.log_every or max(1, min(plan.per_epoch, 50))
        self.history, self.callbacks, self.print = history, run.callbacks, run.print
        self.writer = tf.summary.create_file_writer(str(run.output_dir / "logs")) \
            if run.env.is_chief else None
        self.best_ap = max((r.get("val_segm_AP") or -1.0 for r in history), default=-1.0)

    def run(self, data, start: int) -> None:
        iterator = iter(data)  # data.distributed_dataset: per-worker input pipelines
        step_fn = make_train_step(self.model, self.env)
        sums: dict[str, float] = {}
        count = 0
        last_checkpoint = time.monotonic()
        began, began_step = time.monotonic(), start
        step = start
        while step < self.total:
            try:
                out = {k: float(v) for k, v in step_fn(iterator).items()}
            except (tf.errors.OpError, StopIteration) as err:
                raise TrainingError(data_error_message(err)) from None
            step += 1
            problem = divergence(out, step)
            if problem:
                raise TrainingDiverged(
                    f"training stopped: {problem}; the last good checkpoint and the previous "
                    f"model directory in {self.output_dir} are kept (lower the learning rate "
                    "or check the data)")
            for key in (*LOSS_NAMES, "loss"):
                sums[key] = sums.get(key, 0.0) + out[key]
            count += 1
            if step % self.log_every == 0 or step == self.total:
                self.progress(step, out, began, began_step)
            epoch_end = step % self.per_epoch == 0 or step == self.total
            if epoch_end:
                self.end_epoch(step, {k: v / max(count, 1) for k, v in sums.items()})
                sums, count = {}, 0
            due = (self.checkpoint_every and step % self.checkpoint_every == 0) or (
                not self.checkpoint_every and epoch_end) or step == self.total or (
                time.monotonic() - last_checkpoint > CHECKPOINT_MINUTES * 60)
            if due:
                self.checkpoint(step)
                last_checkpoint = time.monotonic()

    def progress(self, step: int, out: dict, began: float, began_step: int) -> None:
        elapsed = time.monotonic() - began
        rate = elapsed / max(step - began_step, 1)
        eta = rate * (self.total - step)
        lr = float(self.model.optimizer.learning_rate)
        losses = " ".join(f"{k}={out[k]:.4f}" for k in ("loss", *LOSS_NAMES))
        self.print(f"step {step}/{self.total} epoch {self.epoch_of(step)} {losses} "
                   f"lr={lr:.3g} {rate:.2f}s/step eta {format_seconds(eta)}")
        if self.writer is not None:
            with self.writer.as_default(step=step):
                for key in ("loss", *LOSS_NAMES, "grad_norm"):
                    tf.summary.scalar(f"train/{key}", out[key])
                tf.summary.scalar("train/learning_rate", lr)

    def epoch_of(self, step: int) -> int:
        return (step - 1) // self.per_epoch + 1

    def end_epoch(self, step: int, means: dict[str, float]) -> None:
        epoch = self.epoch_of(step)
        record = {"epoch": epoch, "step": step, **means}
        if self.val_source is not None and (epoch % self.eval_every == 0 or step == self.total):
            record.update(self.validate(step))
        self.history.append(record)
        if self.env.is_chief:
            atomic_write_json(self.output_dir / HISTORY_FILE,
                              {"run": self.run_info, "epochs": self.history})
        for callback in self.callbacks:
            callback(record)

    def validate(self, step: int) -> dict[str, float]:
        from keras_maskrcnn.inference import evaluate

        metrics = evaluate(self.model, self.val_source, verbose=False)
        values = {f"val_{t}_{k}": float(m[k]) for t, m in metrics.items()
                  for k in ("AP", "AP50", "AP75")}
        self.print(f"validation at step {step}: " + " ".join(
            f"{t} AP={metrics[t]['AP']:.4f}" for t in metrics))
        if self.writer is not None:
            with self.writer.as_default(step=step):
                for key, value in values.items():
                    tf.summary.scalar(key.replace("val_", "val/"), value)
        segm = values.get("val_segm_AP", values.get("val_bbox_AP", -1.0))
        if self.env.is_chief and segm > self.best_ap:
            self.best_ap = segm
            save_model_dir(self.model, self.output_dir / BEST_DIR)
            self.print(f"best model so far (segm AP {segm:.4f}) written to "
                       f"{self.output_dir / BEST_DIR}")
        return values

    def checkpoint(self, step: int) -> None:
        if not self.env.is_chief:
            return
        started = time.monotonic()
        path = save_checkpoint(self.model, self.output_dir, step, self.epoch_of(step),
                               self.keep, self.run_info)
        logger.info("checkpoint %s written in %.1f s", path.name, time.monotonic() - started)


def run_changes(before: dict, now: dict) -> str:
    """The run settings that differ between a checkpoint's run and this one ("" if none), e.g.
    "`batch_size` 2 -> 4, `seed` 0 -> 5" (the `train` arguments that set them)."""
    names = {"total_steps": "max_steps"}  # the argument that sets it
    return ", ".join(f"`{names.get(key, key)}` {before[key]} -> {now[key]}"
                     for key in ("batch_size", "seed", "steps_per_epoch", "total_steps")
                     if key in before and before[key] != now.get(key))


def check_image_files(source, name: str) -> None:
    """Raises TrainingError, before anything is built or written, if image files listed by a
    dataset source (one with `missing_images`, i.e. `CocoDataset`) are not on disk; `name`: the
    `train` argument holding the source ("source", "val_source")."""
    missing = source.missing_images() if hasattr(source, "missing_images") else []
    if missing:
        first = missing[0]
        raise TrainingError(
            f"{len(missing)} image(s) listed in {source.annotations_path} are not in "
            f"{source.images_dir} (e.g. {source.file_name(first)}, image id {first}): fix "
            f"`{name}.images_dir` or the json, or pass `skip_bad_images=True` to train without "
            "them")


def data_error_message(err: Exception) -> str:
    """One line naming the bad input behind an error raised by the input pipeline."""
    from keras_maskrcnn.data.pipeline import input_error_message

    return input_error_message(err)


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
