"""Backbone and FPN: shapes, strides, parameter counts, keras.applications weight copy."""

import keras
import numpy as np
import pytest

from keras_maskrcnn.backbones import RESNET_SPECS, build_fpn, build_resnet, tiny_spec
from keras_maskrcnn.backbones.pretrained import copy_keras_applications_resnet
from keras_maskrcnn.builder import build_backbone
from keras_maskrcnn.config import get_config


def _randomize_batchnorm(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shapes = [w.shape for w in layer.get_weights()]
            layer.set_weights([
                rng.uniform(0.5, 1.5, shapes[0]).astype("float32"),
                rng.normal(0, 0.1, shapes[1]).astype("float32"),
                rng.normal(0, 0.1, shapes[2]).astype("float32"),
                rng.uniform(0.5, 2.0, shapes[3]).astype("float32"),
            ])


@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "gn"])
def test_tiny_resnet_fpn_shapes(norm):
    backbone = build_resnet(tiny_spec((16, 32, 64, 128)), norm=norm)
    fpn = build_fpn([c.shape[-1] for c in backbone.outputs], channels=32)
    outputs = fpn(backbone(np.zeros((2, 96, 64, 3), "float32")))
    assert [tuple(o.shape) for o in outputs] == [
        (2, 24, 16, 32), (2, 12, 8, 32), (2, 6, 4, 32), (2, 3, 2, 32), (2, 2, 1, 32)]


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_fpn_norm_layers(norm):
    backbone = build_resnet(tiny_spec((8, 8, 8, 8)), norm="bn")
    fpn = build_fpn([c.shape[-1] for c in backbone.outputs], channels=8, norm=norm)
    norms = [layer for layer in fpn.layers if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in fpn.layers if isinstance(layer, keras.layers.Conv2D)]
    expected = {f"fpn_{kind}{k}" for kind in ("lateral", "output") for k in range(2, 6)}
    assert {c.name for c in convs} == expected
    assert all(c.use_bias == (norm == "none") for c in convs)
    assert {n.name for n in norms} == ({f"{name}_norm" for name in expected} if norm == "bn"
                                       else set())
    outputs = fpn(backbone(np.zeros((1, 64, 64, 3), "float32")))
    assert [tuple(o.shape) for o in outputs] == [
        (1, 16, 16, 8), (1, 8, 8, 8), (1, 4, 4, 8), (1, 2, 2, 8), (1, 1, 1, 8)]
    with pytest.raises(ValueError, match="norm"):
        build_fpn(channels=8, norm="gn")


def test_builder_fpn_follows_fpn_norm():
    config = get_config("torchvision_r50_fpn_v2", backbone="resnet_tiny", fpn_channels=8)
    fpn = build_backbone(config).fpn
    assert fpn.name == "fpn" and fpn.outputs[0].shape[-1] == 8
    assert fpn.get_layer("fpn_output3_norm") is not None


def test_resnet50_conv_parameter_count_matches_torchvision():
    backbone = build_resnet(RESNET_SPECS["resnet50"])
    # torchvision resnet50 without the fc layer: 25,557,032 - 2,049,000 parameters; our count
    # adds the BN moving statistics (2 x 26,560), which torchvision keeps as buffers.
    bn_stats = sum(int(np.prod(w.shape)) for w in backbone.weights if "moving" in w.path)
    assert backbone.count_params() - bn_stats == 25_557_032 - 2_049_000


def test_resnext50_32x4d_parameter_count_matches_torchvision():
    """torchvision resnext50_32x4d: 25,028,904 parameters with its fc (2,049,000)."""
    backbone = build_resnet(RESNET_SPECS["resnext50_32x4d"])
    bn_stats = sum(int(np.prod(w.shape)) for w in backbone.weights if "moving" in w.path)
    assert backbone.count_params() - bn_stats == 25_028_904 - 2_049_000
    # grouped 3x3 convs: 32 groups of 4 x 2**(stage - 2) channels
    assert backbone.get_layer("res2_0_conv2").groups == 32
    assert backbone.get_layer("res2_0_conv2").filters == 128
    assert backbone.get_layer("res5_0_conv2").filters == 1024


@pytest.mark.parametrize("spec", [RESNET_SPECS["resnet50"], tiny_spec((8, 16, 32, 64))])
def test_last_stage_4_is_the_same_network_without_res5(spec):
    """The C4 backbone: the layers (names, configs, order) of the full ResNet up to res4."""
    full, c4 = build_resnet(spec), build_resnet(spec, last_stage=4)
    kept = [layer.get_config() for layer in full.layers if not layer.name.startswith("res5")]
    assert [layer.get_config() for layer in c4.layers] == kept
    assert len(c4.outputs) == 3 and c4.outputs[-1].shape[-1] == spec.widths[2] * 4
    with pytest.raises(ValueError, match="last_stage"):
        build_resnet(spec, last_stage=3)


def test_freeze_at_freezes_stem_and_res2():
    backbone = build_resnet(tiny_spec((16, 32, 64, 128)), norm="bn", freeze_at=2)
    assert not backbone.get_layer("stem_conv1").trainable
    assert not backbone.get_layer("res2_0_conv1").trainable
    assert backbone.get_layer("res3_0_conv1").trainable


def test_stride_in_1x1_moves_the_stride():
    backbone = build_resnet(RESNET_SPECS["resnet50"], stride_in_1x1=True)
    assert backbone.get_layer("res3_0_conv1").strides == (2, 2)
    assert backbone.get_layer("res3_0_conv2").strides == (1, 1)
    v15 = build_resnet(RESNET_SPECS["resnet50"], stride_in_1x1=False)
    assert v15.get_layer("res3_0_conv2").strides == (2, 2)


def test_keras_applications_weights_copy_reproduces_its_features():
    """Random-initialized keras.applications ResNet50 (no download) -> same C5 after the copy."""
    app = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    _randomize_batchnorm(app)
    ours = build_resnet(RESNET_SPECS["resnet50"], norm="frozen_bn", stride_in_1x1=True)
    copied = copy_keras_applications_resnet(app, ours, RESNET_SPECS["resnet50"].blocks)
    assert copied == 1 + 16 * 3 + 4
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    expected = app(x, training=False).numpy()
    got = ours(x, training=False)[-1].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_backbone_weights_from_a_local_keras_applications_file(tmp_path):
    """`--backbone-weights FILE`: a local copy of keras.applications' ImageNet file (here a
    random-initialised one, nothing downloads) is loaded through the same copy."""
    from keras_maskrcnn.backbones.pretrained import imagenet_config_overrides, load_backbone_weights
    from keras_maskrcnn.builder import build_model
    from keras_maskrcnn.config import get_config

    app = keras.applications.ResNet50(include_top=False, weights=None)
    _randomize_batchnorm(app)
    path = tmp_path / "resnet50_notop.weights.h5"
    app.save_weights(str(path))
    config = get_config("coco_r50_fpn", **imagenet_config_overrides()).replace(
        backbone_weights=str(path))
    ours = build_resnet(RESNET_SPECS["resnet50"], norm="frozen_bn", stride_in_1x1=True)
    load_backbone_weights(ours, str(path), "resnet50", keras_applications_layout=True)
    np.testing.assert_array_equal(ours.get_layer("stem_conv1").get_weights()[0],
                                  app.get_layer("conv1_conv").get_weights()[0])
    with pytest.raises(FileNotFoundError, match="backbone weights file not found"):
        load_backbone_weights(ours, str(tmp_path / "none.h5"), "resnet50", True)
    # Through the builder, from the config's fields.
    model = build_model(config.replace(num_classes=2, image_size=(128, 128), min_size=128,
                                       max_size=128))
    np.testing.assert_array_equal(model.backbone.body.get_layer("stem_conv1").get_weights()[0],
                                  app.get_layer("conv1_conv").get_weights()[0])
