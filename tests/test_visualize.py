"""Tests for keras_maskrcnn.visualize."""

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from keras_maskrcnn.visualize import (
    BOX_WIDTH,
    MASK_ALPHA,
    draw_detections,
    instance_colors,
    save_image,
)

# pycocotools' mask decode trips a numpy 2 deprecation warning that is not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

CLASS_NAMES = ["background", "cat", "dog"]
H, W = 120, 160


@pytest.fixture()
def scene():
    """A textured image and two detections; far-right columns hold no detection."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    boxes = np.array([[30, 20, 90, 70], [40, 80, 100, 110]], dtype=np.float32)
    masks = np.zeros((2, H, W), dtype=np.uint8)
    masks[0, 40:85, 25:65] = 1
    masks[1, 50:95, 85:105] = 1
    labels = np.array([1, 2])
    scores = np.array([0.93, 0.4])
    return image, boxes, labels, scores, masks


def _blend(pixel, color):
    return np.rint((1 - MASK_ALPHA) * pixel.astype(np.float32) + MASK_ALPHA * color)


def test_shape_dtype_and_input_unchanged(scene):
    image, boxes, labels, scores, masks = scene
    originals = [a.copy() for a in scene]
    out = draw_detections(image, boxes, labels, scores, masks, CLASS_NAMES)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out is not image
    for before, after in zip(originals, scene, strict=True):
        np.testing.assert_array_equal(before, after)


def test_masks_blend_with_instance_colour(scene):
    image, boxes, labels, scores, masks = scene
    out = draw_detections(image, boxes, labels, scores, masks, CLASS_NAMES)
    colors = instance_colors(2)
    # Mask interiors away from box edges and labels.
    for i, (ys, xs) in enumerate([(slice(50, 80), slice(30, 60)), (slice(60, 90), slice(88, 102))]):
        expected = _blend(image[ys, xs], colors[i])
        np.testing.assert_allclose(out[ys, xs], expected, atol=1)
        assert np.mean(np.any(out[ys, xs] != image[ys, xs], axis=-1)) > 0.9


def test_box_outline_in_instance_colour(scene):
    image, boxes, labels, scores, masks = scene
    out = draw_detections(image, boxes, labels, scores, None, CLASS_NAMES)
    color = instance_colors(2)[1]
    y1, x1, y2, x2 = boxes[1].astype(int)
    # Lower part of the left and right edges and the bottom edge (the label sits at the top).
    np.testing.assert_array_equal(out[y1 + 20 : y2, x1], np.broadcast_to(color, (y2 - y1 - 20, 3)))
    np.testing.assert_array_equal(out[y1 + 20 : y2, x2], np.broadcast_to(color, (y2 - y1 - 20, 3)))
    np.testing.assert_array_equal(out[y2, x1 : x2 + 1], np.broadcast_to(color, (x2 - x1 + 1, 3)))
    # Inside the box and without masks the image is untouched.
    inner = (slice(y1 + BOX_WIDTH + 20, y2 - BOX_WIDTH), slice(x1 + BOX_WIDTH, x2 - BOX_WIDTH))
    np.testing.assert_array_equal(out[inner], image[inner])


def test_label_drawn_on_filled_background(scene):
    image, boxes, labels, scores, masks = scene
    out = draw_detections(image, boxes, labels, scores, None, CLASS_NAMES)
    color = instance_colors(2)[0]
    y1, x1 = boxes[0, :2].astype(int)
    # The label background sits just above the box, starting at its left edge.
    strip = out[y1 - 8 : y1, x1 : x1 + 20].reshape(-1, 3)
    is_color = np.all(strip == color, axis=-1)
    assert is_color.mean() > 0.4 and not is_color.all()  # filled, with text on it


def test_far_pixels_unchanged(scene):
    image, boxes, labels, scores, masks = scene
    out = draw_detections(image, boxes, labels, scores, masks, CLASS_NAMES)
    np.testing.assert_array_equal(out[:, 125:], image[:, 125:])
    np.testing.assert_array_equal(out[105:, :], image[105:, :])


def test_score_threshold_filters(scene):
    image, boxes, labels, scores, masks = scene
    out = draw_detections(image, boxes, labels, scores, masks, CLASS_NAMES, score_threshold=0.5)
    # The dog (score 0.4) is gone: its region is the input again; the cat is still drawn.
    np.testing.assert_array_equal(out[45:, 78:], image[45:, 78:])
    assert np.any(out[50:80, 30:60] != image[50:80, 30:60])
    none = draw_detections(image, boxes, labels, scores, masks, CLASS_NAMES, score_threshold=0.99)
    np.testing.assert_array_equal(none, image)


def test_padding_rows_skipped(scene):
    image, boxes, labels, scores, masks = scene
    out = draw_detections(image, boxes * 0, labels * 0, scores * 0, masks * 0, CLASS_NAMES)
    np.testing.assert_array_equal(out, image)


def test_instance_colors_distinct_and_deterministic():
    colors = instance_colors(20)
    assert colors.shape == (20, 3) and colors.dtype == np.uint8
    assert len({tuple(c) for c in colors}) == 20
    np.testing.assert_array_equal(colors, instance_colors(20))
    np.testing.assert_array_equal(colors[:5], instance_colors(5))


def test_bad_input(scene):
    image, boxes, labels, scores, masks = scene
    with pytest.raises(ValueError, match="image"):
        draw_detections(image.astype(np.float32), boxes, labels, scores, masks, CLASS_NAMES)
    with pytest.raises(ValueError, match="masks"):
        draw_detections(image, boxes, labels, scores, masks[:, :10], CLASS_NAMES)
    with pytest.raises(ValueError, match="class_names"):
        draw_detections(image, boxes, labels + 5, scores, masks, CLASS_NAMES)
    with pytest.raises(ValueError, match="boxes"):
        draw_detections(image, boxes[:, :3], labels, scores, masks, CLASS_NAMES)


def test_real_photo_round_trip(coco10_dir, tmp_path):
    coco = COCO(str(coco10_dir / "annotations.json"))
    image_id = coco.getImgIds()[0]
    info = coco.imgs[image_id]
    image = np.asarray(Image.open(coco10_dir / "images" / info["file_name"]).convert("RGB"))
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    xywh = np.array([a["bbox"] for a in anns], dtype=np.float32)
    boxes = np.stack([xywh[:, 1], xywh[:, 0], xywh[:, 1] + xywh[:, 3], xywh[:, 0] + xywh[:, 2]], 1)
    cat_ids = sorted(coco.getCatIds())
    labels = np.array([cat_ids.index(a["category_id"]) + 1 for a in anns])
    names = ["background"] + [coco.cats[c]["name"] for c in cat_ids]
    masks = np.stack([coco.annToMask(a) for a in anns])
    out = draw_detections(image, boxes, labels, np.ones(len(anns)), masks, names)
    assert out.shape == image.shape
    assert np.any(out[masks.any(0)] != image[masks.any(0)])
    path = tmp_path / "out" / "drawn.png"
    save_image(out, path)
    with Image.open(path) as saved:
        assert saved.format == "PNG"
        np.testing.assert_array_equal(np.asarray(saved), out)
    with pytest.raises(ValueError, match="image"):
        save_image(out[..., 0], tmp_path / "bad.png")
