"""The C4 architecture (Detectron2 `mask_rcnn_R_50_C4_1x`, the paper's ResNet-C4 head) and the
ResNeXt-50 32x4d backbone: layer shapes and strides, parameter counts against torchvision /
Detectron2 figures, anchors on one level, config, RoIPool, a short training run where every loss
falls, and SavedModel / TFLite exports of a C4 model.

Reference parameter figures (torch counting: conv / linear weights and biases plus BatchNorm
weight and bias; our Keras models also hold the BN moving mean and variance, which torch keeps as
buffers, so those are left out before comparing):

- torchvision `resnet50`: 25,557,032 with its fc (2048 x 1000 + 1000 = 2,049,000), i.e.
  23,508,032 for stem + res2..res5; its `layer4` (res5): 14,964,736.
- torchvision `resnext50_32x4d`: 25,028,904 with its fc, i.e. 22,979,904; `layer4`: 14,544,896.
- Detectron2 R50-C4 Mask R-CNN, 80 classes, from its architecture definition (Base-RCNN-C4 +
  defaults): ResNet-50 stem..res4 in the backbone and res5 in the RoI head (23,508,032 together),
  StandardRPNHead on 1024 channels with 15 anchors (3x3 conv 1024 + 1x1 objectness 15 + 1x1
  deltas 60: 9,515,083), FastRCNNOutputLayers on 2048 (81 logits + 320 deltas: 821,649), mask
  head with no convs (2x2 deconv 2048 -> 256 + 1x1 conv 256 -> 80: 2,117,968): 35,962,732, or
  35,909,612 as Detectron2 counts it (its FrozenBN affine parameters, 53,120, are buffers).
- X50-32x4d-FPN Mask R-CNN, 80 classes: torchvision `maskrcnn_resnet50_fpn(num_classes=81)`
  (44,400,693) with the ResNeXt-50 body (-23,508,032 + 22,979,904) and without torchvision's
  background box deltas (1024 x 4 + 4) and background mask channel (256 + 1): 43,868,208.
These figures were checked with torch 2.14 / torchvision 0.29 module counts.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import noise_rect_image

from keras_maskrcnn.backbones import RESNET_SPECS, build_res5_head, build_resnet
from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import MaskRCNNConfig, get_config
from keras_maskrcnn.data import ShapesDataset, make_dataset
from keras_maskrcnn.export import export_saved_model, export_tflite, tflite_op_names
from keras_maskrcnn.heads import MaskHead, Res5BoxHead, Res5Head
from keras_maskrcnn.inference import predict_images, run_model
from keras_maskrcnn.layers.anchors import SingleLevelAnchorGenerator
from keras_maskrcnn.layers.pooler import single_level_roi_pooler
from keras_maskrcnn.model import LOSS_NAMES
from keras_maskrcnn.saving import load_model_dir, save_model_dir
from keras_maskrcnn.training import make_optimizer

TV_RESNET50_NO_FC = 25_557_032 - 2_049_000
TV_RESNET50_LAYER4 = 14_964_736
TV_RESNEXT50_NO_FC = 25_028_904 - 2_049_000
TV_RESNEXT50_LAYER4 = 14_544_896
RESNET50_BN_AFFINE = 2 * 26_560
C4_RPN = (1024 * 1024 * 9 + 1024) + (1024 * 15 + 15) + (1024 * 60 + 60)
C4_BOX_PREDICTOR = (2048 * 81 + 81) + (2048 * 320 + 320)
C4_MASK_HEAD = (2048 * 256 * 2 * 2 + 256) + (256 * 80 + 80)
R50_C4 = TV_RESNET50_NO_FC + C4_RPN + C4_BOX_PREDICTOR + C4_MASK_HEAD
TV_MASKRCNN_R50_FPN_81 = 44_400_693
X50_FPN = (TV_MASKRCNN_R50_FPN_81 - TV_RESNET50_NO_FC + TV_RESNEXT50_NO_FC
           - (1024 * 4 + 4) - (256 + 1))

BOX_ATOL = 1e-3
PROB_ATOL = 1e-5


def torch_count(weights) -> int:
    """Parameters as torch counts them: everything but the BN moving statistics."""
    return sum(int(np.prod(w.shape)) for w in weights if "moving" not in w.path)


def tiny_c4(**overrides) -> MaskRCNNConfig:
    """The `shapes` preset (128 x 128, resnet_tiny) as a C4 model: res5 is the tiny ResNet's
    last stage (one bottleneck), RoIAlign 14x14 on C4, no mask convs."""
    values = dict(architecture="c4", box_pool_size=14, mask_head_convs=0,
                  tiny_widths=(8, 16, 32, 64), mask_head_dim=16, batch_size=4,
                  rpn_pre_nms_topk_train=600, rpn_post_nms_topk_train=128,
                  rpn_pre_nms_topk_test=300, rpn_post_nms_topk_test=50,
                  roi_batch_per_image=32, detections_per_image=10, max_instances=6)
    values.update(overrides)
    return get_config("shapes", **values)


# ----------------------------------------------------------------------------- config, anchors
def test_c4_presets_follow_detectron2():
    c = get_config("coco_r50_c4")
    assert (c.architecture, c.backbone, c.backbone_norm, c.freeze_at) == \
        ("c4", "resnet50", "frozen_bn", 2)
    assert c.strides == (16,) and c.num_anchors_per_location == 15
    assert c.anchor_sizes == (32, 64, 128, 256, 512) and c.aspect_ratios == (0.5, 1.0, 2.0)
    # Detectron2 defaults (12000 / 2000 train) with Base-RCNN-C4.yaml's test values (6000 / 1000)
    assert (c.rpn_pre_nms_topk_train, c.rpn_post_nms_topk_train) == (12000, 2000)
    assert (c.rpn_pre_nms_topk_test, c.rpn_post_nms_topk_test) == (6000, 1000)
    assert (c.box_pool_size, c.pooler_sampling_ratio, c.pooler_aligned) == (14, 0, True)
    assert (c.mask_head_convs, c.mask_head_dim, c.mask_resolution) == (0, 256, 14)
    assert get_config("coco_r101_c4").replace(name="coco_r50_c4", backbone="resnet50") == c
    x50 = get_config("coco_x50_32x4d_fpn")
    assert (x50.architecture, x50.backbone, x50.mask_resolution) == ("fpn", "resnext50_32x4d", 28)
    assert x50 == get_config("coco_r50_fpn").replace(name="coco_x50_32x4d_fpn",
                                                      backbone="resnext50_32x4d")


def test_c4_config_validation_and_old_files():
    c = get_config("coco_r50_c4")
    with pytest.raises(ValueError, match="architecture"):
        c.replace(architecture="c5")
    with pytest.raises(ValueError, match="box_pool_size"):
        c.replace(box_pool_size=7)
    assert c.replace(anchor_sizes=(64,)).num_anchors_per_location == 3
    with pytest.raises(ValueError, match="one size per level"):
        get_config("coco_r50_fpn", anchor_sizes=(32, 64))
    # a config file written before the field existed is an FPN model
    old = get_config("coco_r50_fpn").to_dict()
    del old["architecture"]
    assert MaskRCNNConfig.from_dict(old) == get_config("coco_r50_fpn")
    assert MaskRCNNConfig.from_dict(c.to_dict()) == c


def test_single_level_anchors_are_detectron2s_order():
    """Location-major, then size, then aspect ratio (Detectron2's cell anchors), stride 16."""
    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    layer = SingleLevelAnchorGenerator(16, sizes, ratios)
    anchors = layer.anchors((64, 96))
    assert anchors.shape == (4 * 6 * 15, 4) and layer.level_sizes((64, 96)) == (4 * 6 * 15,)
    expected = []
    for y in range(4):
        for x in range(6):
            for size in sizes:
                for ratio in ratios:
                    h, w = size * np.sqrt(ratio), size / np.sqrt(ratio)
                    expected.append([16 * y - h / 2, 16 * x - w / 2, 16 * y + h / 2,
                                     16 * x + w / 2])
    np.testing.assert_allclose(anchors, np.array(expected, np.float32), atol=1e-4)
    again = SingleLevelAnchorGenerator.from_config(layer.get_config())
    np.testing.assert_array_equal(again.anchors((64, 96)), anchors)


# ----------------------------------------------------------------------------- layers, strides
def test_c4_backbone_stops_at_res4_with_stride_16():
    spec = RESNET_SPECS["resnet50"]
    backbone = build_resnet(spec, last_stage=4)
    assert not [layer for layer in backbone.layers if layer.name.startswith("res5")]
    c2, c3, c4 = backbone(np.zeros((1, 128, 96, 3), "float32"))
    assert tuple(c4.shape) == (1, 128 // 16, 96 // 16, 1024)
    assert tuple(c2.shape)[1:] == (32, 24, 256) and tuple(c3.shape)[1:] == (16, 12, 512)


def test_res5_head_is_the_backbones_res5_and_matches_torchvision_layer4():
    """7x7 from 14x14 pooled, 2048 channels; same layers as res5 of the full ResNet; the
    parameter count of torchvision's layer4 (plus the BN statistics: 2 x 11,264 channels)."""
    spec = RESNET_SPECS["resnet50"]
    head = Res5Head(spec, name="res5_head")
    pooled = tf.random.normal((2, 3, 14, 14, 1024))
    features = head(pooled)
    assert tuple(features.shape) == (2, 3, 7, 7, 2048)
    assert torch_count(head.weights) == TV_RESNET50_LAYER4
    assert head.count_params() == TV_RESNET50_LAYER4 + 2 * 11_264
    full = build_resnet(spec)
    res5_layers = {(layer.name, type(layer).__name__) for layer in full.layers
                   if layer.name.startswith("res5_")}
    assert {(layer.name, type(layer).__name__) for layer in head.res5.layers[1:]} == res5_layers
    for name in ("res5_0_conv2", "res5_0_downsample_conv", "res5_2_conv3"):
        assert head.res5.get_layer(name).get_config() == full.get_layer(name).get_config()
    assert head.res5.get_layer("res5_0_conv2").strides == (2, 2)  # v1.5: stride on the 3x3
    x50 = build_res5_head(RESNET_SPECS["resnext50_32x4d"])
    assert torch_count(x50.weights) == TV_RESNEXT50_LAYER4
    assert x50.get_layer("res5_1_conv2").groups == 32

    box = Res5BoxHead(80)
    logits, deltas = box(features)
    assert tuple(logits.shape) == (2, 3, 81) and tuple(deltas.shape) == (2, 3, 80, 4)
    # the box predictor reads the 7x7 average: a 2048 vector per RoI
    mean = tf.reshape(tf.reduce_mean(features, axis=[2, 3]), (6, 2048))
    np.testing.assert_allclose(tf.reshape(logits, (6, 81)), box.class_logits(mean), atol=1e-5)
    mask = MaskHead(80, 256, num_convs=0)
    assert tuple(mask(features).shape) == (2, 3, 14, 14, 80)
    assert torch_count(box.weights) == C4_BOX_PREDICTOR
    assert torch_count(mask.weights) == C4_MASK_HEAD


def test_tiny_c4_model_layer_by_layer():
    """resnet_tiny: C4 at stride 16 (8 x 8 on 128), 15 anchors per location, RoIAlign 14x14 on
    C4, res5 (the tiny ResNet's last stage) 7x7, masks 14x14; no FPN layers."""
    config = tiny_c4()
    model = build_model(config)
    names = [layer.name for layer in model.inference_graph().layers]
    assert names == ["images", "image_shape", "normalizer", "backbone", "head", "anchors",
                     "test_proposals", "pooler", "res5_head", "box_head", "detections",
                     "mask_head", "mask_probabilities"]
    assert model.backbone.fpn is None and type(model.roi_heads).__name__ == "Res5RoIHeads"
    images = tf.random.uniform((2, 128, 128, 3), 0, 255)
    image_shape = tf.constant([[128.0, 128.0], [96.0, 128.0]])
    c2, c3, c4 = model.backbone.body(model.normalizer(images, image_shape))
    assert len(model.backbone(model.normalizer(images, image_shape))) == 1  # [C4] alone
    assert tuple(c4.shape) == (2, 8, 8, 32 * 4)
    anchors = model.rpn.anchor_generator(images)
    assert tuple(anchors.shape) == (8 * 8 * 15, 4)
    logits, deltas = model.rpn.head([c4])
    assert tuple(logits.shape) == (2, 8 * 8 * 15) and tuple(deltas.shape) == (2, 960, 4)
    assert model.rpn.head.convs[0].filters == 128  # Detectron2: the RPN conv keeps C4's channels
    boxes = tf.constant([[[0.0, 0.0, 64.0, 64.0], [10.0, 20.0, 50.0, 90.0]]] * 2)
    pooled = model.roi_heads.pooler([c4], boxes)
    assert tuple(pooled.shape) == (2, 2, 14, 14, 128)
    features = model.roi_heads.res5_head(pooled)
    assert tuple(features.shape) == (2, 2, 7, 7, 64 * 4)
    class_logits, box_deltas = model.roi_heads.box_head(features)
    assert tuple(class_logits.shape) == (2, 2, 4) and tuple(box_deltas.shape) == (2, 2, 3, 4)
    assert tuple(model.roi_heads.mask_head(features).shape) == (2, 2, 14, 14, 3)
    shapes = {k: tuple(v.shape) for k, v in model.inference_graph().output.items()}
    assert shapes["detection_masks"] == (None, 10, 14, 14)
    assert model.roi_heads.detection_targets.mask_size == 14


def test_single_level_pooler_pools_at_scale_one_sixteenth():
    """Every box, whatever its size, from the one map at 1/16 (no FPN level assignment)."""
    from keras_maskrcnn.ops.roi_align_ops import roi_align

    feature = tf.random.normal((1, 8, 8, 4))
    boxes = tf.constant([[[0.0, 0.0, 128.0, 128.0], [8.0, 8.0, 24.0, 40.0]]])
    pooler = single_level_roi_pooler(14, 16)
    got = pooler([feature], boxes)
    want = roi_align(feature, boxes[0], tf.zeros([2], tf.int32), (14, 14), 1 / 16, 0, True,
                     "gather")
    np.testing.assert_allclose(got[0], want, atol=1e-5)
    with pytest.raises(ValueError, match="power of two"):
        single_level_roi_pooler(14, 12)


@pytest.mark.parametrize("name, expected, detectron2", [
    ("coco_r50_c4", R50_C4, R50_C4 - RESNET50_BN_AFFINE),
    ("coco_x50_32x4d_fpn", X50_FPN, None),
])
def test_preset_parameter_counts(name, expected, detectron2):
    config = get_config(name, image_size=(128, 128), min_size=128, max_size=128)
    model = build_model(config, roi_align_implementation="gather")
    assert torch_count(model.weights) == expected
    if detectron2 is not None:  # FrozenBN affine parameters are buffers in Detectron2
        frozen = sum(int(np.prod(w.shape)) for w in model.weights
                     if ("gamma" in w.path or "beta" in w.path) and "norm" in w.path)
        assert torch_count(model.weights) - frozen == detectron2 == 35_909_612
        assert torch_count(model.roi_heads.res5_head.weights) == TV_RESNET50_LAYER4
        assert model.rpn.head.count_params() == C4_RPN
    if name == "coco_x50_32x4d_fpn":
        assert torch_count(model.backbone.body.weights) == TV_RESNEXT50_NO_FC


def test_c4_backbone_weights_fill_the_backbone_and_the_res5_head(tmp_path):
    """`backbone_weights` of a whole ResNet (here a `.weights.h5` of our backbone): res2..res4
    land in the C4 backbone, res5 in the res5 head."""
    from keras_maskrcnn.backbones import tiny_spec

    keras.utils.set_random_seed(5)
    config = tiny_c4()
    full = build_resnet(tiny_spec(config.tiny_widths), config.backbone_norm)
    full.save_weights(tmp_path / "backbone.weights.h5")
    model = build_model(config.replace(backbone_weights=str(tmp_path / "backbone.weights.h5")))
    for name, owner in (("stem_conv1", model.backbone.body), ("res4_0_conv2", model.backbone.body),
                        ("res5_0_conv1", model.roi_heads.res5_head.res5),
                        ("res5_0_downsample_norm", model.roi_heads.res5_head.res5)):
        for got, want in zip(owner.get_layer(name).get_weights(),
                             full.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)


def test_c4_with_roi_pool_runs_and_trains_a_step():
    keras.utils.set_random_seed(3)
    config = tiny_c4(pooler="pool")
    model = build_model(config)
    g, m = config.max_instances, config.gt_mask_size
    gt_masks = np.zeros((2, g, m, m), "float32")
    gt_masks[:, 0, 4:20, 4:20] = 1.0
    batch = {
        "images": tf.random.uniform((2, 128, 128, 3), 0, 255),
        "image_shape": tf.constant([[128.0, 128.0], [128.0, 96.0]]),
        "gt_boxes": tf.constant([[[10.0, 10.0, 60.0, 70.0]] + [[0.0] * 4] * (g - 1)] * 2),
        "gt_classes": tf.constant([[1] + [0] * (g - 1)] * 2, tf.int32),
        "gt_masks": tf.constant(gt_masks),
    }
    with tf.GradientTape() as tape:
        losses = model.compute_losses(batch, training=True)
    grads = tape.gradient(losses["loss"], model.trainable_variables)
    assert all(np.isfinite(float(v)) for v in losses.values()) and losses["mask_loss"] > 0
    res5 = {id(v) for v in model.roi_heads.res5_head.trainable_variables}
    res5_grads = [g for g, v in zip(grads, model.trainable_variables, strict=True)
                  if id(v) in res5]
    assert res5_grads and all(g is not None for g in res5_grads)
    out = model.inference_graph()({"images": batch["images"], "image_shape": batch["image_shape"]})
    assert tuple(out["detection_masks"].shape) == (2, 10, 14, 14)


# ----------------------------------------------------------------------------- training, export
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny C4 model trained 400 steps of 2 images (8 epochs of 50) on shapes.

    GroupNorm: with the shapes preset's BatchNorm, res5 normalizes with batch statistics over
    the sampled RoIs and (measured) learns markedly slower. C4 also learns box regression more
    slowly than FPN on this 128-pixel toy (stride-16 features only): at 100-150 steps the
    box-head losses are still rising with the foreground share (see test_every_loss_falls in
    test_model), hence the longer run, about 40 s on one core.
    """
    keras.utils.set_random_seed(0)
    config = tiny_c4(backbone_norm="gn", learning_rate=4e-3, batch_size=2)
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config, batch_size=2))
    source = ShapesDataset(num_images=160, image_size=128, seed=0)
    dataset = make_dataset(source, config, training=True, batch_size=2, seed=0)
    # Measured over 10 epochs (constant LR after warm-up, so the first 8 are these): every
    # criterion of test_c4_every_loss_falls holds from epoch 7 on; the tightest, the box loss,
    # ends epoch 8 at 0.83 x its peak (bound 0.9).
    history = model.fit(dataset, epochs=8, steps_per_epoch=50, verbose=0)
    return model, history.history, tmp_path_factory.mktemp("c4")


def test_c4_every_loss_falls(trained):
    """Each loss ends below 0.9 x its peak epoch, and all but the box regression loss (which
    starts low while only the appended ground truth is foreground) below its first epoch."""
    _, history, _ = trained
    assert set(LOSS_NAMES) | {"loss"} <= set(history)
    for name in (*LOSS_NAMES, "loss"):
        values = np.array(history[name])
        assert np.all(np.isfinite(values)), (name, values)
        assert values[-1] < 0.9 * values.max(), f"{name} did not fall: {history}"
    for name in ("rpn_objectness_loss", "rpn_box_loss", "class_loss", "mask_loss", "loss"):
        assert history[name][-1] < history[name][0], f"{name} did not fall: {history}"


def test_c4_model_directory_round_trip(trained):
    model, _, directory = trained
    image = ShapesDataset(num_images=1, image_size=128, seed=5).load_image(0)
    save_model_dir(model, directory / "model")
    reloaded = load_model_dir(directory / "model")
    assert reloaded.config.architecture == "c4"
    a, b = predict_images(model, [image])[0], predict_images(reloaded, [image])[0]
    np.testing.assert_allclose(b["scores"], a["scores"], rtol=1e-4, atol=1e-5)


def test_c4_keras_file_round_trip(tmp_path):
    """`model.save("m.keras")` / `keras.saving.load_model` rebuilds the C4 model (same config,
    same weights, same detections)."""
    keras.utils.set_random_seed(4)
    model = build_model(tiny_c4())
    model.save(tmp_path / "c4.keras")
    loaded = keras.saving.load_model(tmp_path / "c4.keras")
    assert loaded.config == model.config and type(loaded.roi_heads).__name__ == "Res5RoIHeads"
    inputs = {"images": tf.random.uniform((1, 128, 128, 3), 0, 255),
              "image_shape": tf.constant([[128.0, 128.0]])}
    a, b = model.inference_graph()(inputs), loaded.inference_graph()(inputs)
    for key in ("detection_boxes", "detection_scores", "detection_masks"):
        np.testing.assert_allclose(b[key], a[key], atol=1e-5)


def _match(ref_boxes, ref_labels, boxes, labels):
    """Index into (boxes, labels) of each reference detection: same label, nearest box."""
    order, free = [], set(range(len(boxes)))
    for box, label in zip(ref_boxes, ref_labels, strict=True):
        candidates = [j for j in free if labels[j] == label]
        assert candidates, f"no exported detection of class {label} left for {box}"
        j = min(candidates, key=lambda c: np.abs(boxes[c] - box).max())
        free.remove(j)
        order.append(j)
    return np.array(order, np.int64)


def test_c4_saved_model_matches_predict_images(trained):
    """SavedModel loaded in this process: serving_default equals `predict_images` (boxes in
    original pixels, scores, labels) and the Keras graph's 14x14 mask probabilities."""
    from keras_maskrcnn.data.pipeline import make_inference_inputs

    model, _, directory = trained
    val = ShapesDataset(num_images=2, image_size=(96, 120), seed=7)
    images = [val.load_image(i) for i in val.image_ids]
    path = export_saved_model(model, directory / "serving" / "1")
    loaded = tf.saved_model.load(str(path))
    out = {k: v.numpy() for k, v in
           loaded.signatures["serving_default"](images=tf.constant(np.stack(images))).items()}
    assert out["detection_masks"].shape == (2, 10, 14, 14)
    refs = predict_images(model, images)
    keras_out = run_model(model, make_inference_inputs(images, model.config))
    for index, ref in enumerate(refs):
        n = int(out["num_detections"][index])
        assert n == len(ref["scores"]) > 0
        order = _match(ref["boxes"], ref["labels"], out["detection_boxes"][index][:n],
                       out["detection_classes"][index][:n])
        np.testing.assert_allclose(out["detection_boxes"][index][order], ref["boxes"],
                                   atol=BOX_ATOL, rtol=1e-5)
        np.testing.assert_allclose(out["detection_scores"][index][order], ref["scores"],
                                   atol=PROB_ATOL)
        np.testing.assert_allclose(out["detection_masks"][index][order],
                                   keras_out["detection_masks"][index, :n], atol=PROB_ATOL)
        assert not out["detection_boxes"][index][n:].any()


def test_c4_tflite_is_builtin_only_and_matches_keras(trained):
    from keras_maskrcnn.export import letterbox_image
    from keras_maskrcnn.export.tflite import tflite_ready_model

    model, _, directory = trained
    path = export_tflite(model, directory / "c4.tflite", input_size=128)
    ops = tflite_op_names(path)
    assert "CONV_2D" in ops and "TRANSPOSE_CONV" in ops and "NON_MAX_SUPPRESSION_V4" in ops
    assert not [op for op in ops if op.startswith("CUSTOM") or "FLEX" in op.upper()], ops
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    image = noise_rect_image(np.random.default_rng(1), 90, 120)
    inputs = letterbox_image(image, 128)
    runner = litert.Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    out = runner(images=inputs["images"], image_shape=inputs["image_shape"])
    ref = run_model(tflite_ready_model(model, 128), inputs)
    assert out["detection_masks"].shape == (1, 10, 14, 14)
    np.testing.assert_array_equal(out["num_detections"], ref["num_detections"])
    np.testing.assert_array_equal(out["detection_classes"], ref["detection_classes"])
    np.testing.assert_allclose(out["detection_boxes"], ref["detection_boxes"], rtol=1e-3,
                               atol=1e-3)
    np.testing.assert_allclose(out["detection_scores"], ref["detection_scores"], atol=1e-4)
    np.testing.assert_allclose(out["detection_masks"], ref["detection_masks"], atol=1e-4)
