"""The unified heads: attribute layout, argument checks, and the weight files of model directories
written before the unification (tests/data/legacy_models, see its README) loading into them
with the same detections."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.heads import BoxHead, MaskHead, RPNHead
from keras_maskrcnn.heads.legacy import (
    current_layout,
    legacy_path,
    legacy_renames,
    upgrade_weights_file,
)
from keras_maskrcnn.model_dir import WEIGHTS_FILE, load_model_dir, save_model_dir

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
    out = model.inference_model(
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
    assert legacy_renames(weights) == {}
    model = load_model_dir(directory)
    _check_reference_outputs(model, directory)
    stored = _datasets(weights)
    np.testing.assert_array_equal(_kernel(model.rpn_head.conv),
                                  stored["inference_model/layers/rpn_head/conv/vars/0"])
    np.testing.assert_array_equal(_kernel(model.box_head.fcs[1]), stored["box_head/fc2/vars/0"])
    np.testing.assert_array_equal(_kernel(model.mask_head.convs[1]),
                                  stored["inference_model/layers/mask_head/convs/conv2d_1/vars/0"])
    # Written again, the weights keep every path and value.
    again = _datasets(save_model_dir(model, tmp_path / "again") / WEIGHTS_FILE)
    assert sorted(again) == sorted(stored)
    for path, value in stored.items():
        np.testing.assert_array_equal(again[path], value, err_msg=path)


def test_v2_model_dir_loads_after_upgrade(tmp_path):
    directory = _unpack("v2", tmp_path)
    weights = directory / WEIGHTS_FILE
    stored = _datasets(weights)
    with h5py.File(weights, "r") as f:
        attributes = dict(f.attrs)
    renames = legacy_renames(weights)
    layers = "inference_model/layers"
    assert renames[f"{layers}/conv_rpn_head/convs/conv2d/vars"] == f"{layers}/rpn_head/conv/vars"
    assert renames[f"{layers}/conv_rpn_head/convs/conv2d_1/vars"] == \
        f"{layers}/rpn_head/convs/conv2d_1/vars"
    assert renames[f"{layers}/norm_mask_head/norms/batch_normalization_1/vars"] == \
        f"{layers}/mask_head/norms/batch_normalization_1/vars"
    assert renames["box_head/fcs/dense/vars"] == "box_head/fc1/vars"
    assert not any(p.startswith(("backbone/", "fpn/")) for p in renames)  # unchanged layouts

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
    np.testing.assert_array_equal(_kernel(model.rpn_head.convs[1]),
                                  stored[f"{layers}/conv_rpn_head/convs/conv2d_1/vars/0"])
    np.testing.assert_array_equal(_kernel(model.box_head.fcs[0]), stored["box_head/fcs/dense/vars/0"])
    np.testing.assert_array_equal(
        model.mask_head.norms[1].get_weights()[3],
        stored[f"{layers}/norm_mask_head/norms/batch_normalization_1/vars/3"])
    # (functional layers are numbered in graph order: fpn_output4_norm is the 8th BatchNorm)
    np.testing.assert_array_equal(model.fpn.get_layer("fpn_output4_norm").get_weights()[0],
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
    v1 = _unpack("v1", tmp_path) / WEIGHTS_FILE
    with current_layout(v1) as path:
        assert path == v1


def test_legacy_path_rule():
    assert legacy_path("a/conv_rpn_head/convs/conv2d/vars/0") == "a/rpn_head/conv/vars/0"
    assert legacy_path("a/conv_rpn_head/convs/conv2d_2/vars") == "a/rpn_head/convs/conv2d_2/vars"
    assert legacy_path("box_head/fcs/dense_2/vars/1") == "box_head/fc3/vars/1"
    assert legacy_path("a/conv_fc_box_head/fcs/dense/vars") == "a/box_head/fc1/vars"
    for current in ("inference_model/layers/rpn_head/conv/vars/0", "box_head/fc1/vars/0",
                    "inference_model/layers/mask_head/convs/conv2d/vars/0",
                    "fpn/layers/conv2d_3/vars/1"):
        assert legacy_path(current) == current


# --------------------------------------------------------------------------- the unified heads


def test_rpn_head_aliases_its_first_conv_without_duplicating_weights():
    head = RPNHead(3, channels=8, num_convs=2)
    logits, deltas = head([tf.zeros((1, 4, 4, 8)), tf.zeros((1, 2, 2, 8))])
    assert logits.shape == (1, 60) and deltas.shape == (1, 60, 4)
    assert head.conv is head.convs[0] and len(head.convs) == 2
    assert len(head.weights) == 2 * 2 + 2 + 2  # two convs, objectness, deltas
    with pytest.raises(ValueError, match="num_convs"):
        RPNHead(3, num_convs=0)


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_box_and_mask_heads_layout(norm):
    pooled = tf.zeros((2, 3, 4, 4, 5))
    box = BoxHead(2, conv_dim=6, num_convs=2, fc_dim=8, num_fcs=3, norm=norm)
    logits, deltas = box(pooled)
    assert logits.shape == (2, 3, 3) and deltas.shape == (2, 3, 2, 4)
    assert [box.fc1, box.fc2, box.fc3] == box.fcs
    assert all((n is None) == (norm == "none") for n in box.norms)
    assert all(c.use_bias == (norm == "none") for c in box.convs)
    bn_weights = 4 * 2 if norm == "bn" else 0
    conv_weights = 2 * (1 if norm == "bn" else 2)
    assert len(box.weights) == conv_weights + bn_weights + 3 * 2 + 2 * 2
    mask = MaskHead(2, conv_dim=6, num_convs=2, norm=norm)
    assert mask(pooled).shape == (2, 3, 8, 8, 2)
    assert len(mask.weights) == conv_weights + bn_weights + 2 + 2
    with pytest.raises(ValueError, match="num_fcs"):
        BoxHead(2, num_fcs=0)
    with pytest.raises(ValueError, match="norm"):
        MaskHead(2, norm="gn")


def test_model_directory_names_keep_their_old_import_path():
    import keras_maskrcnn.model as model_module
    import keras_maskrcnn.model_dir as model_dir

    for name in model_module.MOVED_TO_MODEL_DIR:
        assert getattr(model_module, name) is getattr(model_dir, name), name
    with pytest.raises(AttributeError, match="no_such_name"):
        model_module.no_such_name  # noqa: B018
