"""The backend-agnostic tests (`tests/portable/`) on every other Keras backend, each in its own
process with TensorFlow blocked: JAX and PyTorch (TensorFlow runs them in-process)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import backend_env, run_backend_worker

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_portable_suite(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.fail(f"{backend} is not installed: pip install -e \".[test]\" installs it")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
         "-m", "not slow", "tests/portable"],
        cwd=ROOT, env=backend_env(backend, fast_compile=True), capture_output=True, text=True,
        timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


# --------------------------------------------------------------- the model across backends
OTHER_BACKENDS = ["jax", "torch"]


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """A `shapes` model directory (random weights), one training batch and TensorFlow's
    losses on it."""
    import keras
    import numpy as np

    from keras_maskrcnn.builder import build_model
    from keras_maskrcnn.config import get_config
    from keras_maskrcnn.data import ShapesDataset, make_dataset
    from keras_maskrcnn.model import TRAINING_INPUTS
    from keras_maskrcnn.saving import save_model_dir
    from keras_maskrcnn.steps import unpack_batch

    directory = tmp_path_factory.mktemp("backends")
    keras.utils.set_random_seed(3)
    config = get_config("shapes")
    model = build_model(config)
    save_model_dir(model, directory / "model")
    dataset = make_dataset(ShapesDataset(num_images=4, image_size=128, seed=0), config,
                           training=True, batch_size=2, seed=0)
    batch = {k: np.asarray(v) for k, v in unpack_batch(next(iter(dataset))).items()
             if k in TRAINING_INPUTS}
    np.savez(directory / "batch.npz", **batch)
    losses = {k: float(v) for k, v in model.compute_losses(batch, training=True).items()}
    return directory, batch, losses


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_training_step_equals_tensorflow_and_saves_for_it(shapes_run, backend, tmp_path):
    """Same weights, same batch and sampler seeds: the five losses equal TensorFlow's; one
    guarded step there, saved, loads here (TensorFlow) and gives that backend's losses."""
    import numpy as np

    from keras_maskrcnn.model import LOSS_NAMES
    from keras_maskrcnn.saving import load_model_dir

    directory, batch, tf_losses = shapes_run
    run_backend_worker(backend, "losses", directory / "model", directory / "batch.npz",
               tmp_path / "out.npz", tmp_path / "stepped")
    out = dict(np.load(tmp_path / "out.npz"))
    for name in (*LOSS_NAMES, "loss"):
        np.testing.assert_allclose(out[name], tf_losses[name], rtol=2e-4, atol=2e-5,
                                   err_msg=f"{backend} {name}")
    assert out["step_finite_loss"] == 1.0 and out["step_finite_weights"] == 1.0
    assert np.isfinite(out["step_grad_norm"]) and out["step_grad_norm"] > 0
    assert abs(float(out["after_loss"]) - tf_losses["loss"]) > 1e-4  # the step moved
    stepped = load_model_dir(tmp_path / "stepped")
    here = stepped.compute_losses(batch, training=True)
    # Looser than before the step: after it, a proposal near a tie can rank differently under
    # the two backends' float noise and change one sampled RoI (measured: torch's class loss
    # 1.3e-3 off); a weight loaded wrongly moves the losses by far more.
    for name in (*LOSS_NAMES, "loss"):
        np.testing.assert_allclose(float(here[name]), out[f"after_{name}"], rtol=5e-3,
                                   atol=2e-4, err_msg=f"{backend} -> tensorflow {name}")


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_cli_predict_without_tensorflow(shapes_run, backend, tmp_path):
    """`keras-maskrcnn predict` on the backend with TensorFlow blocked writes the same
    predictions file as on TensorFlow."""
    import json

    import numpy as np
    from PIL import Image

    from keras_maskrcnn.cli import main

    directory, batch, _ = shapes_run
    image = tmp_path / "shapes.png"
    Image.fromarray(batch["images"][0].astype(np.uint8)).save(image)
    common = ["--score-threshold", "0.05", "--no-draw"]  # random weights: low scores
    assert main(["predict", "--model", str(directory / "model"), str(image), "--output",
                 str(tmp_path / "tf"), *common]) == 0
    run_backend_worker(backend, "cli", "predict", "--model", directory / "model", image,
                       "--output", tmp_path / backend, *common)
    ours = json.loads((tmp_path / backend / "predictions.json").read_text())
    theirs = json.loads((tmp_path / "tf" / "predictions.json").read_text())
    assert len(ours) == len(theirs) > 0
    top = sorted(theirs, key=lambda r: -r["score"])[:5]
    for record in top:
        close = [r for r in ours if r["category_id"] == record["category_id"]
                 and abs(r["score"] - record["score"]) < 1e-3
                 and np.allclose(r["bbox"], record["bbox"], atol=0.05)]
        assert close, f"{backend} lacks TensorFlow's detection {record}"


# CI budget (`-m slow`, about 100 s): the matrix's core (parity, the training step, a save on one
# backend loaded on another, `predict`) runs by default; `fit`, the guarded step and `predict`
# from Python run by default in tests/portable/test_model.py on every backend.
@pytest.mark.slow
@pytest.mark.parametrize("backend,extra", [
    ("jax", ["--cpu-devices", "2", "--strategy", "mirrored", "--precision", "mixed_bfloat16"]),
    ("torch", [])])
def test_cli_train_resume_evaluate(backend, extra, tmp_path):
    """`keras-maskrcnn train` on the backend (JAX: data parallel over two host devices, bf16),
    resumed from its checkpoint by a second run, then `evaluate` of the model directory."""
    env = backend_env(backend, block_tensorflow=False, fast_compile=True)
    output = tmp_path / "run"
    base = [sys.executable, "-m", "keras_maskrcnn.cli", "train", "--dataset", "shapes",
            "--shapes-train-images", "8", "--output", str(output), "--batch-size", "2",
            "--checkpoint-every", "1", *extra]

    def run(*arguments):
        proc = subprocess.run([*arguments], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    first = run(*base, "--max-steps", "2")
    assert f"{backend} backend" in first and "trained to step 2 of 2" in first
    if backend == "jax":
        assert "DataParallel over 2 devices" in first and "mixed_bfloat16" in first
    second = run(*base, "--max-steps", "3")
    assert "resuming from step 2 of 3" in second and "trained to step 3 of 3" in second
    metrics = run(sys.executable, "-m", "keras_maskrcnn.cli", "evaluate", "--model",
                  str(output), "--dataset", "shapes", "--shapes-val-images", "3")
    assert "segm" in metrics.lower()


def test_export_from_jax_runs_in_tensorflow(shapes_run, tmp_path):
    """`KERAS_BACKEND=jax keras-maskrcnn export` re-runs itself on TensorFlow: one command."""
    directory, _, _ = shapes_run
    proc = subprocess.run([sys.executable, "-m", "keras_maskrcnn.cli", "export", "--model",
                           str(directory / "model"), "--format", "tflite", "--output",
                           str(tmp_path / "m.tflite")], cwd=ROOT,
                          env=backend_env("jax", block_tensorflow=False, fast_compile=True), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (tmp_path / "m.tflite").stat().st_size > 1000


def test_jax_cpu_flags_added_once_never_over_the_users(monkeypatch):
    """`backend.tune_jax_cpu` (run at import) adds its XLA:CPU flag for JAX on a measured jaxlib
    only, once, and leaves a value the user set; JAX accepting it is proven by every JAX
    subprocess above (XLA aborts on an unknown flag)."""
    from keras_maskrcnn import backend

    flag = "--xla_cpu_experimental_ynn_fusion_type="
    monkeypatch.setattr(backend, "name", lambda: "jax")
    monkeypatch.setattr("importlib.metadata.version", lambda package: "0.10.2")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert backend.tune_jax_cpu() == [flag]
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {flag}"
    assert backend.tune_jax_cpu() == []
    monkeypatch.setenv("XLA_FLAGS", f"{flag}default")
    assert backend.tune_jax_cpu() == [] and os.environ["XLA_FLAGS"] == f"{flag}default"
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setenv("KERAS_MASKRCNN_JAX_CPU_FLAGS", "0")  # the opt-out
    assert backend.tune_jax_cpu() == [] and "XLA_FLAGS" not in os.environ
    monkeypatch.delenv("KERAS_MASKRCNN_JAX_CPU_FLAGS")
    monkeypatch.setattr("importlib.metadata.version", lambda package: "0.11.0")
    assert backend.tune_jax_cpu() == [] and "XLA_FLAGS" not in os.environ
    monkeypatch.setattr(backend, "name", lambda: "tensorflow")
    assert backend.tune_jax_cpu() == []
