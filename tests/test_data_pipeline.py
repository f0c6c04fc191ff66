"""tf.data pipeline: resize rule, batch contract, flips, mini masks, truncation."""

import logging
import math

import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import (
    CocoDataset,
    ShapesDataset,
    make_dataset,
    make_inference_inputs,
    make_mini_masks,
)
from keras_maskrcnn.transform import (
    boxes_to_input,
    compute_resize_scale,
    compute_resized_shape,
    resize_and_pad_image,
)

# pycocotools (numpy 2) warns about its RLE objects' __array__; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CANVAS = (352, 352)
MIN_SIZE, MAX_SIZE = 256, 352
M = 14
KEYS = {
    "images": (tf.float32, [CANVAS[0], CANVAS[1], 3]),
    "image_shape": (tf.float32, [2]),
    "gt_boxes": (tf.float32, [32, 4]),
    "gt_classes": (tf.int32, [32]),
    "gt_masks": (tf.float32, [32, M, M]),
    "image_id": (tf.int64, []),
    "scale": (tf.float32, []),
    "original_shape": (tf.int32, [2]),
}


def pipeline_config(**overrides):
    """The config the pipeline reads: canvas, resize rule, augmentation, G, M, B."""
    values = dict(image_size=CANVAS, min_size=MIN_SIZE, max_size=MAX_SIZE, train_min_sizes=(),
                  horizontal_flip=False, max_instances=32, gt_mask_size=M, batch_size=4)
    values.update(overrides)
    return get_config("shapes", **values)


# ------------------------------------------------------------------------ numpy references
def ref_scale(h, w, min_size, max_size):
    """Short side to min_size unless the long side passes max_size (Python floats, as
    torchvision's eager transform)."""
    s = min_size / min(h, w)
    if max(h, w) * s > max_size:
        s = max_size / max(h, w)
    return float(s)


def ref_resize(image, out_h, out_w):
    """Bilinear resize with half-pixel centres: out[i] reads in[(i + 0.5) * h / out_h - 0.5]."""
    image = image.astype(np.float64)
    h, w = image.shape[:2]

    def taps(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, wy = taps(out_h, h)
    x0, x1, wx = taps(out_w, w)
    wy, wx = wy[:, None, None], wx[None, :, None]
    top = image[y0][:, x0] * (1 - wx) + image[y0][:, x1] * wx
    bottom = image[y1][:, x0] * (1 - wx) + image[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def bilinear_read(mask, y, x):
    """Reads mask [h, w] at float index coordinates (clamped to the image)."""
    h, w = mask.shape
    y, x = np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = y - y0, x - x0
    m = mask.astype(np.float64)
    return ((m[y0, x0] * (1 - fx) + m[y0, x1] * fx) * (1 - fy)
            + (m[y1, x0] * (1 - fx) + m[y1, x1] * fx) * fy)


def ref_forward_boxes(boxes, original_shape, image_shape):
    """The per-axis forward map in float64: y * h' / h, x * w' / w, clipped to (h', w')."""
    (h, w), (new_h, new_w) = original_shape, image_shape
    boxes = np.clip(np.asarray(boxes, np.float64), 0, [h, w, h, w])
    return np.clip(boxes * [new_h / h, new_w / w, new_h / h, new_w / w], 0,
                   [new_h, new_w, new_h, new_w])


def ref_mini_mask(mask, box_in, image_shape, flipped, size):
    """Definition in input pixels: sample the resized (and flipped) mask at the pixel-centre
    points of the input-frame box; input index p reads original (p + 0.5) * h / h' - 0.5 per
    axis (tf.image.resize, half-pixel centres), and a flipped column x reads unflipped column
    w' - 1 - x."""
    h, w = mask.shape
    new_h, new_w = (float(v) for v in image_shape)
    y1, x1, y2, x2 = (float(v) for v in box_in)
    steps = (np.arange(size) + 0.5) / size
    ys = (y1 + steps * (y2 - y1) - 0.5)[:, None] * np.ones((1, size))
    xs = (x1 + steps * (x2 - x1) - 0.5)[None, :] * np.ones((size, 1))
    if flipped:
        xs = new_w - 1 - xs
    return bilinear_read(mask, (ys + 0.5) * h / new_h - 0.5, (xs + 0.5) * w / new_w - 0.5)


# ------------------------------------------------------------------------ helpers
def collect(dataset):
    """Unbatches a dataset of (inputs,) into a list of per-image numpy dicts."""
    out = []
    for (batch,) in dataset:
        batch = {k: v.numpy() for k, v in batch.items()}
        for b in range(len(batch["image_id"])):
            out.append({k: v[b] for k, v in batch.items()})
    return out


class Subset:
    """A dataset source restricted to some image ids."""

    def __init__(self, source, ids):
        self.source, self.image_ids = source, list(ids)

    def load_image(self, image_id):
        return self.source.load_image(image_id)

    def load_annotations(self, image_id):
        return self.source.load_annotations(image_id)


class EmptySource:
    image_ids = [7, 8]

    def load_image(self, image_id):
        return np.full((40, 60, 3), image_id, np.uint8)

    def load_annotations(self, image_id):
        return {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros((0,), np.int32),
                "masks": np.zeros((0, 40, 60), np.uint8), "is_crowd": np.zeros((0,), bool)}


@pytest.fixture(scope="module")
def coco(coco10_dir):
    return CocoDataset(coco10_dir / "annotations.json", coco10_dir / "images")


@pytest.fixture(scope="module")
def coco_plain(coco):
    dataset = make_dataset(coco, pipeline_config(), training=False)
    spec = dataset.element_spec[0]
    for key, (dtype, shape) in KEYS.items():
        assert spec[key].dtype == dtype, key
        assert spec[key].shape.as_list() == [None, *shape], key
    return {e["image_id"]: e for e in collect(dataset)}


@pytest.fixture(scope="module")
def coco_flip(coco):
    dataset = make_dataset(coco, pipeline_config(horizontal_flip=True), training=True,
                           shuffle=False, repeat=False, drop_remainder=False, seed=3)
    return {e["image_id"]: e for e in collect(dataset)}


# ------------------------------------------------------------------------ resize rule
@pytest.mark.parametrize("h, w, min_size, max_size", [
    (480, 640, 800, 1333), (375, 500, 800, 1333), (640, 427, 800, 1333),
    (200, 1000, 800, 1333), (1000, 200, 800, 1333), (128, 128, 128, 128), (333, 777, 64, 100),
])
def test_resize_scale_rule(h, w, min_size, max_size):
    scale = compute_resize_scale(h, w, min_size, max_size)
    assert scale == ref_scale(h, w, min_size, max_size)
    new_h, new_w = compute_resized_shape(h, w, min_size, max_size)
    assert (new_h, new_w) == (math.floor(h * scale), math.floor(w * scale))
    assert max(new_h, new_w) <= max_size
    assert min(new_h, new_w) <= min_size
    capped = max(h, w) * min_size / min(h, w) > max_size
    if capped:
        assert abs(max(h, w) * scale - max_size) < 1e-3
    else:
        assert abs(min(h, w) * scale - min_size) < 1e-3


def test_floor_rounding_like_torchvision():
    # Python-float scale as torchvision 0.29 (eager); floor of h * scale.
    assert compute_resized_shape(480, 640, 800, 1333) == (800, 1066)
    assert compute_resized_shape(2000, 500, 800, 1333) == (1333, 333)
    # 500 x 741 at 320 / 512: scale 0.64 -> 320 x 474 (a float32 scale would give 319 rows).
    assert compute_resized_shape(500, 741, 320, 512) == (320, 474)
    assert compute_resized_shape(500, 500, 800, 1333) == (800, 800)


@pytest.mark.parametrize("compiled", [False, True])
def test_resize_and_pad_matches_numpy(compiled):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (13, 9, 3), dtype=np.uint8)
    fn = tf.function(resize_and_pad_image, reduce_retracing=True) if compiled else \
        resize_and_pad_image
    padded, image_shape, scale = fn(image, (64, 64), 20, 40)
    s = ref_scale(13, 9, 20, 40)
    h, w = math.floor(13 * s), math.floor(9 * s)
    assert padded.shape == (64, 64, 3) and padded.dtype == tf.float32
    assert image_shape.numpy().tolist() == [h, w] and scale.numpy() == np.float32(s)
    np.testing.assert_allclose(padded.numpy()[:h, :w], ref_resize(image, h, w), atol=1e-3)
    assert not padded.numpy()[h:].any() and not padded.numpy()[:, w:].any()


def test_resize_canvas_too_small():
    image = np.zeros((50, 100, 3), np.uint8)
    with pytest.raises(ValueError, match="canvas"):
        resize_and_pad_image(image, (64, 64), 50, 100)
    with pytest.raises(ValueError, match="canvas"):  # static shapes: caught while tracing
        tf.function(resize_and_pad_image)(image, (64, 64), 50, 100)
    dynamic = tf.function(lambda x: resize_and_pad_image(x, (64, 64), 50, 100),
                          input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    assert dynamic(image[:20, :20])[1].numpy().tolist() == [50, 50]
    with pytest.raises(tf.errors.InvalidArgumentError, match="canvas"):
        dynamic(image)
    with pytest.raises(ValueError, match="image"):
        resize_and_pad_image(np.zeros((5, 5)), (64, 64), 50, 100)


# ------------------------------------------------------------------------ COCO batches
def test_coco_batch_contract(coco, coco_plain):
    assert sorted(coco_plain) == coco.image_ids
    for image_id, e in coco_plain.items():
        info = coco.image_info(image_id)
        h, w = info["height"], info["width"]
        s = compute_resize_scale(h, w, MIN_SIZE, MAX_SIZE)
        new_h, new_w = compute_resized_shape(h, w, MIN_SIZE, MAX_SIZE)
        assert e["original_shape"].tolist() == [h, w]
        assert e["scale"] == np.float32(s)
        assert e["image_shape"].tolist() == [new_h, new_w]
        expected = ref_resize(coco.load_image(image_id), new_h, new_w)
        np.testing.assert_allclose(e["images"][:new_h, :new_w], expected, atol=1e-2)
        assert not e["images"][new_h:].any() and not e["images"][:, new_w:].any()

        ann = coco.load_annotations(image_id)
        g = len(ann["labels"])
        expected = ref_forward_boxes(ann["boxes"], (h, w), (new_h, new_w))
        np.testing.assert_allclose(e["gt_boxes"][:g], expected, atol=1e-3)
        np.testing.assert_array_equal(e["gt_classes"][:g],
                                      np.where(ann["is_crowd"], -1, ann["labels"]))
        assert not e["gt_boxes"][g:].any() and not e["gt_classes"][g:].any()
        assert not e["gt_masks"][g:].any()
        assert e["gt_masks"].min() >= 0 and e["gt_masks"].max() <= 1
    assert (coco_plain[193245]["gt_classes"] == -1).sum() == 1


def _check_mini_masks(coco, elements, flipped_ids):
    compared = 0
    for image_id, e in elements.items():
        ann = coco.load_annotations(image_id)
        for k, mask in enumerate(ann["masks"]):
            # Every box, also those touching the image border: the per-axis box map and the
            # image resize are one continuous map, so no box is clipped in the input frame.
            ref = ref_mini_mask(mask, e["gt_boxes"][k], e["image_shape"],
                                image_id in flipped_ids, M)
            np.testing.assert_allclose(e["gt_masks"][k], ref, atol=2e-3)
            compared += 1
    assert compared == sum(len(coco.load_annotations(i)["labels"]) for i in elements)


def test_mini_masks_follow_definition(coco, coco_plain):
    _check_mini_masks(coco, coco_plain, flipped_ids=set())


def test_flip_coco(coco, coco_plain, coco_flip):
    flipped = set()
    for image_id, e in coco_flip.items():
        plain = coco_plain[image_id]
        new_h, new_w = (int(v) for v in plain["image_shape"])
        view, plain_view = e["images"][:new_h, :new_w], plain["images"][:new_h, :new_w]
        if not np.array_equal(view, plain_view):
            np.testing.assert_allclose(view, plain_view[:, ::-1], atol=1e-4)
            flipped.add(image_id)
            g = (plain["gt_classes"] != 0).sum()
            y1, x1, y2, x2 = plain["gt_boxes"][:g].T
            expected = np.stack([y1, new_w - x2, y2, new_w - x1], axis=1)
            np.testing.assert_allclose(e["gt_boxes"][:g], expected, atol=1e-4)
            np.testing.assert_array_equal(e["gt_masks"], plain["gt_masks"][:, :, ::-1])
            assert not e["gt_boxes"][g:].any()
        assert not e["images"][new_h:].any() and not e["images"][:, new_w:].any()
    assert 0 < len(flipped) < len(coco_flip)
    _check_mini_masks(coco, coco_flip, flipped)


def test_training_boxes_are_the_per_axis_forward_map(coco):
    """Training batches (multi-scale) carry gt boxes = the per-axis forward map of the original
    boxes, `y * h' / h` and `x * w' / w` (transform.boxes_to_input), not `box * scale`."""
    config = pipeline_config(train_min_sizes=(192, 256))
    elements = collect(make_dataset(coco, config, training=True, repeat=False,
                                    drop_remainder=False, seed=5))
    assert sorted(int(e["image_id"]) for e in elements) == coco.image_ids
    sides = set()
    for e in elements:
        ann = coco.load_annotations(int(e["image_id"]))
        g = len(ann["labels"])
        h, w = (int(v) for v in e["original_shape"])
        new_h, new_w = (int(v) for v in e["image_shape"])
        sides.add(min(new_h, new_w))
        clipped = np.clip(ann["boxes"], 0, [h, w, h, w]).astype(np.float32)
        np.testing.assert_array_equal(e["gt_boxes"][:g],
                                      boxes_to_input(clipped, (h, w), (new_h, new_w)))
        np.testing.assert_allclose(e["gt_boxes"][:g],
                                   ref_forward_boxes(ann["boxes"], (h, w), (new_h, new_w)),
                                   atol=1e-3)
    assert {192, 256} <= sides  # (a very elongated image is capped by max_size instead)


# ------------------------------------------------------------------------ shapes batches
def shapes_config(**overrides):
    values = dict(image_size=(128, 128), min_size=128, max_size=128, max_instances=6,
                  gt_mask_size=M, batch_size=3, train_min_sizes=(), horizontal_flip=True)
    values.update(overrides)
    return get_config("shapes", **values)


def test_shapes_batch_and_flip_against_masks():
    source = ShapesDataset(8, image_size=128, seed=2)
    config = shapes_config()
    plain = collect(make_dataset(source, config, training=False))
    flip = collect(make_dataset(source, config, training=True, shuffle=False, repeat=False,
                                drop_remainder=False, seed=1))
    assert [e["image_id"] for e in plain] == source.image_ids
    n_flipped = 0
    for e, f in zip(plain, flip, strict=True):
        image = source.load_image(int(e["image_id"]))
        ann = source.load_annotations(int(e["image_id"]))
        g = len(ann["labels"])
        assert e["scale"] == 1.0 and e["image_shape"].tolist() == [128, 128]
        np.testing.assert_allclose(e["images"], image, atol=1e-4)
        np.testing.assert_array_equal(e["gt_boxes"][:g], ann["boxes"])
        np.testing.assert_array_equal(e["gt_classes"][:g], ann["labels"])
        np.testing.assert_allclose(e["gt_masks"][:g],
                                   make_mini_masks(ann["masks"], ann["boxes"], M), atol=1e-6)
        if np.array_equal(f["images"], e["images"]):
            continue
        n_flipped += 1
        np.testing.assert_allclose(f["images"], image[:, ::-1], atol=1e-4)
        mirrored = ann["masks"][:, :, ::-1]
        for k in range(g):  # the flipped box is the tight box of the mirrored mask
            ys, xs = np.nonzero(mirrored[k])
            tight = [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
            np.testing.assert_allclose(f["gt_boxes"][k], tight, atol=1e-4)
            expected = make_mini_masks(mirrored[k:k + 1], np.array([tight], np.float32), M)[0]
            np.testing.assert_allclose(f["gt_masks"][k], expected, atol=1e-5)
    assert 0 < n_flipped < len(plain)


def test_train_min_sizes_and_determinism():
    source = ShapesDataset(12, image_size=128, seed=4)
    config = shapes_config(train_min_sizes=(64, 96, 128), batch_size=4)

    def run():
        return collect(make_dataset(source, config, training=True, repeat=False, seed=7))

    first, second = run(), run()
    sides = set()
    for a, b in zip(first, second, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        side = int(a["image_shape"][0])
        sides.add(side)
        assert a["scale"] == np.float32(side / 128)
        ann = source.load_annotations(int(a["image_id"]))
        widths = ann["boxes"][:, 3] - ann["boxes"][:, 1]
        g = len(widths)
        np.testing.assert_allclose(a["gt_boxes"][:g, 3] - a["gt_boxes"][:g, 1],
                                   widths * a["image_shape"][1] / 128, atol=1e-3)
        assert not a["images"][side:].any()
    assert len(sides) >= 2 and sides <= {64, 96, 128}
    assert [int(e["image_id"]) for e in first] != source.image_ids  # shuffled


def test_make_dataset_training_defaults():
    """training=True: shuffled, repeated, static B, the config's multi-scale and flip;
    training=False: one pass in order, partial last batch, min_size only, no flip."""
    source = ShapesDataset(5, image_size=128, seed=6)
    config = shapes_config(train_min_sizes=(64, 96), batch_size=2)
    train = make_dataset(source, config, training=True, seed=0)
    assert train.cardinality().numpy() == tf.data.INFINITE_CARDINALITY
    assert train.element_spec[0]["images"].shape.as_list() == [2, 128, 128, 3]
    first = collect(train.take(10))
    epoch = [int(e["image_id"]) for e in first[:5]]
    assert sorted(epoch) == source.image_ids and epoch != source.image_ids
    assert {int(e["image_shape"][0]) for e in first} == {64, 96}
    flipped = 0
    for e in first:
        image = source.load_image(int(e["image_id"]))
        side = int(e["image_shape"][0])
        resized = ref_resize(image, side, side)
        view = e["images"][:side, :side]
        if not np.allclose(view, resized, atol=1e-2):
            np.testing.assert_allclose(view, resized[:, ::-1], atol=1e-2)
            flipped += 1
    assert 0 < flipped < len(first)

    evaluation = make_dataset(source, config, training=False)
    assert evaluation.cardinality().numpy() == 3  # 2 + 2 + 1
    assert evaluation.element_spec[0]["images"].shape.as_list() == [None, 128, 128, 3]
    elements = collect(evaluation)
    assert [int(e["image_id"]) for e in elements] == source.image_ids
    for e in elements:
        assert e["image_shape"].tolist() == [128, 128]
        np.testing.assert_allclose(e["images"], source.load_image(int(e["image_id"])),
                                   atol=1e-4)
    # explicit arguments override the defaults
    once = make_dataset(source, config, training=True, repeat=False, drop_remainder=False,
                        batch_size=5)
    assert once.cardinality().numpy() == 1
    assert make_dataset(source, config.replace(batch_size=3), training=False) \
        .cardinality().numpy() == 2  # batch_size defaults to config.batch_size


def test_image_without_annotations_flows_through():
    config = get_config("shapes", image_size=(64, 64), min_size=40, max_size=64,
                        max_instances=5, gt_mask_size=M, batch_size=2, horizontal_flip=True)
    (batch,) = next(iter(make_dataset(EmptySource(), config, training=True, shuffle=False,
                                      seed=0)))
    assert batch["gt_boxes"].shape == (2, 5, 4) and batch["gt_masks"].shape == (2, 5, M, M)
    assert not batch["gt_boxes"].numpy().any() and not batch["gt_classes"].numpy().any()
    assert not batch["gt_masks"].numpy().any()
    assert batch["image_id"].numpy().tolist() == [7, 8]
    assert batch["image_shape"].numpy().tolist() == [[40, 60], [40, 60]]


def test_max_instances_keeps_largest_and_warns_once(coco, caplog):
    image_id = 193245
    config = pipeline_config(max_instances=10, batch_size=1)
    dataset = make_dataset(Subset(coco, [image_id]), config, training=False,
                           repeat=True).take(2)
    with caplog.at_level(logging.WARNING, logger="keras_maskrcnn"):
        elements = collect(dataset)
    warnings = [r.getMessage() for r in caplog.records if r.name == "keras_maskrcnn"]
    assert len(warnings) == 1 and str(image_id) in warnings[0]
    ann = coco.load_annotations(image_id)
    areas = ann["masks"].reshape(len(ann["masks"]), -1).sum(axis=1)
    keep = sorted(np.argsort(-areas, kind="stable")[:10])
    expected = np.where(ann["is_crowd"], -1, ann["labels"])[keep]
    for e in elements:
        np.testing.assert_array_equal(e["gt_classes"], expected)
        ratio = e["image_shape"][0] / e["original_shape"][0]
        np.testing.assert_allclose(e["gt_boxes"][:, 0], ann["boxes"][keep, 0] * ratio,
                                   atol=1e-3)


# ------------------------------------------------------------------------ inference inputs
def test_make_inference_inputs():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (30, 50, 3), dtype=np.uint8),
              rng.integers(0, 256, (64, 20), dtype=np.uint8)]
    config = get_config("shapes", image_size=(64, 64), min_size=32, max_size=64)
    out = make_inference_inputs(images, config)
    assert out["images"].shape == (2, 64, 64, 3) and out["images"].dtype == np.float32
    assert out["image_shape"].dtype == np.float32 and out["scale"].dtype == np.float32
    assert out["original_shape"].dtype == np.int32 and out["scale"].shape == (2,)
    assert out["original_shape"].tolist() == [[30, 50], [64, 20]]
    for i, image in enumerate(images):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        h, w = compute_resized_shape(*image.shape[:2], 32, 64)
        assert out["image_shape"][i].tolist() == [h, w]
        assert out["scale"][i] == np.float32(compute_resize_scale(*image.shape[:2], 32, 64))
        np.testing.assert_allclose(out["images"][i, :h, :w], ref_resize(image, h, w), atol=1e-3)
    wide = make_inference_inputs(images, config, canvas=(64, 96))
    assert wide["images"].shape == (2, 64, 96, 3)
    np.testing.assert_array_equal(wide["images"][:, :, :64], out["images"])
    with pytest.raises(ValueError, match="images"):
        make_inference_inputs([np.zeros((4, 4, 2), np.uint8)], config)
    with pytest.raises(ValueError, match="canvas_size"):
        make_inference_inputs(images, config, canvas=(60, 64))
    with pytest.raises(TypeError, match="MaskRCNNConfig"):
        make_inference_inputs(images, (64, 64))


def test_make_dataset_argument_errors(coco):
    config = pipeline_config()
    with pytest.raises(TypeError, match="MaskRCNNConfig"):
        make_dataset(coco, {"image_size": CANVAS}, training=True)
    with pytest.raises(TypeError, match="training"):
        make_dataset(coco, config)
    with pytest.raises(TypeError, match="training"):
        make_dataset(coco, config, training="yes")
    with pytest.raises(TypeError, match="load_image"):
        make_dataset(object(), config, training=True)
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(coco, config, training=True, batch_size=0)
    with pytest.raises(ValueError, match="train_min_sizes"):
        make_dataset(coco, pipeline_config(train_min_sizes=(0,)), training=True)
