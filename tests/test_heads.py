"""The unified heads: attribute layout, argument checks, and the weight files of model directories
written before the unification (tests/data/legacy_models, see its README) loading into them
with the same detections."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import h5py
import numpy as np
import tensorflow as tf

from keras_maskrcnn.saving import WEIGHTS_FILE, load_model_dir, save_model_dir
from keras_maskrcnn.saving.migration import (
    current_layout,
    legacy_path,
    legacy_renames,
    upgrade_weights_file,
)

LEGACY_DIR = Path(__file__).parent / "data" / "legacy_models"


def _unpack(name: str, tmp_path: Path) -> Path:
    """A copy of legacy model directory `name` with its weights file unpacked."""
    directory = tmp_path / name
    shutil.copytree(LEGACY_DIR / name, directory)
    packed = directory / (WEIGHTS_FILE + ".gz")
    with gzip.open(packed, "rb") as fin, open(directory / WEIGHTS_FILE, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    packed.unlink()
    return directory


def _datasets(weights_path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(weights_path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                     else None)
    return out


def _check_reference_outputs(model, directory: Path) -> None:
    ref = np.load(directory / "reference.npz")
    image = ref["image"]
    out = model.inference_graph()(
        {"images": tf.constant(image, tf.float32),
         "image_shape": tf.constant([image.shape[1:3]], tf.float32)}, training=False)
    assert int(ref["num_detections"][0]) > 0
    np.testing.assert_array_equal(np.asarray(out["num_detections"]), ref["num_detections"])
    np.testing.assert_array_equal(np.asarray(out["detection_classes"]), ref["detection_classes"])
    np.testing.assert_allclose(np.asarray(out["detection_boxes"]), ref["detection_boxes"],
                               rtol=0, atol=1e-4)
    for key in ("detection_scores", "detection_masks"):
        np.testing.assert_allclose(np.asarray(out[key]), ref[key], rtol=0, atol=1e-5)


def _kernel(layer) -> np.ndarray:
    return layer.get_weights()[0]


def test_v1_model_dir_loads_unchanged(tmp_path):
    directory = _unpack("v1", tmp_path)
    weights = directory / WEIGHTS_FILE
    renames = legacy_renames(weights)  # written before the parts: every path moves
    assert renames["inference_model/layers/rpn_head/conv/vars"] == "layers/rpn/head/convs/conv2d/vars"
    assert renames["box_head/fc2/vars"] == "layers/standard_ro_i_heads/box_head/fcs/dense_1/vars"
    assert renames["fpn/layers/conv2d_3/vars"] == "backbone/fpn/layers/conv2d_3/vars"
    assert renames["backbone/layers/conv2d/vars"] == "backbone/body/layers/conv2d/vars"
    model = load_model_dir(directory)
    _check_reference_outputs(model, directory)
    stored = _datasets(weights)
    np.testing.assert_array_equal(_kernel(model.rpn.head.convs[0]),
                                  stored["inference_model/layers/rpn_head/conv/vars/0"])
    np.testing.assert_array_equal(_kernel(model.roi_heads.box_head.fcs[1]), stored["box_head/fc2/vars/0"])
    np.testing.assert_array_equal(_kernel(model.roi_heads.mask_head.convs[1]),
                                  stored["inference_model/layers/mask_head/convs/conv2d_1/vars/0"])
    # Written again, every weight keeps its value at its current path.
    again = _datasets(save_model_dir(model, tmp_path / "again") / WEIGHTS_FILE)
    assert sorted(again) == sorted(legacy_path(p) for p in stored)
    for path, value in stored.items():
        np.testing.assert_array_equal(again[legacy_path(path)], value, err_msg=path)


def test_v2_model_dir_loads_after_upgrade(tmp_path):
    directory = _unpack("v2", tmp_path)
    weights = directory / WEIGHTS_FILE
    stored = _datasets(weights)
    with h5py.File(weights, "r") as f:
        attributes = dict(f.attrs)
    renames = legacy_renames(weights)
    layers = "inference_model/layers"
    roi = "layers/standard_ro_i_heads"
    assert renames[f"{layers}/conv_rpn_head/convs/conv2d/vars"] == "layers/rpn/head/convs/conv2d/vars"
    assert renames[f"{layers}/conv_rpn_head/convs/conv2d_1/vars"] == \
        "layers/rpn/head/convs/conv2d_1/vars"
    assert renames[f"{layers}/norm_mask_head/norms/batch_normalization_1/vars"] == \
        f"{roi}/mask_head/norms/batch_normalization_1/vars"
    assert renames["box_head/fcs/dense/vars"] == f"{roi}/box_head/fcs/dense/vars"

    assert upgrade_weights_file(weights)
    assert not upgrade_weights_file(weights)  # already current: untouched
    with h5py.File(weights, "r") as f:
        assert dict(f.attrs).keys() == attributes.keys()
    upgraded = _datasets(weights)
    assert sorted(upgraded) == sorted(legacy_path(p) for p in stored)
    for path, value in stored.items():
        np.testing.assert_array_equal(upgraded[legacy_path(path)], value, err_msg=path)

    model = load_model_dir(directory)
    _check_reference_outputs(model, directory)
    np.testing.assert_array_equal(_kernel(model.rpn.head.convs[1]),
                                  stored[f"{layers}/conv_rpn_head/convs/conv2d_1/vars/0"])
    np.testing.assert_array_equal(_kernel(model.roi_heads.box_head.fcs[0]), stored["box_head/fcs/dense/vars/0"])
    np.testing.assert_array_equal(
        model.roi_heads.mask_head.norms[1].get_weights()[3],
        stored[f"{layers}/norm_mask_head/norms/batch_normalization_1/vars/3"])
    # (functional layers are numbered in graph order: fpn_output4_norm is the 8th BatchNorm)
    np.testing.assert_array_equal(model.backbone.fpn.get_layer("fpn_output4_norm").get_weights()[0],
                                  stored["fpn/layers/batch_normalization_7/vars/0"])
    # Files written now are in the current layout.
    again = save_model_dir(model, tmp_path / "again") / WEIGHTS_FILE
    assert legacy_renames(again) == {}
    assert sorted(_datasets(again)) == sorted(upgraded)


def test_current_layout_upgrades_a_temporary_copy(tmp_path):
    directory = _unpack("v2", tmp_path)
    weights = directory / WEIGHTS_FILE
    before = weights.read_bytes()
    with current_layout(weights) as path:
        assert path != weights and legacy_renames(path) == {}
        scratch = path
    assert not scratch.exists() and weights.read_bytes() == before
    current = save_model_dir(load_model_dir(_unpack("v1", tmp_path)), tmp_path / "current")
    with current_layout(current / WEIGHTS_FILE) as path:
        assert path == current / WEIGHTS_FILE


def test_legacy_path_rule():
    roi = "layers/standard_ro_i_heads"
    assert legacy_path("a/conv_rpn_head/convs/conv2d/vars/0") == "a/rpn_head/convs/conv2d/vars/0"
    assert legacy_path("a/conv_rpn_head/convs/conv2d_2/vars") == "a/rpn_head/convs/conv2d_2/vars"
    assert legacy_path("box_head/fcs/dense_2/vars/1") == f"{roi}/box_head/fcs/dense_2/vars/1"
    assert legacy_path("a/conv_fc_box_head/fcs/dense/vars") == "a/box_head/fcs/dense/vars"
    assert legacy_path("inference_model/layers/rpn_head/conv/vars/0") == \
        "layers/rpn/head/convs/conv2d/vars/0"
    # Files saved with the aliases `RPNHead.conv` and `BoxHead.fc{k}` (issue 19).
    assert legacy_path("layers/rpn/head/conv/vars/0") == "layers/rpn/head/convs/conv2d/vars/0"
    assert legacy_path(f"{roi}/box_head/fc1/vars/0") == f"{roi}/box_head/fcs/dense/vars/0"
    assert legacy_path(f"{roi}/box_head/fc3/vars") == f"{roi}/box_head/fcs/dense_2/vars"
    assert legacy_path("box_head/fc2/vars/1") == f"{roi}/box_head/fcs/dense_1/vars/1"
    assert legacy_path("fpn/layers/conv2d_3/vars/1") == "backbone/fpn/layers/conv2d_3/vars/1"
    assert legacy_path("inference_model/layers/res5_head/res5/layers/conv2d/vars/0", c4=True) == \
        "layers/res5_ro_i_heads/res5_head/res5/layers/conv2d/vars/0"
    assert legacy_path("box_head/class_logits/vars/0", c4=True) == \
        "layers/res5_ro_i_heads/box_head/class_logits/vars/0"
    for current in ("layers/rpn/head/convs/conv2d/vars/0", f"{roi}/box_head/fcs/dense/vars/0",
                    "layers/rpn/head/convs/conv2d_1/vars/0", f"{roi}/box_head/fcs/dense_1/vars/1",
                    f"{roi}/mask_head/convs/conv2d/vars/0", "backbone/fpn/layers/conv2d_3/vars/1",
                    "backbone/body/layers/conv2d/vars/0"):
        assert legacy_path(current) == current


def test_files_saved_with_the_head_aliases_load(tmp_path):
    """Files written while `RPNHead.conv` and `BoxHead.fc1`, `fc2` aliased `convs[0]` and `fcs`
    (Keras saved those layers under the alias) load into the heads without the aliases."""
    model = load_model_dir(_unpack("v1", tmp_path))
    directory = save_model_dir(model, tmp_path / "aliased")
    weights = directory / WEIGHTS_FILE
    roi = "layers/standard_ro_i_heads/box_head"
    aliases = {"layers/rpn/head/convs/conv2d": "layers/rpn/head/conv",
               f"{roi}/fcs/dense": f"{roi}/fc1", f"{roi}/fcs/dense_1": f"{roi}/fc2"}
    with h5py.File(weights, "a") as f:
        for current, alias in aliases.items():
            f.move(current, alias)
    stored = _datasets(weights)
    assert "layers/rpn/head/conv/vars/0" in stored and f"{roi}/fc2/vars/0" in stored
    assert legacy_renames(weights) == {f"{alias}/vars": f"{current}/vars"
                                       for current, alias in aliases.items()}
    loaded = load_model_dir(directory)
    _check_reference_outputs(loaded, LEGACY_DIR / "v1")
    np.testing.assert_array_equal(_kernel(loaded.rpn.head.convs[0]),
                                  stored["layers/rpn/head/conv/vars/0"])
    np.testing.assert_array_equal(_kernel(loaded.roi_heads.box_head.fcs[1]), stored[f"{roi}/fc2/vars/0"])
    assert not hasattr(loaded.rpn.head, "conv") and not hasattr(loaded.roi_heads.box_head, "fc1")
