"""The guarded optimizer step of `MaskRCNN.train_step` on JAX and PyTorch, and its guard
(`guard`, `finite_weights`), which TensorFlow's `train_step` uses too.

Both differentiate the same `MaskRCNN.compute_losses` as TensorFlow's step (`GradientTape` in
`model.py`; `training.make_train_step` for the resumable loop) and guard it alike: when a loss or
the gradient norm is not finite, the gradients are replaced by zeros before the optimizer sees
them, so the weights stay finite and the caller can stop cleanly (mixed_float16's loss scaling
handles its own overflow steps). The logs carry the losses (the trackers' means), `grad_norm`,
`finite_loss`, `finite_grads` and `finite_weights` (1.0 / 0.0).

JAX: Keras calls `train_step(state, data)` with the variables' values and expects `(logs, state)`
back (a pure function, compiled by `jax.jit`); under `keras.distribution.DataParallel` the batch
is global, so the losses are the global batch's with no cross-replica step.
"""

from __future__ import annotations

import keras
from keras import ops


def unpack_batch(data) -> dict:
    """The batch dict of `data` (a dict, or `(dict,)` / `(dict, y)` as `fit` passes it)."""
    if isinstance(data, tuple | list):
        data = data[0]
    if not isinstance(data, dict):
        raise TypeError(
            "MaskRCNN expects each batch as a dict of tensors (see docs/CONVENTIONS.md), "
            f"got {type(data).__name__}")
    return data


def guard(losses: dict, grads: list, loss_scale=None) -> tuple[list, dict]:
    """The guarded gradients (zeros unless every loss and the gradient norm are finite) and
    the flags: `grad_norm` (of the unscaled gradients), `finite_loss`, `finite_grads`."""
    squared = ops.sum(ops.stack([ops.sum(ops.square(ops.cast(g, "float32"))) for g in grads]))
    if loss_scale is not None:
        squared = squared / ops.square(ops.cast(loss_scale, "float32"))
    norm = ops.sqrt(squared)
    finite_loss = ops.all(ops.stack([ops.isfinite(v) for v in losses.values()]))
    finite_grads = ops.logical_or(ops.isfinite(norm), loss_scale is not None)
    ok = ops.logical_and(finite_loss, finite_grads)
    guarded = [ops.where(ok, g, ops.zeros_like(g)) for g in grads]
    return guarded, {"grad_norm": norm, "finite_loss": ops.cast(finite_loss, "float32"),
                     "finite_grads": ops.cast(finite_grads, "float32")}


def finite_weights(values: list):
    """1.0 when every weight is finite (a sum is finite iff each term is), else 0.0."""
    sums = ops.stack([ops.sum(ops.cast(v, "float32")) for v in values])
    return ops.cast(ops.all(ops.isfinite(sums)), "float32")


def loss_scale(optimizer):
    """The optimizer's loss scale (mixed_float16), else None."""
    return optimizer.scale_loss(1.0) if isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer) else None


def guarded_train_step(model, *args):
    """`model.train_step` on the JAX or PyTorch backend (see the module docstring)."""
    if keras.backend.backend() == "jax":
        return _jax_step(model, *args)
    return _torch_step(model, *args)


def _jax_step(model, state, data):
    import jax

    trainable, non_trainable, optimizer_values, metric_values = state
    inputs = unpack_batch(data)
    optimizer = model.optimizer
    optimizer_mapping = list(zip(optimizer.variables, optimizer_values, strict=True))

    def scaled_loss(trainable_values):
        mapping = [*zip(model.trainable_variables, trainable_values, strict=True),
                   *zip(model.non_trainable_variables, non_trainable, strict=True)]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            losses = model.compute_losses(inputs, training=True)
        updated = [scope.get_current_value(v) for v in model.non_trainable_variables]
        updated = [v.value if u is None else u
                   for v, u in zip(model.non_trainable_variables, updated, strict=True)]
        with keras.StatelessScope(state_mapping=optimizer_mapping):
            scaled = optimizer.scale_loss(losses["loss"])
        return scaled, (losses, updated)

    (_, (losses, non_trainable)), grads = jax.value_and_grad(scaled_loss, has_aux=True)(
        trainable)
    with keras.StatelessScope(state_mapping=optimizer_mapping):
        scale = loss_scale(optimizer)
    grads, flags = guard(losses, grads, scale)
    trainable, optimizer_values = optimizer.stateless_apply(optimizer_values, grads, trainable)
    flags["finite_weights"] = finite_weights(trainable)
    metric_mapping = list(zip(model.metrics_variables, metric_values, strict=True))
    with keras.StatelessScope(state_mapping=metric_mapping) as scope:
        logs = model.update_loss_trackers(losses)
    metric_values = [scope.get_current_value(v) for v in model.metrics_variables]
    metric_values = [v.value if u is None else u
                     for v, u in zip(model.metrics_variables, metric_values, strict=True)]
    return {**logs, **flags}, (trainable, non_trainable, optimizer_values, metric_values)


def _torch_step(model, data):
    import torch

    inputs = unpack_batch(data)
    model.zero_grad()
    losses = model.compute_losses(inputs, training=True)
    model.optimizer.scale_loss(losses["loss"]).backward()
    variables = model.trainable_variables
    grads = [ops.zeros_like(v.value) if v.value.grad is None else v.value.grad
             for v in variables]
    with torch.no_grad():
        grads, flags = guard({k: v.detach() for k, v in losses.items()}, grads,
                             loss_scale(model.optimizer))
        model.optimizer.apply(grads, variables)
        flags["finite_weights"] = finite_weights([v.value for v in variables])
    logs = model.update_loss_trackers({k: v.detach() for k, v in losses.items()})
    return {**logs, **flags}
