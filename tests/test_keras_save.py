"""Keras conventions: `model.save("m.keras")` then `keras.saving.load_model` in a fresh process
(after `import keras_maskrcnn`) gives the same model: same weights, same detections."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import get_config

OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections",
               "detection_masks")


def _run_python(code: str, tmp_path) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter (nothing of this process's Keras registry carried)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}"
    return proc


def _fixed_inputs(config) -> dict[str, np.ndarray]:
    """Two images of rectangles on noise, the second using only part of the canvas."""
    rng = np.random.default_rng(0)
    h, w = config.image_size
    images = rng.uniform(0, 80, (2, h, w, 3)).astype(np.float32)
    for b in range(2):
        for _ in range(3):
            y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
            images[b, y:y + rng.integers(16, 40), x:x + rng.integers(16, 40)] = \
                rng.uniform(100, 255, 3)
    images[1, :, w * 3 // 4:] = 0.0
    image_shape = np.array([[h, w], [h, w * 3 // 4]], np.float32)
    return {"images": images, "image_shape": image_shape}


def _perturb_non_trainable(model) -> int:
    """Moves the batch-norm statistics off their initial values (0 mean, 1 variance), so that a
    load that silently re-initialised them would be caught."""
    rng = np.random.default_rng(1)
    count = 0
    for variable in model.non_trainable_weights:
        value = variable.numpy()
        if "moving_variance" in variable.path:
            variable.assign(value * rng.uniform(0.5, 1.5, value.shape).astype(value.dtype))
        elif "moving_mean" in variable.path:
            variable.assign(value + rng.normal(0.0, 0.05, value.shape).astype(value.dtype))
        else:
            continue
        count += 1
    return count


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A shapes model with perturbed BN statistics saved as `m.keras`, its outputs on fixed
    inputs and its weights (in `model.weights` order) beside it."""
    tmp_path = tmp_path_factory.mktemp("keras_save")
    config = get_config("shapes", score_threshold=0.0)
    model = build_model(config)
    assert _perturb_non_trainable(model) > 0, "the shapes backbone has batch norms"
    inputs = _fixed_inputs(config)
    outputs = {k: np.asarray(v) for k, v in model(inputs).items()}
    assert outputs["num_detections"].min() > 0
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "inputs.npz", **inputs)
    np.savez(tmp_path / "expected.npz", **outputs)
    np.savez(tmp_path / "weights.npz", *[np.asarray(v) for v in model.weights])
    (tmp_path / "paths.json").write_text(json.dumps([v.path for v in model.weights]))
    return tmp_path, model, outputs


def test_load_in_fresh_process_gives_same_weights_and_outputs(saved):
    tmp_path, model, expected = saved
    _run_python("""
        import json
        import keras
        import numpy as np
        import keras_maskrcnn

        model = keras.saving.load_model("m.keras")
        assert type(model) is keras_maskrcnn.MaskRCNN, type(model)
        inputs = dict(np.load("inputs.npz"))
        np.savez("loaded_outputs.npz", **{k: np.asarray(v) for k, v in model(inputs).items()})
        np.savez("loaded_weights.npz", *[np.asarray(v) for v in model.weights])
        with open("loaded_paths.json", "w") as f:
            json.dump([v.path for v in model.weights], f)
        with open("loaded_config.json", "w") as f:
            json.dump(model.config.to_dict(), f)
    """, tmp_path)
    paths = json.loads((tmp_path / "loaded_paths.json").read_text())
    assert paths == json.loads((tmp_path / "paths.json").read_text())
    saved_weights = np.load(tmp_path / "weights.npz")
    loaded_weights = np.load(tmp_path / "loaded_weights.npz")
    assert len(loaded_weights.files) == len(saved_weights.files) == len(model.weights)
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(loaded_weights[f"arr_{i}"], saved_weights[f"arr_{i}"],
                                      err_msg=path)
    assert json.loads((tmp_path / "loaded_config.json").read_text()) == json.loads(
        json.dumps(model.config.to_dict()))
    loaded = np.load(tmp_path / "loaded_outputs.npz")
    np.testing.assert_array_equal(loaded["num_detections"], expected["num_detections"])
    np.testing.assert_array_equal(loaded["detection_classes"], expected["detection_classes"])
    for key in ("detection_boxes", "detection_scores", "detection_masks"):
        np.testing.assert_allclose(loaded[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_the_comparison_detects_reinitialised_weights(saved):
    """A freshly built model (new random weights, initial BN statistics) differs from the saved
    one, so the equalities above do show the weights were loaded."""
    _, model, expected = saved
    fresh = build_model(model.config)
    assert all(a.path == b.path for a, b in zip(fresh.weights, model.weights, strict=True))
    differ = [a.path for a, b in zip(fresh.weights, model.weights, strict=True)
              if not np.array_equal(np.asarray(a), np.asarray(b))]
    assert any("moving_mean" in p for p in differ) and any("kernel" in p for p in differ)
    outputs = fresh(_fixed_inputs(model.config))
    assert not np.allclose(np.asarray(outputs["detection_scores"]), expected["detection_scores"])


def test_compiled_model_loads_with_same_weights_and_outputs(tmp_path):
    """A compiled model (training graph built, as after training) saves and loads the same."""
    from keras_maskrcnn.solver import make_optimizer

    config = get_config("shapes", score_threshold=0.0, optimizer="sgd")
    model = build_model(config)
    _perturb_non_trainable(model)
    model.compile(optimizer=make_optimizer(config))
    inputs = _fixed_inputs(config)
    expected = {k: np.asarray(v) for k, v in model(inputs).items()}
    model.save(tmp_path / "compiled.keras")
    np.savez(tmp_path / "inputs.npz", **inputs)
    np.savez(tmp_path / "weights.npz", *[np.asarray(v) for v in model.weights])
    _run_python("""
        import warnings

        import keras
        import numpy as np
        import keras_maskrcnn

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*compile.* was not called")
            model = keras.saving.load_model("compiled.keras")
        inputs = dict(np.load("inputs.npz"))
        np.savez("loaded_outputs.npz", **{k: np.asarray(v) for k, v in model(inputs).items()})
        np.savez("loaded_weights.npz", *[np.asarray(v) for v in model.weights])
    """, tmp_path)
    saved_weights = np.load(tmp_path / "weights.npz")
    loaded_weights = np.load(tmp_path / "loaded_weights.npz")
    assert len(loaded_weights.files) == len(saved_weights.files)
    for i, variable in enumerate(model.weights):
        np.testing.assert_array_equal(loaded_weights[f"arr_{i}"], saved_weights[f"arr_{i}"],
                                      err_msg=variable.path)
    loaded = np.load(tmp_path / "loaded_outputs.npz")
    for key in OUTPUT_KEYS:
        np.testing.assert_allclose(loaded[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_compiled_model_restores_its_optimizer(tmp_path):
    """The optimizer (TorchSGD) and its learning-rate schedule are registered, and restored."""
    from keras_maskrcnn.solver import make_optimizer

    config = get_config("shapes", optimizer="sgd")
    model = build_model(config)
    optimizer = make_optimizer(config)
    model.compile(optimizer=optimizer)
    model.save(tmp_path / "compiled.keras")
    proc = _run_python("""
        import keras
        import keras_maskrcnn

        model = keras.saving.load_model("compiled.keras")
        optimizer = getattr(model, "optimizer", None)
        print(type(optimizer).__name__, type(getattr(optimizer, "_learning_rate", None)).__name__)
    """, tmp_path)
    assert proc.stdout.split() == [type(optimizer).__name__,
                                   type(optimizer._learning_rate).__name__]


def test_import_keras_maskrcnn_registers_every_custom_object(tmp_path):
    """Importing the package registers what importing all of its modules registers."""
    proc = _run_python("""
        import importlib
        import json
        import pkgutil

        import keras
        import keras_maskrcnn

        def registered():
            return {k for k in keras.saving.get_custom_objects()
                    if k.startswith("keras_maskrcnn>")}

        on_import = registered()
        for info in pkgutil.walk_packages(keras_maskrcnn.__path__, "keras_maskrcnn."):
            if info.name.rsplit(".", 1)[-1].startswith("_"):
                continue  # private modules, e.g. the compiled RoIAlign op library
            try:
                importlib.import_module(info.name)
            except ImportError as err:  # an optional dependency (e.g. torch) missing
                print("skipped", info.name, err)
        print(json.dumps({"on_import": sorted(on_import),
                          "missing": sorted(registered() - on_import)}))
    """, tmp_path)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["missing"] == []
    assert "keras_maskrcnn>MaskRCNN" in report["on_import"]
