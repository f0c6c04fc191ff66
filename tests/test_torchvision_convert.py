"""The torchvision weight mapping without torch: array layouts against numpy definitions of the
torch ops, key handling, the BatchNorm eps fold, and `keras-maskrcnn convert` on a synthetic
state dict whose shapes are written here from torchvision's architecture."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from keras_maskrcnn.convert import torchvision as tvc

RNG_SEED = 0


# --------------------------------------------------------------------------- numpy torch ops


def torch_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, pad: int) -> np.ndarray:
    """torch.nn.functional.conv2d (stride 1) from its definition: x [N, I, H, W], weight
    [O, I, kh, kw] -> [N, O, H', W'] (cross-correlation, zero padding)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    kh, kw = weight.shape[2:]
    h, w = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    out = np.zeros((x.shape[0], weight.shape[0], h, w))
    for a in range(kh):
        for b in range(kw):
            out += np.einsum("nihw,oi->nohw", x[:, :, a:a + h, b:b + w], weight[:, :, a, b])
    return out + bias[None, :, None, None]


def torch_conv_transpose2x2(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """ConvTranspose2d(kernel 2, stride 2): out[n, o, 2i + a, 2j + b] = sum_c x[n, c, i, j]
    * weight[c, o, a, b] + bias[o]; weight is (I, O, 2, 2)."""
    n, _, h, w = x.shape
    out = np.zeros((n, weight.shape[1], 2 * h, 2 * w))
    for a in range(2):
        for b in range(2):
            out[:, :, a::2, b::2] = np.einsum("nchw,co->nohw", x, weight[:, :, a, b])
    return out + bias[None, :, None, None]


def torch_decode(deltas: np.ndarray, boxes: np.ndarray, weights) -> np.ndarray:
    """torchvision BoxCoder.decode_single: deltas [R, 4G] (dx, dy, dw, dh per group), boxes
    [R, 4] (x1, y1, x2, y2), weights (wx, wy, ww, wh) -> [R, 4G] (x1, y1, x2, y2)."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = np.minimum(deltas[:, 2::4] / ww, np.log(1000 / 16))
    dh = np.minimum(deltas[:, 3::4] / wh, np.log(1000 / 16))
    pcx, pcy = dx * widths[:, None] + cx[:, None], dy * heights[:, None] + cy[:, None]
    pw, ph = np.exp(dw) * widths[:, None], np.exp(dh) * heights[:, None]
    out = np.stack([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2], axis=2)
    return out.reshape(len(boxes), -1)


# --------------------------------------------------------------------------- array layouts


def test_conv_kernel_matches_torch_conv():
    import keras

    rng = np.random.default_rng(RNG_SEED)
    x = rng.normal(size=(2, 3, 6, 5)).astype(np.float32)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    layer = keras.layers.Conv2D(4, 3, padding="same")
    layer.build((None, 6, 5, 3))
    layer.set_weights([tvc.conv_kernel(weight), bias])
    ours = np.asarray(layer(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(ours, torch_conv2d(x, weight, bias, pad=1), atol=1e-4)


def test_conv_transpose_kernel_matches_torch_conv_transpose():
    import keras

    rng = np.random.default_rng(RNG_SEED + 1)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    weight = rng.normal(size=(3, 6, 2, 2)).astype(np.float32)  # (in, out, kh, kw)
    bias = rng.normal(size=6).astype(np.float32)
    layer = keras.layers.Conv2DTranspose(6, 2, strides=2)
    layer.build((None, 4, 5, 3))
    layer.set_weights([tvc.conv_transpose_kernel(weight), bias])
    ours = np.asarray(layer(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(ours, torch_conv_transpose2x2(x, weight, bias), atol=1e-4)


def test_chw_flatten_to_hwc_matches_torch_flatten():
    rng = np.random.default_rng(RNG_SEED + 2)
    x = rng.normal(size=(5, 4, 3, 3))  # [N, C, H, W]
    weight = rng.normal(size=(6, 4 * 3 * 3))
    theirs = x.reshape(5, -1) @ weight.T  # torch: x.flatten(1) @ W^T
    ours = x.transpose(0, 2, 3, 1).reshape(5, -1) @ tvc.chw_flatten_to_hwc(weight, 4, 3, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-10)
    with pytest.raises(ValueError, match="C\\*H\\*W"):
        tvc.chw_flatten_to_hwc(weight, 4, 3, 2)


def test_delta_rows_give_the_same_boxes_as_torchvision():
    import tensorflow as tf

    from keras_maskrcnn.ops.boxes import decode_boxes

    rng = np.random.default_rng(RNG_SEED + 3)
    groups = 4  # e.g. background + 3 classes
    xy = rng.uniform(0, 50, size=(7, 2))
    boxes_xyxy = np.concatenate([xy, xy + rng.uniform(5, 30, size=(7, 2))], 1).astype(np.float32)
    deltas = rng.normal(scale=0.5, size=(7, 4 * groups)).astype(np.float32)
    theirs = torch_decode(deltas, boxes_xyxy, (10.0, 10.0, 5.0, 5.0)).reshape(7, groups, 4)
    ours_deltas = deltas[:, tvc.delta_rows(groups, skip_groups=1)].reshape(7, groups - 1, 4)
    ours = decode_boxes(tf.constant(ours_deltas), tf.constant(boxes_xyxy[:, None, [1, 0, 3, 2]]),
                        weights=(10.0, 10.0, 5.0, 5.0)).numpy()
    np.testing.assert_allclose(ours[..., [1, 0, 3, 2]], theirs[:, 1:], rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(tvc.delta_rows(2), [1, 0, 3, 2, 5, 4, 7, 6])


def test_fold_bn_variance_reproduces_eps_zero():
    import keras

    rng = np.random.default_rng(RNG_SEED + 4)
    variance = np.array([0.0, 1e-7, 2e-5, 1e-5, 0.37, 1.0, 250.0, 3e4], np.float32)
    folded = tvc.fold_bn_variance(variance, 0.0)
    # exact, or off by less than the float32 spacing at 1e-5 where no float32 sum hits it
    error = np.abs((folded + np.float32(1e-5)).astype(np.float64) - variance)
    assert np.all(error <= np.spacing(np.float32(1e-5)))
    assert np.sum(error > 0) <= 1  # only the 1e-7 entry
    np.testing.assert_array_equal(tvc.fold_bn_variance(variance, 1e-5), variance)

    channels = len(variance) - 1
    var = variance[1:]
    gamma, beta = rng.uniform(0.5, 1.5, channels), rng.normal(size=channels)
    mean = rng.normal(size=channels) * np.sqrt(var)  # no float32 cancellation in x - mean
    x = (mean + rng.normal(size=(16, channels)) * np.sqrt(var)).astype(np.float32)
    frozen = (x - mean) * gamma / np.sqrt(var.astype(np.float64)) + beta  # FrozenBN, eps 0
    layer = keras.layers.BatchNormalization(epsilon=1e-5)
    layer.build((None, channels))
    layer.set_weights([gamma, beta, mean, tvc.fold_bn_variance(var, 0.0)])
    np.testing.assert_allclose(np.asarray(layer(x, training=False)), frozen, rtol=1e-4, atol=1e-4)
    layer.set_weights([gamma, beta, mean, var])  # unfolded: the tiny variances are off
    assert np.abs(np.asarray(layer(x, training=False)) - frozen).max() > 0.1


# --------------------------------------------------------------------------- keys and metadata


def test_coco_class_names_match_the_coco_categories(coco10_dir):
    names = tvc.coco_class_names()
    assert len(names) == 91 and names[0] == "__background__"
    categories = json.loads((coco10_dir / "annotations.json").read_text())["categories"]
    assert len(categories) == 80
    for category in categories:
        assert names[category["id"]] == category["name"]
    assert names.count("N/A") == 10
    assert [i for i, n in enumerate(names) if n == "N/A"] == [12, 26, 29, 30, 45, 66, 68, 69, 71,
                                                              83]


def test_normalize_keys_renames_legacy_and_data_parallel_names():
    legacy = {"module.rpn.head.conv.weight": 1, "rpn.head.conv.bias": 2,
              "backbone.fpn.inner_blocks.3.weight": 3, "backbone.fpn.layer_blocks.0.bias": 4,
              "roi_heads.mask_head.mask_fcn1.weight": 5, "roi_heads.mask_head.mask_fcn4.bias": 6,
              "backbone.body.layer1.0.conv1.weight": 7}
    assert tvc.normalize_keys(legacy) == {
        "rpn.head.conv.0.0.weight": 1, "rpn.head.conv.0.0.bias": 2,
        "backbone.fpn.inner_blocks.3.0.weight": 3, "backbone.fpn.layer_blocks.0.0.bias": 4,
        "roi_heads.mask_head.0.0.weight": 5, "roi_heads.mask_head.3.0.bias": 6,
        "backbone.body.layer1.0.conv1.weight": 7}


def test_architecture_and_class_count_detection():
    v1 = {"roi_heads.box_head.fc6.weight": np.zeros((2, 2)),
          "roi_heads.box_predictor.cls_score.weight": np.zeros((5, 2)),
          "roi_heads.mask_predictor.mask_fcn_logits.weight": np.zeros((5, 2, 1, 1))}
    assert tvc.is_v2(v1) is False and tvc.infer_num_classes(v1) == 4
    assert tvc.is_v2({"roi_heads.box_head.0.0.weight": 0}) is True
    with pytest.raises(ValueError, match="not a torchvision Mask R-CNN"):
        tvc.is_v2({"backbone.body.conv1.weight": 0})
    with pytest.raises(ValueError, match="mask_fcn_logits"):
        tvc.infer_num_classes({"roi_heads.box_predictor.cls_score.weight": np.zeros((5, 2))})


def test_load_state_dict_sources(tmp_path, monkeypatch):
    arrays = {"module.rpn.head.conv.weight": np.ones((2, 2, 3, 3), np.float32)}
    np.savez(tmp_path / "state.npz", **arrays)
    loaded = tvc.load_state_dict(tmp_path / "state.npz")
    assert list(loaded) == ["rpn.head.conv.0.0.weight"]
    assert tvc.load_state_dict({"model": arrays}).keys() == loaded.keys()  # checkpoint wrapper
    with pytest.raises(FileNotFoundError):
        tvc.load_state_dict(tmp_path / "missing.pth")
    with pytest.raises(TypeError, match="mapping"):
        tvc.load_state_dict(42)
    (tmp_path / "state.pth").write_bytes(b"not read")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[parity\]"'):
        tvc.load_state_dict(tmp_path / "state.pth")


def test_unreadable_pth_is_one_line(tmp_path):
    """A file torch cannot unpickle (read in a child process: TensorFlow is imported here) is
    named in one line with torch's reason, not torch's paragraphs."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch (the parity extra) is not installed: the .pth reader needs it")
    (tmp_path / "state.pth").write_bytes(b"garbage, not a torch.save file")
    with pytest.raises(ValueError) as info:
        tvc.load_state_dict(tmp_path / "state.pth")
    message = str(info.value)
    assert "torch could not read" in message and "state.pth" in message
    assert "\n" not in message and "Error" in message, message
    torch_text = ("UnpicklingError: Weights only load failed.\nPlease file an issue: "
                  "WeightsUnpickler error:\n\nUnsupported operand 103\n\nCheck "
                  "https://pytorch.org/docs/stable/generated/torch.load.html.")
    from keras_maskrcnn.convert.state_dict import torch_error_reason

    assert torch_error_reason(torch_text) == "UnpicklingError: Unsupported operand 103"


# --------------------------------------------------------------------------- convert end to end


def synthetic_v1_state(num_classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random arrays with the keys and shapes of torchvision's maskrcnn_resnet50_fpn
    (`num_classes` including the background), FrozenBatchNorm2d in the backbone."""
    shapes: dict[str, tuple[int, ...]] = {"backbone.body.conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, channels: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)

    bn("backbone.body.bn1", 64)
    inplanes = 64
    for stage, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
        for block in range(blocks):
            p = f"backbone.body.layer{stage + 1}.{block}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            for k, channels in ((1, planes), (2, planes), (3, planes * 4)):
                bn(f"{p}.bn{k}", channels)
            if block == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    for i, channels in enumerate((256, 512, 1024, 2048)):
        shapes[f"backbone.fpn.inner_blocks.{i}.0.weight"] = (256, channels, 1, 1)
        shapes[f"backbone.fpn.layer_blocks.{i}.0.weight"] = (256, 256, 3, 3)
    shapes["rpn.head.conv.0.0.weight"] = (256, 256, 3, 3)
    shapes["rpn.head.cls_logits.weight"] = (3, 256, 1, 1)
    shapes["rpn.head.bbox_pred.weight"] = (12, 256, 1, 1)
    shapes["roi_heads.box_head.fc6.weight"] = (1024, 256 * 7 * 7)
    shapes["roi_heads.box_head.fc7.weight"] = (1024, 1024)
    shapes["roi_heads.box_predictor.cls_score.weight"] = (num_classes, 1024)
    shapes["roi_heads.box_predictor.bbox_pred.weight"] = (4 * num_classes, 1024)
    for i in range(4):
        shapes[f"roi_heads.mask_head.{i}.0.weight"] = (256, 256, 3, 3)
    shapes["roi_heads.mask_predictor.conv5_mask.weight"] = (256, 256, 2, 2)
    shapes["roi_heads.mask_predictor.mask_fcn_logits.weight"] = (num_classes, 256, 1, 1)
    for key in [k for k in shapes if k.endswith(".weight") and len(shapes[k]) > 1]:
        if not key.startswith("backbone.body"):
            shapes[key[:-len("weight")] + "bias"] = (shapes[key][1] if "conv5_mask" in key
                                                     else shapes[key][0],)
    state = {k: rng.normal(scale=0.05, size=s).astype(np.float32) for k, s in shapes.items()}
    for key in state:
        if key.endswith("running_var"):
            state[key] = rng.uniform(1e-6, 2.0, size=state[key].shape).astype(np.float32)
    return state


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """`keras-maskrcnn convert torchvision state.npz` on a synthetic 3-class state dict."""
    from keras_maskrcnn.cli import main
    from keras_maskrcnn.saving import load_model_dir

    directory = tmp_path_factory.mktemp("convert")
    state = synthetic_v1_state(4, np.random.default_rng(RNG_SEED))
    np.savez(directory / "state.npz", **state)
    out = directory / "model"
    status = main(["convert", "torchvision", str(directory / "state.npz"), "--output", str(out),
                   "--min-size", "64", "--max-size", "96", "--image-size", "96", "128"])
    assert status == 0
    return state, out, load_model_dir(out)


def _kernel(model_part, name: str) -> np.ndarray:
    return np.asarray(model_part.get_layer(name).weights[0])


def test_convert_cli_writes_a_model_directory(converted):
    _, out, model = converted
    config = json.loads((out / "config.json").read_text())
    assert config["name"] == "torchvision_r50_fpn" and config["num_classes"] == 3
    assert config["class_names"] == ["__background__", "class_1", "class_2", "class_3"]
    assert (config["min_size"], config["max_size"], config["image_size"]) == (64, 96, [96, 128])
    assert config["mask_paste"] == "torchvision" and config["anchor_stride_from_grid"] is True
    assert model.config.pooler_aligned is False


def test_converted_weights_land_in_place(converted):
    state, _, model = converted
    np.testing.assert_array_equal(_kernel(model.backbone.body, "stem_conv1"),
                                  state["backbone.body.conv1.weight"].transpose(2, 3, 1, 0))
    norm = model.backbone.body.get_layer("res4_2_norm3").get_weights()
    np.testing.assert_array_equal(norm[0], state["backbone.body.layer3.2.bn3.weight"])
    np.testing.assert_array_equal(norm[3] + np.float32(1e-5),  # FrozenBN, eps 0 folded
                                  state["backbone.body.layer3.2.bn3.running_var"])
    np.testing.assert_array_equal(
        _kernel(model.backbone.body, "res3_0_downsample_conv")[0, 0],
        state["backbone.body.layer2.0.downsample.0.weight"][:, :, 0, 0].T)
    fpn_output = state["backbone.fpn.layer_blocks.1.0.weight"]
    np.testing.assert_array_equal(_kernel(model.backbone.fpn, "fpn_output3"),
                                  fpn_output.transpose(2, 3, 1, 0))
    rpn = model.rpn.head.deltas.get_weights()
    theirs = state["rpn.head.bbox_pred.weight"][:, :, 0, 0]
    for a in range(3):  # anchor a: ours (dy, dx, dh, dw) = theirs (dx, dy, dw, dh)[1, 0, 3, 2]
        np.testing.assert_array_equal(rpn[0][0, 0, :, 4 * a:4 * a + 4].T,
                                      theirs[[4 * a + 1, 4 * a, 4 * a + 3, 4 * a + 2]])
    fc1 = model.roi_heads.box_head.fcs[0].get_weights()[0]
    fc6 = state["roi_heads.box_head.fc6.weight"]
    for y, x, c, o in ((0, 0, 0, 0), (3, 5, 17, 100), (6, 6, 255, 1023), (2, 1, 128, 7)):
        assert fc1[(y * 7 + x) * 256 + c, o] == fc6[o, c * 49 + y * 7 + x]
    deltas = model.roi_heads.box_head.box_deltas.get_weights()
    bbox = state["roi_heads.box_predictor.bbox_pred.weight"]
    for k in (1, 2, 3):
        np.testing.assert_array_equal(deltas[0][:, 4 * (k - 1):4 * k].T,
                                      bbox[[4 * k + 1, 4 * k, 4 * k + 3, 4 * k + 2]])
    np.testing.assert_array_equal(model.roi_heads.box_head.class_logits.get_weights()[0],
                                  state["roi_heads.box_predictor.cls_score.weight"].T)
    upsample = model.roi_heads.mask_head.upsample.get_weights()[0]
    conv5 = state["roi_heads.mask_predictor.conv5_mask.weight"]
    assert upsample[1, 0, 7, 3] == conv5[3, 7, 1, 0]  # (kh, kw, out, in) <- (in, out, kh, kw)
    predictor = model.roi_heads.mask_head.predictor.get_weights()
    logits = state["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    np.testing.assert_array_equal(predictor[0][0, 0], logits[1:, :, 0, 0].T)
    np.testing.assert_array_equal(predictor[1],
                                  state["roi_heads.mask_predictor.mask_fcn_logits.bias"][1:])


def test_convert_rejects_missing_extra_and_mismatched_weights(converted, tmp_path):
    state, _, model = converted
    missing = {k: v for k, v in state.items() if k != "rpn.head.cls_logits.bias"}
    with pytest.raises(ValueError, match="rpn.head.cls_logits.bias"):
        tvc.load_torchvision_weights(model, missing)
    with pytest.raises(ValueError, match="not used.*extra.weight"):
        tvc.load_torchvision_weights(model, {**state, "extra.weight": np.zeros(3)})
    wrong = dict(state)
    wrong["roi_heads.box_predictor.cls_score.weight"] = np.zeros((9, 1024), np.float32)
    with pytest.raises(ValueError, match="cls_score"):
        tvc.load_torchvision_weights(model, wrong)
    with pytest.raises(ValueError, match="v2=True"):
        tvc.convert_torchvision(state, tmp_path / "never", v2=True)


# --------------------------------------------------------------------------- v2 layers


def test_v2_heads_shapes_serialization_and_batchnorm():
    import tensorflow as tf

    from keras_maskrcnn.heads import BoxHead, MaskHead, RPNHead

    rng = np.random.default_rng(RNG_SEED + 5)
    pooled = tf.constant(rng.normal(size=(2, 5, 7, 7, 4)), tf.float32)
    box_head = BoxHead(3, conv_dim=8, num_convs=2, fc_dim=16, num_fcs=1, norm="bn")
    logits, deltas = box_head(pooled)
    assert logits.shape == (2, 5, 4) and deltas.shape == (2, 5, 3, 4)
    assert len(box_head.weights) == 2 * 1 + 2 * 4 + 3 * 2  # 2 convs, 2 BNs, 3 dense layers
    trained, _ = box_head(pooled, training=True)  # batch statistics instead of moving ones
    assert np.abs(np.asarray(trained) - np.asarray(logits)).max() > 1e-6
    clone = BoxHead.from_config(box_head.get_config())
    clone(pooled)
    clone.set_weights(box_head.get_weights())
    np.testing.assert_allclose(np.asarray(clone(pooled)[0]), np.asarray(box_head(pooled)[0]),
                               atol=1e-6)  # (the training call moved the BN statistics)

    mask_head = MaskHead(3, conv_dim=8, num_convs=2, norm="bn")
    assert mask_head(pooled).shape == (2, 5, 14, 14, 3)
    rpn = RPNHead(3, channels=4, num_convs=2)
    features = [tf.zeros((2, 8, 8, 4)), tf.zeros((2, 4, 4, 4))]
    rpn_logits, rpn_deltas = rpn(features)
    assert rpn_logits.shape == (2, 3 * 80) and rpn_deltas.shape == (2, 3 * 80, 4)
    with pytest.raises(ValueError, match="norm"):
        BoxHead(3, norm="gn")


def test_head_factories_follow_the_config():
    import keras

    from keras_maskrcnn.backbones.fpn import build_fpn
    from keras_maskrcnn.builder import build_roi_heads, build_rpn
    from keras_maskrcnn.config import get_config

    v1, v2 = get_config("torchvision_r50_fpn"), get_config("torchvision_r50_fpn_v2")
    assert build_rpn(v1).head.num_convs == 1 and build_rpn(v2).head.num_convs == 2
    heads1, heads2 = build_roi_heads(v1), build_roi_heads(v2)
    box1, box2 = heads1.box_head, heads2.box_head
    assert (box1.num_convs, box1.num_fcs, box1.norm) == (0, 2, "none")
    assert (box2.num_convs, box2.num_fcs, box2.norm) == (4, 1, "bn")
    assert heads1.mask_head.norm == "none" and heads2.mask_head.norm == "bn"
    with pytest.raises(ValueError, match="rpn_head_convs"):
        v1.replace(rpn_head_convs=0)
    with pytest.raises(ValueError, match="mask_paste"):
        v1.replace(mask_paste="nearest")

    image = keras.Input((64, 64, 3))
    c_feats = [keras.layers.Conv2D(8, 1, strides=s)(image) for s in (4, 8, 16, 32)]
    fpn = build_fpn([8, 8, 8, 8], channels=8, norm="bn")
    names = {layer.name for layer in fpn.layers}
    assert {"fpn_lateral2", "fpn_lateral2_norm", "fpn_output5", "fpn_output5_norm"} <= names
    outputs = fpn(c_feats)
    assert [tuple(o.shape[1:3]) for o in outputs] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert not fpn.get_layer("fpn_output3").use_bias
