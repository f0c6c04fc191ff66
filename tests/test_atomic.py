"""Atomic writes: a process killed at any moment of a save leaves a loadable previous version;
strict JSON; strict loading of a model directory."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_maskrcnn.atomic import atomic_write_json, atomic_write_text, strict_json
from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import get_config
from keras_maskrcnn.saving import load_model_dir, read_model_config, save_model_dir

SAVER = r"""
import sys
import numpy as np
from keras_maskrcnn.config import get_config
from keras_maskrcnn.builder import build_model
from keras_maskrcnn.saving import save_model_dir
directory = sys.argv[1]
config = get_config("shapes", mask_head_dim=8, box_head_dim=32, fpn_channels=16)
model = build_model(config)
for version in range(1, 1000):
    for w in model.weights:
        w.assign(np.full(w.shape, version, w.dtype.name if hasattr(w.dtype, "name") else w.dtype))
    # Each version also changes the config, so a mismatched pair would show.
    model.config = config.replace(name=f"v{version}")
    save_model_dir(model, directory)
    print(version, flush=True)
"""


def test_kill_during_save_leaves_a_loadable_version(tmp_path):
    directory = tmp_path / "model"
    rng = random.Random(0)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(directory)],
                                stdout=subprocess.PIPE, text=True, env=env)
        try:
            first = proc.stdout.readline()  # one complete version exists
            assert first.strip(), "saver failed"
            time.sleep(rng.uniform(0.0, 1.5))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
        config = read_model_config(directory)
        version = int(config.name[1:])
        model = load_model_dir(directory)
        values = {float(np.asarray(w.value).flat[0]) for w in model.weights}
        assert values == {float(version)}, (attempt, version, sorted(values)[:5])


def test_strict_json_and_atomic_text(tmp_path):
    path = atomic_write_json(tmp_path / "h.json", {"a": float("nan"), "b": [1.0, float("inf")]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None]}
    assert strict_json(np.float32(2.5)) == 2.5
    atomic_write_text(tmp_path / "t.txt", "x")
    assert (tmp_path / "t.txt").read_text() == "x"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_strict_load_rejects_config_with_fewer_layers(tmp_path):
    config = get_config("shapes")
    save_model_dir(build_model(config), tmp_path / "m")
    values = json.loads((tmp_path / "m" / "config.json").read_text())
    values["mask_head_convs"] = 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(values))
    # An edit of config.json that changes the architecture is refused, naming the field...
    with pytest.raises(ValueError, match=r"config.json changes the architecture.*mask_head_convs \(2 -> 1\)"):
        load_model_dir(tmp_path / "m")
    # ...and loading with such a config fails, naming the weights it would not use.
    with pytest.raises(ValueError, match="does not use.*mask_head"):
        load_model_dir(tmp_path / "m", config=config.replace(mask_head_convs=1))


def test_inference_settings_edited_in_config_json_take_effect(tmp_path):
    config = get_config("shapes")
    save_model_dir(build_model(config), tmp_path / "m")
    values = json.loads((tmp_path / "m" / "config.json").read_text())
    values.update(score_threshold=0.5, detections_per_image=7, class_names=["bg", "a", "b", "c"])
    (tmp_path / "m" / "config.json").write_text(json.dumps(values))
    model = load_model_dir(tmp_path / "m")
    assert model.config.score_threshold == 0.5 and model.config.detections_per_image == 7
    assert model.roi_heads.detection_layer.max_detections == 7  # reaches the graph
    assert model.config.class_names == ("bg", "a", "b", "c")


def test_config_json_older_than_its_weights_is_an_interrupted_save(tmp_path):
    """A save killed between its two renames leaves the new weights beside the previous
    config.json (older): the weights' own config wins, architecture included."""
    save_model_dir(build_model(get_config("shapes")), tmp_path / "old")
    save_model_dir(build_model(get_config("shapes", mask_head_convs=1)), tmp_path / "m")
    config_json = tmp_path / "m" / "config.json"
    config_json.write_text((tmp_path / "old" / "config.json").read_text())
    weights = tmp_path / "m" / "model.weights.h5"
    stamp = weights.stat().st_mtime_ns
    os.utime(config_json, ns=(stamp - 10**9, stamp - 10**9))
    assert read_model_config(tmp_path / "m").mask_head_convs == 1
    assert load_model_dir(tmp_path / "m").config.mask_head_convs == 1


def test_predicting_with_nan_weights_is_refused():
    from keras_maskrcnn.inference import predict_images

    model = build_model(get_config("shapes"))
    kernel = model.roi_heads.mask_head.predictor.kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        predict_images(model, [np.zeros((64, 64, 3), np.uint8)])


def test_export_targets_never_replace_other_files(tmp_path, capsys):
    """A SavedModel folder replaces only nothing, an empty folder or an earlier SavedModel;
    a one-file export is refused a folder. The user's files stay."""
    from keras_maskrcnn.atomic import require_file_target, require_replaceable_folder
    from keras_maskrcnn.builder import build_model
    from keras_maskrcnn.cli import main
    from keras_maskrcnn.config import get_config
    from keras_maskrcnn.saving import save_model_dir

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_text("precious")
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "saved_model.pb").write_text("")
    for path in (tmp_path / "new", tmp_path / "empty", earlier):
        require_replaceable_folder(path, "saved_model.pb", "SavedModel")
    (tmp_path / "empty").mkdir()
    require_replaceable_folder(tmp_path / "empty", "saved_model.pb", "SavedModel")
    with pytest.raises(ValueError, match="folder of other files"):
        require_replaceable_folder(photos, "saved_model.pb", "SavedModel")
    with pytest.raises(ValueError, match="is a file"):
        require_replaceable_folder(afile, "saved_model.pb", "SavedModel")
    with pytest.raises(ValueError, match="is a folder"):
        require_file_target(photos, "a TFLite model")
    model_dir = save_model_dir(build_model(get_config("shapes")), tmp_path / "model")
    for fmt, target in (("saved_model", photos), ("saved_model", afile), ("tflite", photos)):
        assert main(["export", "--format", fmt, "--model", str(model_dir), "--output",
                     str(target)]) == 2, (fmt, target)
        err = capsys.readouterr().err
        assert "Traceback" not in err and str(target) in err, err
    assert (photos / "holiday.jpg").read_text() == "precious" and afile.read_text() == "mine"


def test_truncated_weights_and_checkpoint_are_one_line_errors(tmp_path):
    from keras_maskrcnn.builder import build_model
    from keras_maskrcnn.config import get_config
    from keras_maskrcnn.saving import WEIGHTS_FILE, checkpoint_info, load_model_dir, save_model_dir

    directory = save_model_dir(build_model(get_config("shapes")), tmp_path / "model")
    weights = directory / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="is not a readable weights file.*truncated or corrupt"):
        load_model_dir(directory)
    with pytest.raises(ValueError, match="checkpoint .* cannot be read"):
        checkpoint_info(weights)
