"""Config: presets, validation with clear errors, JSON round trip."""

import json

import pytest

from keras_maskrcnn.config import PRESETS, MaskRCNNConfig, get_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name, tmp_path):
    config = get_config(name)
    path = tmp_path / "config.json"
    config.to_json(path)
    assert MaskRCNNConfig.from_json(path) == config
    assert get_config(path) == config


def test_coco_preset_has_detectron2_defaults():
    c = get_config("coco_r50_fpn")
    assert (c.min_size, c.max_size, c.backbone, c.backbone_norm) == (800, 1333, "resnet50", "frozen_bn")
    assert c.anchor_sizes == (32, 64, 128, 256, 512) and c.aspect_ratios == (0.5, 1.0, 2.0)
    assert (c.rpn_positive_iou, c.rpn_negative_iou, c.rpn_batch_per_image) == (0.7, 0.3, 256)
    assert (c.roi_batch_per_image, c.roi_positive_fraction) == (512, 0.25)
    assert c.box_coder_weights == (10.0, 10.0, 5.0, 5.0)
    assert (c.box_pool_size, c.mask_pool_size, c.pooler_sampling_ratio) == (7, 14, 0)
    assert (c.score_threshold, c.nms_threshold, c.detections_per_image) == (0.05, 0.5, 100)
    assert (c.learning_rate, c.momentum, c.weight_decay, c.warmup_steps) == (0.02, 0.9, 1e-4, 1000)


def test_training_target_conventions_per_preset():
    for name in ("coco_r50_fpn", "shapes", "coco_r50_c4"):
        c = get_config(name)
        assert (c.mask_target_rule, c.rpn_loss_normalizer, c.sampler_quota_rounding) == \
            ("detectron2", "batch", "round")
    for name in ("torchvision_r50_fpn", "torchvision_r50_fpn_v2"):
        c = get_config(name)
        assert (c.mask_target_rule, c.rpn_loss_normalizer, c.sampler_quota_rounding) == \
            ("torchvision", "sampled", "floor")
    for field in ("mask_target_rule", "rpn_loss_normalizer", "sampler_quota_rounding"):
        with pytest.raises(ValueError, match=f"config field {field}='x' is not one of"):
            get_config("shapes", **{field: "x"})


def test_config_is_frozen_and_replace_validates():
    c = get_config("shapes")
    with pytest.raises(AttributeError):
        c.num_classes = 5
    with pytest.raises(ValueError, match="multiples of 32"):
        c.replace(image_size=(100, 128))
    with pytest.raises(ValueError, match="backbone"):
        c.replace(backbone="vgg16")
    with pytest.raises(ValueError, match="class_names"):
        c.replace(num_classes=5)


def test_unknown_fields_and_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown config field"):
        MaskRCNNConfig.from_dict({"num_clases": 3})
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        get_config("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        MaskRCNNConfig.from_json(bad)


def test_overrides_and_canvas_check():
    c = get_config("coco_r50_fpn", image_size=(800, 800), min_size=800, max_size=800)
    assert c.image_size == (800, 800)
    with pytest.raises(ValueError, match="do not fit the canvas"):
        get_config("coco_r50_fpn", image_size=(800, 800))
    assert json.loads(c.to_json())["image_size"] == [800, 800]


def test_category_ids_map_labels_and_are_validated():
    c = get_config("shapes", category_ids=(3, 7, 90))
    assert c.label_to_category_id == {1: 3, 2: 7, 3: 90}
    assert get_config("shapes").label_to_category_id == {1: 1, 2: 2, 3: 3}
    with pytest.raises(ValueError, match="category_ids"):
        get_config("shapes", category_ids=(1, 2))


@pytest.mark.parametrize("field, value, words", [
    ("num_classes", "three", "must be an integer"),
    ("min_size", None, "must be an integer"),
    ("learning_rate", "fast", "must be a finite number"),
    ("horizontal_flip", 1, "true or false"),
    ("image_size", [64], "[height, width]"),
    ("image_size", [64.5, 64], "list of integers"),
    ("anchor_sizes", ["a", 2, 3, 4, 5], "list of numbers"),
    ("class_names", [1, 2, 3, 4], "list of strings"),
    ("pixel_mean", 5, "must be a list"),
    ("optimizer", 3, "must be a string"),
])
def test_field_of_the_wrong_kind_is_named_with_its_file(tmp_path, field, value, words):
    values = json.loads(get_config("shapes").to_json())
    values[field] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError) as info:
        MaskRCNNConfig.from_json(path)
    message = str(info.value)
    assert str(path) in message and field in message and words in message, message


def test_integral_floats_and_int_lists_still_load(tmp_path):
    values = json.loads(get_config("shapes").to_json())
    values["min_size"], values["pixel_mean"] = 128.0, [120, 115, 100]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    assert MaskRCNNConfig.from_json(path).pixel_mean == (120, 115, 100)
