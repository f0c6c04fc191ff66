"""Runs one model job on the Keras backend of its environment (`KERAS_BACKEND`), for the tests
that compare backends (`tests/test_backends.py`, `tests/test_torchvision_parity.py`): each
backend runs in its own process, as a user's would.

    python tests/backend_worker.py predict MODEL_DIR BATCH.npz OUT.npz
        -> per image i: boxes{i}, scores{i}, labels{i}, masks{i} (original pixels, pasted)
    python tests/backend_worker.py losses MODEL_DIR BATCH.npz OUT.npz [SAVE_DIR]
        -> the five losses and `loss` of the batch (training graph, the batch's sample seeds);
           with SAVE_DIR also one guarded SGD step, then the model saved there, its step logs
           (`step_*`) and the losses of the batch after the step (`after_*`)
    python tests/backend_worker.py cli ARGS...
        -> `keras-maskrcnn ARGS...`

With KERAS_MASKRCNN_BLOCK_TENSORFLOW=1 an import of TensorFlow fails, as on a machine
without it.
"""

from __future__ import annotations

import sys

import numpy as np


def predict(model_dir: str, batch_path: str, out_path: str) -> None:
    from keras_maskrcnn.inference import postprocess, run_model
    from keras_maskrcnn.saving import load_model_dir

    model = load_model_dir(model_dir)
    batch = dict(np.load(batch_path))
    outputs = run_model(model, batch)
    out = {}
    for i in range(len(batch["images"])):
        det = postprocess(outputs, batch, i, model.config.mask_threshold, model.config.mask_paste)
        out.update({f"{key}{i}": value for key, value in det.items()})
    np.savez(out_path, **out)


def losses(model_dir: str, batch_path: str, out_path: str, save_dir: str | None = None) -> None:
    from keras_maskrcnn.saving import load_model_dir, save_model_dir
    from keras_maskrcnn.solver import make_optimizer

    model = load_model_dir(model_dir)
    batch = dict(np.load(batch_path))
    model.compile(optimizer=make_optimizer(model.config, len(batch["images"]), 100))
    compute = _losses_function(model)
    out = {k: np.asarray(v) for k, v in _numpy(compute(batch)).items()}
    if save_dir:
        logs = model.train_on_batch(batch, return_dict=True)
        out.update({f"step_{k}": np.asarray(v, np.float32) for k, v in logs.items()})
        save_model_dir(model, save_dir)
        after = _numpy(compute(batch))
        out.update({f"after_{k}": v for k, v in after.items()})
    np.savez(out_path, **out)


def _losses_function(model):
    """`model.compute_losses(batch, training=True)`; on JAX compiled once (stateless, the
    variables passed in) instead of run op by op, for the losses before and after the step."""
    import keras

    if keras.backend.backend() != "jax":
        return lambda batch: model.compute_losses(batch, training=True)
    import jax

    variables = [*model.trainable_variables, *model.non_trainable_variables]

    def pure(values, batch):
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            return model.compute_losses(batch, training=True)

    compiled = jax.jit(pure)
    return lambda batch: compiled([v.value for v in variables], batch)


def _numpy(tensors: dict) -> dict:
    from keras import ops

    return {k: ops.convert_to_numpy(v) for k, v in tensors.items()}


def cli(*arguments: str) -> None:
    from keras_maskrcnn.cli import main

    sys.exit(main(list(arguments)))


if __name__ == "__main__":
    import os

    if os.environ.get("KERAS_MASKRCNN_BLOCK_TENSORFLOW") == "1":
        from helpers import block_tensorflow

        block_tensorflow()
    command, *arguments = sys.argv[1:]
    {"predict": predict, "losses": losses, "cli": cli}[command](*arguments)
