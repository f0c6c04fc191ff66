"""bfloat16 inference (`keras_maskrcnn.precision`): detections agree with float32 on real
photos, the per-image canvas path and the SavedModel keep bf16, and bf16 is faster.

The model compared is trained briefly (150 steps, ~1 min) on the ten COCO photos of
tests/data/coco-val2017-10, and evaluated on them. Random weights cannot test this: with
random (even BatchNorm-calibrated, converted-like ResNet-50) weights the detections are chaotic,
many near-equal scores per object that NMS resolves differently for any perturbation (float32
itself agrees with float32 on the same photos plus +-0.5 grey-level noise for only ~14% of the
detections at IoU 0.9), while a trained model has one clear maximum per object (float32 vs that
noise: 99%). Speed is measured on a ResNet-50 FPN (random weights: speed does not depend on
them) at 480 x 640.

Skipped, with the reason, on CPUs without native bf16 (AVX512_BF16 / AMX-BF16): emulated bf16
is slower than float32 and not what `--precision auto` picks there.
"""

import glob
import json
import os
import statistics
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from keras_maskrcnn import precision as precision_module
from keras_maskrcnn.builder import build_model, rebuilt
from keras_maskrcnn.precision import model_precision, resolve_precision, with_precision
from keras_maskrcnn.runtime import cpu_has_bf16, cpu_model

DATA = Path(__file__).resolve().parent / "data" / "coco-val2017-10"
TRAIN_STEPS = 300  # the scores reach the 0.3 floor on the ten photos
BOX_IOU, MIN_MATCHED, MIN_MASK_IOU = 0.9, 0.95, 0.95
SCORE_FLOOR = 0.1  # twice the 0.05 threshold: detections near it may cross it either way
# bf16 / fp32 inference time of ResNet-50 FPN; the target is 0.5 (measured about 0.5 here), the
# bound is loose because other processes share the CPU.
MAX_TIME_RATIO = 0.85

needs_bf16 = pytest.mark.skipif(
    not cpu_has_bf16(),
    reason=f"{cpu_model()} has no native bfloat16 (AVX512_BF16 / AMX-BF16): bf16 inference "
           "would be emulated, slower than float32")


def _photos():
    return [np.asarray(Image.open(p).convert("RGB"))
            for p in sorted(glob.glob(str(DATA / "images" / "*.jpg")))]


def _box_iou(a, b):
    y1 = np.maximum(a[:, None, 0], b[None, :, 0])
    x1 = np.maximum(a[:, None, 1], b[None, :, 1])
    y2 = np.minimum(a[:, None, 2], b[None, :, 2])
    x2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)

    def area(z):
        return (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])

    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def agreement(reference, other, score_floor=SCORE_FLOOR):
    """(detections, fraction matched, mask IoUs): each reference detection with score >=
    `score_floor`, best first, matched to an unused detection of `other` with the same label
    and the highest box IoU, if that is >= BOX_IOU; mask IoU of the pasted masks per match."""
    total, matched, mask_ious = 0, 0, []
    for ref, det in zip(reference, other, strict=True):
        keep = np.flatnonzero(ref["scores"] >= score_floor)
        if not len(keep):
            continue
        ious = _box_iou(ref["boxes"][keep], det["boxes"])
        ious = np.where(ref["labels"][keep][:, None] == det["labels"][None], ious, 0.0)
        free = np.ones(len(det["scores"]), bool)
        for i in np.argsort(-ref["scores"][keep]):
            total += 1
            candidates = np.where(free, ious[i], -1.0)
            j = int(np.argmax(candidates)) if len(candidates) else 0
            if len(candidates) and candidates[j] >= BOX_IOU:
                free[j] = False
                matched += 1
                a, b = ref["masks"][keep[i]].astype(bool), det["masks"][j].astype(bool)
                mask_ious.append((a & b).sum() / max((a | b).sum(), 1))
    return total, matched / max(total, 1), np.array(mask_ious)


# --------------------------------------------------------------------------- no bf16 needed
def test_resolve_precision(monkeypatch, caplog):
    monkeypatch.setattr(precision_module, "native_bf16", lambda: False)
    assert resolve_precision("auto") == "float32"
    with caplog.at_level("WARNING", logger="keras_maskrcnn"):
        assert resolve_precision("bfloat16") == "bfloat16"
    assert "emulated" in caplog.text
    monkeypatch.setattr(precision_module, "native_bf16", lambda: True)
    assert resolve_precision("auto") == "bfloat16"
    assert resolve_precision("float32") == "float32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("float16")


def test_bf16_layers_keep_coordinates_float32():
    """Under mixed_bfloat16 the box-carrying layers read float32 boxes and sizes (bfloat16
    holds 1066 as 1064); the image is normalized in float32."""
    import tensorflow as tf

    from keras_maskrcnn.config import get_config

    config = get_config("shapes", image_size=(64, 64), min_size=64, max_size=64)
    model = with_precision(build_model(config, roi_align_implementation="gather"), "bfloat16")
    assert model_precision(model) == "bfloat16"
    for layer in (model.normalizer, model.rpn.test_proposals, model.roi_heads.detection_layer,
                  model.roi_heads.box_pooler, model.roi_heads.mask_pooler):
        assert layer.autocast is False, layer.name
    assert all(w.dtype == "float32" for w in model.inference_graph().weights)
    images = tf.fill([1, 64, 64, 3], 200.0)
    normalized = model.normalizer(images, tf.constant([[64.0, 33.0]]))
    assert normalized.dtype == tf.bfloat16
    expected = (200.0 - np.array(config.pixel_mean)) / np.array(config.pixel_std)
    np.testing.assert_allclose(tf.cast(normalized[0, 0, 0], tf.float32), expected, rtol=4e-3)
    assert float(tf.reduce_max(tf.abs(tf.cast(normalized[0, :, 33:], tf.float32)))) == 0.0
    # a model rebuilt for another canvas keeps the precision
    other = rebuilt(model, image_size=(64, 96), max_size=96)
    assert model_precision(other) == "bfloat16" and other.roi_heads.box_pooler.autocast is False
    assert with_precision(model, "bfloat16") is model
    assert model_precision(with_precision(model, "float32")) == "float32"


# --------------------------------------------------------------------------- bf16 CPUs
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model (the shapes preset's ResNet) trained TRAIN_STEPS on the ten photos."""
    from keras_maskrcnn.config import get_config
    from keras_maskrcnn.data import CocoDataset
    from keras_maskrcnn.saving import load_model_dir
    from keras_maskrcnn.training import train

    source = CocoDataset(DATA / "annotations.json", DATA / "images")
    ids = tuple(int(source.label_to_category_id[k]) for k in range(1, source.num_classes + 1))
    config = get_config(
        "shapes", num_classes=source.num_classes, class_names=tuple(source.class_names),
        category_ids=ids, image_size=(256, 256), min_size=192, max_size=256, max_instances=32,
        horizontal_flip=False, detections_per_image=50, anchor_sizes=(16, 32, 64, 128, 256),
        warmup_steps=10, learning_rate=3e-3, batch_size=2)
    directory = tmp_path_factory.mktemp("bf16") / "model"
    train(config, source, directory, max_steps=TRAIN_STEPS, steps_per_epoch=50, batch_size=2,
          seed=0, overwrite=True, print_fn=lambda line: None)
    model = load_model_dir(directory)
    # the per-image canvas: bf16 must survive the per-canvas rebuilds of predict_images
    return directory, rebuilt(model, canvas="per_image")


@needs_bf16
def test_bf16_detections_agree_with_float32_on_photos(trained):
    from keras_maskrcnn.builder import model_for_canvas
    from keras_maskrcnn.inference import predict_images
    from keras_maskrcnn.transform import canvas_for

    _, model = trained
    photos = _photos()
    reference = predict_images(model, photos)
    low = with_precision(model, "bfloat16")
    detections = predict_images(low, photos)
    canvases = {canvas_for(*photo.shape[:2], low.config) for photo in photos}
    assert len(canvases) >= 2
    for canvas in canvases:  # models rebuilt for a canvas keep bf16 (predict_images runs the
        # shape-polymorphic graph of `low` itself, on the same bf16 layers)
        other = model_for_canvas(low, canvas)
        assert model_precision(other) == "bfloat16" and other.roi_heads.mask_pooler.autocast is False
    total, matched, mask_ious = agreement(reference, detections)
    all_total, all_matched, _ = agreement(reference, detections, score_floor=0.0)
    print(f"bf16 vs fp32: {matched:.1%} of {total} detections (score >= {SCORE_FLOOR}) matched "
          f"at box IoU {BOX_IOU}, {all_matched:.1%} of all {all_total}; mask IoU mean "
          f"{mask_ious.mean():.4f}, 5th percentile {np.percentile(mask_ious, 5):.4f}")
    assert total >= 50
    assert matched >= MIN_MATCHED
    assert mask_ious.mean() >= MIN_MASK_IOU


@needs_bf16
def test_predict_cli_precision(trained, tmp_path):
    from keras_maskrcnn.cli import main as cli_main

    directory, _ = trained
    photos = sorted(glob.glob(str(DATA / "images" / "*.jpg")))[:2]
    outputs = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        assert cli_main(["predict", "--model", str(directory), *photos, "--output", str(out),
                         "--no-draw", "--score-threshold", str(SCORE_FLOOR), "--precision",
                         precision]) == 0
        outputs[precision] = json.loads((out / "predictions.json").read_text())
    assert len(outputs["bfloat16"]) >= 0.9 * len(outputs["float32"]) > 0


@needs_bf16
def test_bf16_saved_model_matches_keras_bf16(trained, tmp_path):
    """`export --precision bfloat16`: float32 variables, bf16 compute, the Keras bf16
    detections (the same graph on the same buckets)."""
    import tensorflow as tf

    from keras_maskrcnn.export import export_saved_model
    from keras_maskrcnn.inference import predict_images

    _, model = trained
    photos = _photos()[:3]
    path = export_saved_model(model, tmp_path / "bf16", precision="bfloat16")
    meta = json.loads((path / "assets.extra" / "export.json").read_text())
    assert meta["precision"] == "bfloat16"
    loaded = tf.saved_model.load(str(path))
    assert {v.dtype for v in loaded.model_variables} == {tf.float32}
    reference = predict_images(with_precision(model, "bfloat16"), photos)
    total = matched = 0
    for image, ref in zip(photos, reference, strict=True):
        out = loaded.signatures["serving_default"](images=tf.constant(image[None]))
        n = int(out["num_detections"][0])
        boxes, labels = out["detection_boxes"][0, :n].numpy(), out["detection_classes"][0, :n]
        # the same graph, but Grappler fuses the bf16 ops of the SavedModel differently
        assert abs(n - len(ref["scores"])) <= 0.1 * len(ref["scores"])
        keep = ref["scores"] >= SCORE_FLOOR
        ious = _box_iou(ref["boxes"][keep], boxes)
        ious = np.where(ref["labels"][keep][:, None] == labels.numpy()[None], ious, 0.0)
        total += int(keep.sum())
        matched += int((ious.max(axis=1, initial=0.0) >= BOX_IOU).sum())
    assert total > 0 and matched >= MIN_MATCHED * total, (matched, total)


# A timing (`-m slow`, like benchmarks/): kept out of CI's budget, run where a claim is made.
@pytest.mark.slow
@needs_bf16
def test_bf16_is_faster_on_resnet50():
    import tensorflow as tf

    from keras_maskrcnn.config import get_config
    from keras_maskrcnn.data.pipeline import make_inference_inputs

    keras.utils.set_random_seed(0)
    config = get_config("torchvision_r50_fpn", num_classes=90, image_size=(480, 640),
                        min_size=480, max_size=640)
    model = build_model(config, roi_align_implementation="gather")
    low = with_precision(model, "bfloat16")
    batch = make_inference_inputs([_photos()[-1]], config)  # 640 x 480 -> 480 x 640
    inputs = {k: tf.constant(batch[k]) for k in ("images", "image_shape")}
    runs = [m.inference_function() for m in (model, low)]
    for run in runs:
        run(inputs)  # trace
    times = [[], []]
    for _ in range(3):
        for run, bucket in zip(runs, times, strict=True):
            start = time.perf_counter()
            run(inputs)["num_detections"].numpy()
            bucket.append(time.perf_counter() - start)
    fp32, bf16 = (statistics.median(t) for t in times)
    print(f"ResNet-50 FPN 480x640 on {cpu_model()} ({os.cpu_count()} cores): fp32 {fp32:.3f} s, "
          f"bf16 {bf16:.3f} s, ratio {bf16 / fp32:.2f}")
    assert bf16 / fp32 <= MAX_TIME_RATIO
